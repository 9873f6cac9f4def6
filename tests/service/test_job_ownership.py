"""A key's training jobs and datasets are its own: another `train` key can neither list, read, follow, cancel nor
use them, and is answered exactly as for an id that does not exist (its existence is not told); an `admin` key
sees and cancels every job, those submitted not over HTTP too."""

import io
import json
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from svc_support import ADMIN_KEY, DEFAULT_MODEL, TEST_KEYS, TRAIN_KEY, FakeSender, bearer, client_on

from core.jobs import JobStore
from core.keys import ApiKeyEntry, Scope, hash_key
from core.records import JobStatus
from core.train_config import TrainConfig

OTHER_KEY = "gsk_test-other-train-key"
KEYS = [*TEST_KEYS, ApiKeyEntry(name="test-other", sha256=hash_key(OTHER_KEY), scopes=[Scope.train])]


@pytest.fixture
def started(make_app: Callable[..., FastAPI], publish_model: Callable[..., int]) -> Iterator[TestClient]:
    """The app with two `train` keys (test-train, test-other) besides the admin (test-admin)."""
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(api_keys=KEYS)) as c:
        yield c


@pytest.fixture
def admin(started: TestClient) -> Iterator[TestClient]:
    c = client_on(started, headers=bearer(ADMIN_KEY))
    yield c
    c.close()


@pytest.fixture
def trainer(started: TestClient) -> Iterator[TestClient]:
    c = client_on(started, headers=bearer(TRAIN_KEY))
    yield c
    c.close()


@pytest.fixture
def other(started: TestClient) -> Iterator[TestClient]:
    c = client_on(started, headers=bearer(OTHER_KEY))
    yield c
    c.close()


def jobs_of(client: TestClient) -> JobStore:
    return client.app.state.ganserve.jobs  # type: ignore[attr-defined]


def submit(client: TestClient, name: str) -> str:
    r = client.post("/train", json={"model_name": name, "epochs": 1, "max_samples": 256})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def listed(client: TestClient, **params: str | list[str]) -> list[str]:
    r = client.get("/train", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["jobs"])
    return [j["id"] for j in body["jobs"]]


def client_error(r: Any) -> str:
    assert r.status_code == 422, r.text
    return r.json()["error"]


def without(answer: Any, job_id: str) -> str:
    """An answer with the job's id blotted out, to compare it with the answer for another id."""
    return json.dumps(answer).replace(job_id, "<id>")


# Every route of one job (the plot and samples of a job with no history: the job's own key gets another 404).
JOB_ROUTES = [
    ("GET", "/train/{id}"),
    ("GET", "/train/{id}/events"),
    ("GET", "/train/{id}/metrics"),
    ("GET", "/train/{id}/plots/losses.png"),
    ("GET", "/train/{id}/samples/1.png"),
    ("DELETE", "/train/{id}"),
]
MISSING = "0123456789abcdef0123456789abcdef"


def test_a_key_lists_its_own_jobs_and_an_admin_every_job(
    admin: TestClient, trainer: TestClient, other: TestClient
) -> None:
    admins, trainers, others = submit(admin, "admins-model"), submit(trainer, "trainers-model"), submit(other, "o")
    assert listed(trainer) == [trainers]
    assert listed(other) == [others]
    assert set(listed(admin)) == {admins, trainers, others}
    assert listed(admin, owner="test-train") == [trainers]  # the admin's filter
    assert listed(admin, owner=["test-other", "test-train"]) == [others, trainers]  # newest first
    assert client_error(admin.get("/train", params={"owner": "Not A Key"})) == "validation_error"
    assert listed(trainer, owner="test-train") == [trainers]
    assert listed(trainer, owner="test-other") == []  # a filter never widens a key's view


@pytest.mark.parametrize(("method", "path"), JOB_ROUTES)
def test_another_keys_job_is_the_404_of_a_job_that_does_not_exist(
    trainer: TestClient, other: TestClient, method: str, path: str
) -> None:
    job_id = submit(trainer, "trainers-model")
    theirs = other.request(method, path.format(id=job_id))
    missing = other.request(method, path.format(id=MISSING))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"] == "job_not_found"
    assert without(theirs.json(), job_id) == without(missing.json(), MISSING)
    assert jobs_of(trainer).get(job_id).status == JobStatus.queued  # not cancelled by the other key
    if not path.endswith("/events"):  # (the job's own stream would last as long as the job)
        mine = trainer.request(method, path.format(id=job_id))  # its key is answered (a 404 of another kind)
        assert mine.status_code in (200, 202) or mine.json()["error"] in {"no_history_yet", "samples_not_found"}


def test_the_owner_and_an_admin_read_follow_and_cancel_a_job(
    admin: TestClient, trainer: TestClient, other: TestClient
) -> None:
    job_id = submit(trainer, "trainers-model")
    assert trainer.get(f"/train/{job_id}").json()["id"] == job_id
    assert trainer.get(f"/train/{job_id}/metrics").json()["id"] == job_id
    assert admin.get(f"/train/{job_id}").json()["id"] == job_id
    assert admin.delete(f"/train/{job_id}").json()["status"] == "cancelled"  # an admin cancels any key's job
    with trainer.stream("GET", f"/train/{job_id}/events") as r:  # finished: one event, then the end
        assert r.status_code == 200 and '"status":"cancelled"' in "".join(r.iter_text())
    second = submit(other, "others-model")
    assert other.delete(f"/train/{second}").json()["status"] == "cancelled"


def test_a_job_submitted_not_over_http_is_an_admins_only(admin: TestClient, trainer: TestClient) -> None:
    config = TrainConfig.model_validate({"model_name": "operators-model", "epochs": 1})
    job_id = jobs_of(admin).create(owner=None, config=config).id  # as a job made by a script on the server
    assert job_id in listed(admin) and listed(trainer) == []
    assert trainer.get(f"/train/{job_id}").status_code == 404
    assert trainer.delete(f"/train/{job_id}").status_code == 404
    assert admin.get(f"/train/{job_id}").json()["id"] == job_id
    assert admin.delete(f"/train/{job_id}").status_code == 202


# --- datasets (service/api/routes/datasets.py) ---------------------------------------------------------------


def archive() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for i in range(2):
            image = io.BytesIO()
            Image.new("L", (8, 8), 60 * i).save(image, "PNG")
            z.writestr(f"{i}.png", image.getvalue())
    return out.getvalue()


def test_another_keys_dataset_is_the_404_of_a_dataset_that_does_not_exist(
    trainer: TestClient, other: TestClient, admin: TestClient, sender: FakeSender
) -> None:
    r = trainer.post("/datasets", files={"file": ("d.zip", archive(), "application/zip")}, data={"name": "faces"})
    assert r.status_code == 201, r.text
    data = r.json()
    for ref in (data["id"], "faces"):  # by id and by name
        for method, path in (("GET", "/datasets/{}"), ("GET", "/datasets/{}/preview.png"), ("DELETE", "/datasets/{}")):
            theirs = other.request(method, path.format(ref))
            missing = other.request(method, path.format("nowhere"))
            assert theirs.status_code == missing.status_code == 404, (method, path)
            assert theirs.json()["error"] == "dataset_not_found"
            assert without(theirs.json(), ref) == without(missing.json(), "nowhere")
        job = other.post("/train", json={"model_name": "others-model", "dataset": ref})
        nowhere = other.post("/train", json={"model_name": "others-model", "dataset": "nowhere"})
        assert job.status_code == nowhere.status_code == 422
        assert without(job.json(), ref) == without(nowhere.json(), "nowhere")
    assert other.get("/datasets").json() == {"datasets": []}
    assert sender.sent == []
    assert trainer.get(f"/datasets/{data['id']}").json() == data  # still there, for its key
    assert admin.get(f"/datasets/{data['id']}").json() == data
