"""POST /models/{name}/evaluate, GET /models/{name}/evaluations/{id}, and the results under GET /models/{name}.
The worker's half (training.metrics on a real model) runs in tests/e2e."""

import pytest
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError
from sqlalchemy import delete
from svc_support import DEFAULT_MODEL, FakeSender, publish_generator, publish_points_model, tiny_image_g

from core import db as tables
from core.db import connect
from core.evaluations import EvaluationStore
from core.records import JobStatus, now


def store(client: TestClient) -> EvaluationStore:
    return client.app.state.ganserve.evaluations  # type: ignore[attr-defined]


def test_post_queues_an_evaluation_of_the_newest_version(client: TestClient, sender: FakeSender) -> None:
    r = client.post(f"/models/{DEFAULT_MODEL}/evaluate", json={"n": 500})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["model"] == DEFAULT_MODEL and job["version"] == 1
    assert job["request"] == {"version": None, "n": 500, "extractor": "auto"}
    assert job["weights_sha256"] and job["stem"].endswith("model")
    assert sender.sent == [job["id"]]
    assert r.headers["location"] == f"/models/{DEFAULT_MODEL}/evaluations/{job['id']}"
    assert client.get(r.headers["location"]).json() == job


def test_an_empty_body_means_the_defaults(client: TestClient) -> None:
    r = client.post(f"/models/{DEFAULT_MODEL}/evaluate")
    assert r.status_code == 202 and r.json()["request"]["n"] == 10_000


@pytest.mark.parametrize(
    "body", [{"n": 5}, {"n": 10**6}, {"extractor": "vgg"}, {"version": 0}, {"n": 500, "samples": 3}]
)
def test_bad_bodies_are_422(client: TestClient, sender: FakeSender, body: dict) -> None:
    r = client.post(f"/models/{DEFAULT_MODEL}/evaluate", json=body)
    assert r.status_code == 422 and r.json()["error"] == "validation_error", r.text
    assert sender.sent == []


def test_unknown_model_or_version_is_404(client: TestClient, sender: FakeSender) -> None:
    r = client.post("/models/nope/evaluate", json={})
    assert r.status_code == 404 and DEFAULT_MODEL in r.json()["detail"]["available"]
    r = client.post(f"/models/{DEFAULT_MODEL}/evaluate", json={"version": 9})
    assert r.status_code == 404 and "versions [1]" in r.json()["message"]
    assert sender.sent == []


def test_a_toy_model_is_refused(client: TestClient, settings) -> None:
    publish_points_model(settings, "ring")
    r = client.post("/models/ring/evaluate", json={})
    assert r.status_code == 422 and r.json()["error"] == "not_an_image_model"


def test_broker_down_is_503_and_the_record_failed(client: TestClient, sender: FakeSender) -> None:
    sender.error = OperationalError("connection refused")
    r = client.post(f"/models/{DEFAULT_MODEL}/evaluate", json={})
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert store(client).get(r.json()["detail"]["id"]).status == JobStatus.failed


def test_an_evaluation_of_another_model_is_404(client: TestClient) -> None:
    job = client.post(f"/models/{DEFAULT_MODEL}/evaluate", json={}).json()
    assert client.get(f"/models/other/evaluations/{job['id']}").status_code == 404
    assert client.get(f"/models/{DEFAULT_MODEL}/evaluations/nope").status_code == 404
    r = client.get(f"/models/{DEFAULT_MODEL}/evaluations/{job['id']}/nearest-neighbours.png")
    assert r.status_code == 404 and r.json()["error"] == "not_ready"


def finish(client: TestClient, eval_id: str, fid: float) -> None:
    store(client).update(
        eval_id,
        status=JobStatus.succeeded,
        result={"extractor": "mnist-cnn-v1", "fid": fid, "inception_score": float("nan")},
        finished_at=now(),
    )


def test_results_are_shown_under_their_version_newest_first(client: TestClient) -> None:
    first = client.post(f"/models/{DEFAULT_MODEL}/evaluate", json={"n": 200}).json()["id"]
    second = client.post(f"/models/{DEFAULT_MODEL}/evaluate", json={"n": 300}).json()["id"]
    finish(client, first, 40.0)
    finish(client, second, 30.0)
    info = client.get(f"/models/{DEFAULT_MODEL}").json()["version_info"][0]
    shown = [(e["evaluation_id"], e["n"], e["fid"]) for e in info["evaluations"]]
    assert shown == [(second, 300, 30.0), (first, 200, 40.0)]
    assert info["evaluations"][0]["inception_score"] is None  # non-finite stored as null
    assert client.get(f"/models/{DEFAULT_MODEL}/evaluations/{second}").json()["result"]["fid"] == 30.0


def test_results_of_other_weights_are_not_shown(client: TestClient, settings) -> None:
    """A name and version re-used for new weights (a wiped volume, a shadowing model) starts with none."""
    job = client.post(f"/models/{DEFAULT_MODEL}/evaluate", json={}).json()["id"]
    finish(client, job, 12.0)
    with connect(settings.effective_database_url).begin() as conn:  # the version's row gone: its number is free
        conn.execute(delete(tables.model_versions).where(tables.model_versions.c.name == DEFAULT_MODEL))
    publish_generator(settings, DEFAULT_MODEL, tiny_image_g(weights_seed=7), image_shape=[1, 28, 28])
    info = client.get(f"/models/{DEFAULT_MODEL}").json()["version_info"][0]
    assert info["version"] == 1 and info["evaluations"] == []
