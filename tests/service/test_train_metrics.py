"""GET /train/{id}/metrics, /plots/{losses|fid}.png and /samples/{epoch}.png, from records and files on the
volume as the worker leaves them (the worker itself runs in tests/e2e)."""

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from core.jobs import EpochRecord, JobStore
from core.records import JobStatus
from core.train_config import TrainConfig
from service.api.schemas import JobMetrics
from training.evaluation import EVAL_BUDGET
from training.images import grid, png_bytes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def store(client: TestClient) -> JobStore:
    return client.app.state.ganserve.jobs  # type: ignore[attr-defined]


def evaluation(fid: float | None) -> dict:
    return {"extractor": "mnist-cnn-v1", "fid": fid, "kid_mean": 0.01, "n_fake": 64, "classes_covered": 10}


def job_with_history(client: TestClient, *, epochs: int = 3, evaluate: bool = True, **config: object) -> str:
    """A running job that has finished `epochs` epochs, with a sample grid written for each."""
    s = store(client)
    record = s.create(config=TrainConfig(model_name="watched", epochs=10, **config))
    volume = client.app.state.ganserve.settings.checkpoint_dir  # type: ignore[attr-defined]
    history, samples = [], []
    for epoch in range(1, epochs + 1):
        fid = 100.0 / epoch if evaluate else None
        history.append(
            EpochRecord(
                epoch=epoch,
                step=10 * epoch,
                losses={"d_loss": 1.0 + epoch, "g_loss": float("nan")},
                evaluation=evaluation(fid) if evaluate else None,
            )
        )
        rel = f"jobs/{record.id}/samples/epoch-{epoch:04d}.png"
        path = volume / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(grid(torch_images(epoch))))
        samples.append(rel)
    s.update(record.id, status=JobStatus.running, history=history, samples=samples)
    return record.id


def torch_images(value: int) -> torch.Tensor:
    return torch.full((4, 1, 28, 28), value, dtype=torch.uint8)


def test_metrics_is_the_history_with_the_extractor_named(client: TestClient) -> None:
    job = job_with_history(client)
    r = client.get(f"/train/{job}/metrics")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "running" and body["extractor"] == "mnist-cnn-v1"
    assert body["eval_every"] is None  # the default: the budget schedule
    assert [e["epoch"] for e in body["history"]] == [1, 2, 3]
    assert [e["evaluation"]["fid"] for e in body["history"]] == pytest.approx([100.0, 50.0, 100 / 3])
    # a diverged loss is stored and served as null, never as an unreadable NaN
    assert body["history"][0]["losses"] == {"d_loss": 2.0, "g_loss": None}


@pytest.mark.parametrize("plot", ["losses", "fid"])
def test_plots_are_pngs(client: TestClient, plot: str) -> None:
    job = job_with_history(client)
    r = client.get(f"/train/{job}/plots/{plot}.png")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.content.startswith(PNG_MAGIC)


def test_plot_errors_say_why(client: TestClient) -> None:
    job = job_with_history(client, evaluate=False, eval_every=5)
    r = client.get(f"/train/{job}/plots/fid.png")
    assert r.status_code == 404 and r.json()["error"] == "no_fid" and "epoch 5" in r.json()["message"]
    r = client.get(f"/train/{job}/plots/accuracy.png")
    assert r.status_code == 404 and r.json()["detail"] == {"plots": ["losses", "fid"]}
    fresh = store(client).create(config=TrainConfig(model_name="fresh")).id
    r = client.get(f"/train/{fresh}/plots/losses.png")
    assert r.status_code == 404 and r.json()["error"] == "no_history_yet"
    assert client.get("/train/nope/plots/losses.png").status_code == 404


def test_metrics_name_an_explicit_cadence(client: TestClient) -> None:
    job = job_with_history(client, eval_every=2)
    assert client.get(f"/train/{job}/metrics").json()["eval_every"] == 2


def test_no_fid_yet_on_the_budget_schedule_says_so(client: TestClient) -> None:
    share = f"{EVAL_BUDGET * 100:.0f} %"  # the loop's budget, as the API's texts state it
    job = job_with_history(client, evaluate=False)
    r = client.get(f"/train/{job}/plots/fid.png")
    message = r.json()["message"]
    assert r.status_code == 404 and "budget schedule" in message and share in message and "due at" not in message
    assert share in (JobMetrics.model_fields["eval_every"].description or "")


def test_a_skipped_evaluation_is_explained(client: TestClient) -> None:
    job = job_with_history(client, evaluate=False)
    store(client).update(job, evaluation_skipped="no feature extractor for cifar10: weights not found")
    r = client.get(f"/train/{job}/plots/fid.png")
    assert r.status_code == 404 and "weights not found" in r.json()["message"]
    assert client.get(f"/train/{job}/metrics").json()["evaluation_skipped"].startswith("no feature extractor")


def test_samples_of_an_epoch(client: TestClient) -> None:
    job = job_with_history(client)
    r = client.get(f"/train/{job}/samples/2.png")
    assert r.status_code == 200 and r.content.startswith(PNG_MAGIC)
    assert r.content != client.get(f"/train/{job}/samples/3.png").content  # each epoch its own grid
    r = client.get(f"/train/{job}/samples/7.png")
    assert r.status_code == 404 and r.json()["detail"] == {"epochs": [1, 2, 3]}
    assert client.get(f"/train/{job}/samples/0.png").status_code == 422
    assert client.get(f"/train/{job}/samples/two.png").status_code == 422


def test_samples_never_serve_a_path_outside_the_record(client: TestClient, tmp_path: Path) -> None:
    job = job_with_history(client, epochs=1)
    (tmp_path / "secret.png").write_bytes(b"secret")
    r = client.get(f"/train/{job}/samples/..%2F..%2Fsecret.png")
    assert r.status_code in (404, 422)
