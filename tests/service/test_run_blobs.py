"""A job's sample grids and an evaluation's nearest-neighbour image, served from object storage
(GANSERVE_STORAGE_URL): the volume itself by default, or moto's S3 server. One that is gone is a 404, a damaged one
or storage out of reach a 503, each naming the object: never a 500, never damaged bytes."""

from collections.abc import Callable, Iterator

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from svc_support import AUTH, DEFAULT_MODEL

from core.evaluations import EvaluateRequest
from core.records import JobStatus
from core.train_config import TrainConfig
from service.api.blobs import intact_png
from service.state import AppState
from training.images import grid, png_bytes


@pytest.fixture(params=["volume", "s3"])
def storage_settings(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "volume":
        return {}  # the default: file://<GANSERVE_CHECKPOINT_DIR>
    return {
        "storage_url": request.getfixturevalue("s3_bucket"),
        "s3_endpoint_url": request.getfixturevalue("s3_server"),
    }


@pytest.fixture
def api(make_app: Callable[..., FastAPI], publish_model, storage_settings: dict[str, str]) -> Iterator[TestClient]:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(**storage_settings), headers=AUTH) as c:
        yield c


def state(client: TestClient) -> AppState:
    return client.app.state.ganserve  # type: ignore[attr-defined]


def a_png(value: int) -> bytes:
    return png_bytes(grid(torch.full((4, 1, 28, 28), value, dtype=torch.uint8)))


def job_with_grids(client: TestClient, epochs: int = 2) -> tuple[str, list[bytes]]:
    """A running job whose grids of epochs 1..`epochs` are in storage, as a worker leaves them."""
    s = state(client)
    record = s.jobs.create(config=TrainConfig(model_name="watched", epochs=10))
    keys = [f"jobs/{record.id}/samples/epoch-{epoch:04d}.png" for epoch in range(1, epochs + 1)]
    pngs = [a_png(epoch) for epoch in range(1, epochs + 1)]
    for key, png in zip(keys, pngs, strict=True):
        s.storage.put_bytes(key, png)
    s.jobs.update(record.id, status=JobStatus.running, samples=keys)
    return record.id, pngs


def finished_evaluation(client: TestClient, png: bytes) -> str:
    s = state(client)
    record = s.evaluations.create(
        owner="admin", model=DEFAULT_MODEL, version=1, source="volume", stem="-", request=EvaluateRequest()
    )
    key = f"evaluations/jobs/{record.id}-nearest.png"
    s.storage.put_bytes(key, png)
    s.evaluations.update(record.id, status=JobStatus.succeeded, result={"fid": 1.0}, nearest_neighbours_png=key)
    return record.id


def damaged(png: bytes) -> list[bytes]:
    flipped = bytearray(png)
    flipped[len(png) // 2] ^= 0x01
    return [bytes(flipped), png[: len(png) // 2], png + b"trailing", b"not a png"]


def test_a_whole_png_is_told_from_a_damaged_one() -> None:
    png = a_png(3)
    assert intact_png(png)
    assert not any(intact_png(d) for d in damaged(png))


def test_sample_grids_are_served_from_storage(api: TestClient) -> None:
    job, pngs = job_with_grids(api)
    for epoch, png in enumerate(pngs, start=1):
        r = api.get(f"/train/{job}/samples/{epoch}.png")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == png
    if state(api).storage.local_path("x") is None:  # remote: nothing of it is on the API's volume
        assert not (state(api).settings.jobs_dir / job).exists()


def test_a_grid_gone_from_storage_is_404_naming_it(api: TestClient) -> None:
    job, _ = job_with_grids(api)
    key = f"jobs/{job}/samples/epoch-0002.png"
    state(api).storage.delete(key)
    r = api.get(f"/train/{job}/samples/2.png")
    assert r.status_code == 404 and r.json()["error"] == "samples_missing", r.text
    assert key in r.json()["message"] and r.json()["detail"] == {"key": key}


@pytest.mark.parametrize("damage", range(4), ids=["a-flipped-bit", "cut-short", "trailing-bytes", "not-a-png"])
def test_a_damaged_grid_is_503_never_its_bytes(api: TestClient, damage: int) -> None:
    job, pngs = job_with_grids(api)
    key = f"jobs/{job}/samples/epoch-0001.png"
    state(api).storage.put_bytes(key, damaged(pngs[0])[damage])
    r = api.get(f"/train/{job}/samples/1.png")
    assert r.status_code == 503 and r.json()["error"] == "blob_corrupt" and key in r.json()["message"], r.text
    assert api.get(f"/train/{job}/samples/2.png").content == pngs[1]  # the others are served as ever


def test_storage_out_of_reach_is_503_with_retry_after(
    make_app: Callable[..., FastAPI], publish_model, s3_bucket: str
) -> None:
    publish_model(DEFAULT_MODEL)
    app = make_app(storage_url=s3_bucket, s3_endpoint_url="http://127.0.0.1:9")  # nothing listens there
    with TestClient(app, headers=AUTH) as api:
        jobs = state(api).jobs
        job = jobs.create(config=TrainConfig(model_name="watched", epochs=10)).id
        key = f"jobs/{job}/samples/epoch-0001.png"
        jobs.update(job, status=JobStatus.running, samples=[key])
        r = api.get(f"/train/{job}/samples/1.png")
    assert r.status_code == 503 and r.json()["error"] == "storage_unavailable", r.text
    assert r.headers["retry-after"] == "5" and key in r.json()["message"] and s3_bucket not in r.json()["message"]


def test_readyz_names_object_storage_while_it_is_out_of_reach(
    make_app: Callable[..., FastAPI], s3_bucket: str, s3_server: str
) -> None:
    def storage_check(endpoint: str) -> tuple[int, dict]:
        with TestClient(make_app(storage_url=s3_bucket, s3_endpoint_url=endpoint)) as api:
            r = api.get("/readyz")  # 503 either way here (no default model): only the storage check matters
        body = r.json()
        assert s3_bucket not in r.text and endpoint not in r.text, r.text
        return r.status_code, (body.get("checks") or body["detail"])["storage"]

    status, check = storage_check(s3_server)
    assert check == {"ok": True, "detail": "s3"}
    status, check = storage_check("http://127.0.0.1:9")  # nothing listens there
    assert status == 503 and check == {"ok": False, "detail": "object storage does not answer (GANSERVE_STORAGE_URL)"}


def test_the_nearest_neighbour_image_is_served_from_storage(api: TestClient) -> None:
    png = a_png(9)
    eval_id = finished_evaluation(api, png)
    url = f"/models/{DEFAULT_MODEL}/evaluations/{eval_id}/nearest-neighbours.png"
    r = api.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == png

    key = f"evaluations/jobs/{eval_id}-nearest.png"
    state(api).storage.put_bytes(key, png[:-1])
    r = api.get(url)
    assert r.status_code == 503 and r.json()["error"] == "blob_corrupt" and key in r.json()["message"]

    state(api).storage.delete(key)
    r = api.get(url)
    assert r.status_code == 404 and r.json()["error"] == "png_missing" and key in r.json()["message"]


def test_a_published_version_gone_from_storage_is_named_by_key_not_by_bucket(
    make_app: Callable[..., FastAPI], publish_model, s3_bucket: str, s3_server: str
) -> None:
    publish_model(DEFAULT_MODEL)  # its row in the database, its files on the volume: none in the bucket
    with TestClient(make_app(storage_url=s3_bucket, s3_endpoint_url=s3_server), headers=AUTH) as api:
        r = api.get("/generate", params={"seed": 1})
    assert r.status_code == 404 and "cannot be served" in r.text, r.text
    assert "storage: models/" in r.text and s3_bucket not in r.text, r.text
