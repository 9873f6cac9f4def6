"""POST /train with Roth et al.'s regulariser: accepted as configured with a binary GAN loss, a JSON 422 that
names the fix with a critic's loss."""

from fastapi.testclient import TestClient
from svc_support import FakeSender

ROTH = {"name": "roth", "gamma": 2.0, "anneal": True}


def test_roth_is_queued_with_a_binary_gan_loss(client: TestClient, sender: FakeSender) -> None:
    body = {"model_name": "ring-roth", "dataset": "ring-2d", "steps": 10, "regularizers": [ROTH]}
    r = client.post("/train", json=body)
    assert r.status_code == 202, r.text
    assert r.json()["config"]["regularizers"] == [ROTH]
    assert sender.sent == [r.json()["id"]]


def test_roth_with_a_critic_loss_is_422_saying_which_losses(client: TestClient, sender: FakeSender) -> None:
    body = {"model_name": "ring-roth", "dataset": "ring-2d", "loss": "hinge", "regularizers": [ROTH]}
    r = client.post("/train", json=body)
    assert r.status_code == 422
    out = r.json()
    assert out["error"] == "validation_error"
    assert "regularizer `roth`" in out["message"] and "minimax or non-saturating" in out["message"]
    assert sender.sent == []


def test_roth_with_a_bad_gamma_is_422(client: TestClient, sender: FakeSender) -> None:
    body = {"model_name": "ring-roth", "dataset": "ring-2d", "regularizers": [{"name": "roth", "gamma": 0}]}
    r = client.post("/train", json=body)
    assert r.status_code == 422 and r.json()["error"] == "validation_error"
    assert "gamma" in r.json()["message"]
    assert sender.sent == []
