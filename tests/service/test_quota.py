"""Bounded resources at POST /train and POST /datasets, through the real app: a job whose networks pass
GANSERVE_MAX_MODEL_PARAMETERS is a 422 `model_too_large` (counted on the dataset it names, uploaded ones too), a
`keep_checkpoints` above GANSERVE_MAX_KEEP_CHECKPOINTS a 422, and a key at its storage quota
(GANSERVE_STORAGE_QUOTA_BYTES) gets no new job (429) and no upload that would pass it (413), each answer saying
what it uses and how to free it; another key is not held back by it, and 0 means no quota."""

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from svc_support import AUTH, DEFAULT_MODEL, TRAIN_KEY, FakeSender, bearer, client_on
from test_dataset_routes import DIGITS, png, upload, zipped

from core.datasets import DatasetStore
from core.jobs import JobStore
from core.train_config import TrainConfig
from training.model_size import count_parameters

RING = {"model_name": "m", "dataset": "ring-2d", "g_hidden": [8], "d_hidden": [8]}


@pytest.fixture(autouse=True)
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def app_with(make_app: Callable[..., FastAPI], publish_model) -> Iterator[Callable[..., TestClient]]:
    """`app_with(**settings)`: the app started with those settings; its client holds the `train` key."""
    publish_model(DEFAULT_MODEL)
    started: list[TestClient] = []

    def start(**overrides: object) -> TestClient:
        client = TestClient(make_app(**overrides), headers=bearer(TRAIN_KEY))
        client.__enter__()
        started.append(client)
        return client

    yield start
    for client in started:
        client.__exit__(None, None, None)


def jobs_of(client: TestClient) -> JobStore:
    return client.app.state.ganserve.jobs  # type: ignore[attr-defined]


# --- the networks' size --------------------------------------------------------------------------------------


def test_a_job_over_the_parameter_cap_is_422_naming_it(app_with: Callable[..., TestClient], sender: FakeSender) -> None:
    small = count_parameters(TrainConfig.model_validate(RING))
    c = app_with(max_model_parameters=small)
    assert c.post("/train", json=RING).status_code == 202  # exactly at the cap: allowed
    r = c.post("/train", json={**RING, "g_hidden": [9]})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "model_too_large"
    wider = count_parameters(TrainConfig.model_validate({**RING, "g_hidden": [9]}))
    assert body["detail"] == {"parameters": wider, "limit": small}
    assert "GANSERVE_MAX_MODEL_PARAMETERS" in body["message"] and "narrower layers" in body["message"]
    assert len(sender.sent) == 1  # the refused job was never queued


def test_a_huge_mlp_is_refused_at_once(app_with: Callable[..., TestClient]) -> None:
    c = app_with()  # the default cap, 100 M
    r = c.post("/train", json={"model_name": "m", "g_hidden": [16384] * 16, "d_hidden": [16384] * 16})
    assert r.status_code == 422 and r.json()["error"] == "model_too_large"
    assert r.json()["detail"]["parameters"] > 8_000_000_000


def test_an_uploaded_dataset_is_counted_by_its_own_shape(app_with: Callable[..., TestClient]) -> None:
    """The 8×8 upload makes far smaller networks than MNIST's 28×28 with the same layers."""
    on_upload = count_parameters(TrainConfig(model_name="m", dataset="digits"), (1, 8, 8))
    c = app_with(max_model_parameters=on_upload)
    assert upload(c, name="digits").status_code == 201
    assert c.post("/train", json={"model_name": "m", "dataset": "digits"}).status_code == 202
    r = c.post("/train", json={"model_name": "m", "dataset": "mnist"})
    assert r.status_code == 422 and r.json()["error"] == "model_too_large"


def test_keep_checkpoints_above_the_server_cap_is_422(app_with: Callable[..., TestClient]) -> None:
    c = app_with(max_keep_checkpoints=5)
    assert c.post("/train", json={**RING, "keep_checkpoints": 5}).status_code == 202
    r = c.post("/train", json={**RING, "keep_checkpoints": 6})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "keep_checkpoints"]
    assert "GANSERVE_MAX_KEEP_CHECKPOINTS" in r.json()["detail"][0]["msg"]
    r = c.post("/train", json={**RING, "keep_checkpoints": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "keep_checkpoints"]


# --- the storage quota -----------------------------------------------------------------------------------------


def test_an_upload_that_would_pass_the_quota_is_413_and_leaves_nothing(
    app_with: Callable[..., TestClient], scratch: Path
) -> None:
    c = app_with(storage_quota_bytes=10)  # smaller than any dataset
    r = c.post("/datasets", files={"file": ("data.zip", DIGITS, "application/zip")})
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["error"] == "storage_quota_exceeded"
    assert body["detail"]["used"] == 0 and body["detail"]["quota"] == 10 and body["detail"]["adding"] > 10
    assert "DELETE /datasets" in body["message"] and "GANSERVE_STORAGE_QUOTA_BYTES" in body["message"]
    assert DatasetStore(c.app.state.ganserve.db).all() == []  # type: ignore[attr-defined]
    assert list(scratch.iterdir()) == []


def test_a_key_at_its_quota_gets_no_new_job_nor_upload_until_it_frees_some(
    app_with: Callable[..., TestClient], sender: FakeSender
) -> None:
    c = app_with(storage_quota_bytes=10**6)
    first = upload(c, name="first")
    assert first.status_code == 201, first.text
    size = DatasetStore(c.app.state.ganserve.db).get(first.json()["id"]).size_bytes  # type: ignore[attr-defined,union-attr]
    job = c.post("/train", json=RING).json()
    assert c.post("/train", json=RING).status_code == 202  # under the quota
    # The worker counts the job's run files as it writes them: here, enough to reach the quota.
    jobs_of(c).set_storage_bytes(job["id"], 10**6 - size)
    r = c.post("/train", json=RING)
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["error"] == "storage_quota_exceeded"
    assert body["detail"]["used"] == 10**6 and body["detail"]["quota"] == 10**6
    assert body["detail"]["by_kind"] == {"datasets": size, "jobs": 10**6 - size, "models": 0}
    assert "DELETE /datasets/{id}" in body["message"]
    other = zipped({f"{i}.png": png(7 * i) for i in range(3)})
    r = upload(c, other, name="second")
    assert r.status_code == 413 and r.json()["error"] == "storage_quota_exceeded"
    # Another key's usage is its own.
    admin = client_on(c, headers=AUTH)
    assert admin.post("/train", json=RING).status_code == 202
    # Deleting the dataset frees its bytes: a job is accepted again.
    assert c.delete("/datasets/first").status_code == 204
    assert c.post("/train", json=RING).status_code == 202


def test_no_quota_when_it_is_zero(app_with: Callable[..., TestClient]) -> None:
    c = app_with(storage_quota_bytes=0)
    assert upload(c, name="a").status_code == 201
    job = c.post("/train", json=RING).json()
    jobs_of(c).set_storage_bytes(job["id"], 10**15)
    assert c.post("/train", json=RING).status_code == 202


def test_a_retry_of_a_job_already_taken_gets_it_back_over_the_quota(app_with: Callable[..., TestClient]) -> None:
    """The quota refuses new work, not the replay of work already accepted: a client that lost the answer and
    retries with its Idempotency-Key gets its job, even once that job's files have filled the quota."""
    c = app_with(storage_quota_bytes=10**6)
    first = c.post("/train", json=RING, headers={"Idempotency-Key": "once"})
    assert first.status_code == 202, first.text
    jobs_of(c).set_storage_bytes(first.json()["id"], 10**6)
    again = c.post("/train", json=RING, headers={"Idempotency-Key": "once"})
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    new = c.post("/train", json=RING, headers={"Idempotency-Key": "twice"})
    assert new.status_code == 429 and new.json()["error"] == "storage_quota_exceeded"
