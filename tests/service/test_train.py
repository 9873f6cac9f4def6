import time

import pytest
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError
from svc_support import AUTH, FakeSender

from core.jobs import JobStore
from core.records import JobStatus, now
from service.main import create_app

BODY = {"model_name": "my-digits", "epochs": 2, "max_samples": 256}


def store(client: TestClient) -> JobStore:
    return client.app.state.ganserve.jobs  # type: ignore[attr-defined]


def test_post_queues_a_job(client: TestClient, sender: FakeSender) -> None:
    r = client.post("/train", json=BODY)
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "queued"
    assert job["config"]["model_name"] == "my-digits" and job["config"]["epochs"] == 2
    assert r.headers["location"] == f"/train/{job['id']}"
    assert sender.sent == [job["id"]]
    assert store(client).get(job["id"]).status == JobStatus.queued
    assert client.get(r.headers["location"]).json() == job


@pytest.mark.parametrize(
    "body",
    [
        {"model_name": "../../etc", "epochs": 1},
        {"model_name": "ok", "epochs": -1},
        {"model_name": "ok", "epochs": 0},
        {"model_name": "Bad Name"},
        {"model_name": "ok", "learning_rate": 0.1},
        {"epochs": 1},
        {"model_name": "ok", "dataset": "cifar"},
    ],
)
def test_invalid_bodies_are_422(client: TestClient, sender: FakeSender, body: dict) -> None:
    r = client.post("/train", json=body)
    assert r.status_code == 422
    assert r.json()["error"] == "validation_error"
    assert sender.sent == []
    assert store(client).list() == []


def test_bad_model_name_says_what_a_name_may_be(client: TestClient, sender: FakeSender) -> None:
    r = client.post("/train", json={"model_name": "../../etc", "dataset": "mnist", "epochs": 1})
    assert r.status_code == 422
    assert "body.model_name: must be 1–64 characters of lower-case letters" in r.json()["message"]
    assert sender.sent == []


def test_non_json_body_is_422(client: TestClient) -> None:
    r = client.post("/train", content=b"not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "validation_error"


@pytest.mark.parametrize(
    "error", [ConnectionError("refused"), OperationalError("Error 111 connecting"), TimeoutError()]
)
def test_broker_down_is_503_and_the_record_failed(client: TestClient, sender: FakeSender, error: Exception) -> None:
    sender.error = error
    r = client.post("/train", json=BODY)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    body = r.json()
    assert body["error"] == "broker_unavailable" and "broker" in body["message"]
    record = store(client).get(body["detail"]["id"])
    assert record.status == JobStatus.failed and record.error and record.finished_at


def test_real_sender_against_a_dead_redis_fails_fast(settings, publish_model) -> None:
    publish_model()
    app = create_app(settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))  # the real TaskQueue
    with TestClient(app, headers=AUTH) as c:
        started = time.monotonic()
        r = c.post("/train", json=BODY)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert time.monotonic() - started < 5


def test_list_is_newest_first(client: TestClient) -> None:
    ids = [client.post("/train", json={**BODY, "model_name": f"m{i}"}).json()["id"] for i in range(3)]
    r = client.get("/train")
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 3
    assert [j["id"] for j in body["jobs"]] == ids[::-1]


def test_get_unknown_or_malformed_job_is_404(client: TestClient) -> None:
    for job_id in ["no-such-job", "0" * 32, "..%2F..%2Fetc", "A" * 10]:
        r = client.get(f"/train/{job_id}")
        assert r.status_code == 404, job_id
        assert r.json()["error"] in {"job_not_found", "not_found"}
    assert client.delete("/train/no-such-job").status_code == 404


def test_cancel_a_queued_job(client: TestClient) -> None:
    job_id = client.post("/train", json=BODY).json()["id"]
    r = client.delete(f"/train/{job_id}")
    assert r.status_code == 202
    assert r.json()["status"] == "cancelled" and r.json()["finished_at"]
    assert store(client).cancel_requested(job_id)


def test_cancel_a_running_job_only_requests_it(client: TestClient) -> None:
    job_id = client.post("/train", json=BODY).json()["id"]
    store(client).update(job_id, status=JobStatus.running, started_at=now())
    r = client.delete(f"/train/{job_id}")
    assert r.status_code == 202 and r.json()["status"] == "running"
    assert store(client).cancel_requested(job_id)


def test_cancel_a_finished_job_is_409(client: TestClient) -> None:
    job_id = client.post("/train", json=BODY).json()["id"]
    store(client).update(job_id, status=JobStatus.succeeded, finished_at=now())
    r = client.delete(f"/train/{job_id}")
    assert r.status_code == 409
    assert r.json()["error"] == "job_finished"
    assert not store(client).cancel_requested(job_id)
