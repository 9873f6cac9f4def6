"""`/datasets` through the real app and a real storage (the volume, and moto's S3 server): upload, list, show,
preview and delete; a key's datasets are its own (an admin's: everyone's); a job names one by id or name, and it
is not deleted while the job is queued or running; every bad upload is a 4xx naming the limit or the entry, and
leaves nothing behind — no row, no blob, no scratch file."""

import io
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from svc_support import AUTH, DEFAULT_MODEL, GENERATE_KEY, TRAIN_KEY, FakeSender, bearer, client_on

from core.datasets import DatasetStore, blob_key
from core.storage import Storage


def png(value: int, size: tuple[int, int] = (8, 8), mode: str = "L") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(out, "PNG")
    return out.getvalue()


def zipped(entries: Mapping[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return out.getvalue()


DIGITS = zipped({f"{c}/{i}.png": png(40 * i + (100 if c == "one" else 0)) for c in ("zero", "one") for i in range(3)})


def upload(client: TestClient, archive: bytes = DIGITS, **fields: Any) -> Any:
    form = {k: str(v) for k, v in fields.items()}
    return client.post("/datasets", files={"file": ("data.zip", archive, "application/zip")}, data=form)


def storage_of(client: TestClient) -> Storage:
    return client.app.state.ganserve.storage  # type: ignore[attr-defined]


def store_of(client: TestClient) -> DatasetStore:
    return DatasetStore(client.app.state.ganserve.db)  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary files (the spooled upload, the decoding's scratch folder) in a folder of the test's own."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def nothing_left(client: TestClient, scratch: Path) -> None:
    """No dataset row, no dataset blob, no scratch file."""
    assert store_of(client).all() == []
    assert storage_of(client).keys("datasets") == []
    assert list(scratch.iterdir()) == []


@pytest.fixture
def trainer(running: TestClient) -> Iterator[TestClient]:
    """A key with scope `train` only (`client` holds the admin key)."""
    c = client_on(running, headers=bearer(TRAIN_KEY))
    yield c
    c.close()


# --- the resource --------------------------------------------------------------------------------------------


def test_upload_list_show_preview_and_delete(trainer: TestClient, scratch: Path) -> None:
    r = upload(trainer, name="digits")
    assert r.status_code == 201, r.text
    data = r.json()
    assert r.headers["location"] == f"/datasets/{data['id']}"
    assert data["id"].startswith("ds-") and len(data["id"]) == 15
    assert {k: data[k] for k in ("name", "format", "count", "shape", "classes")} == {
        "name": "digits",
        "format": "images",
        "count": 6,
        "shape": [1, 8, 8],
        "classes": ["one", "zero"],
    }
    assert data["preview"] == f"/datasets/{data['id']}/preview.png" and data["created_at"]
    storage = storage_of(trainer)
    blob = storage.get_bytes(blob_key(data["sha256"]), data["sha256"])  # content-addressed, checked
    assert len(blob) == data["size_bytes"]

    assert trainer.get("/datasets").json() == {"datasets": [data]}
    assert trainer.get(f"/datasets/{data['id']}").json() == data == trainer.get("/datasets/digits").json()
    preview = trainer.get(data["preview"])
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(preview.content)).size[0] >= 8

    assert trainer.delete("/datasets/digits").status_code == 204
    assert trainer.get(f"/datasets/{data['id']}").status_code == 404
    r = trainer.delete(f"/datasets/{data['id']}")
    assert r.status_code == 404 and r.json()["error"] == "dataset_not_found" and "GET /datasets" in r.json()["message"]
    nothing_left(trainer, scratch)


def test_one_upload_on_s3_storage(
    make_app: Callable[..., FastAPI], publish_model, s3_bucket: str, s3_server: str, scratch: Path
) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(storage_url=s3_bucket, s3_endpoint_url=s3_server), headers=AUTH) as c:
        data = upload(c).json()
        assert storage_of(c).exists(blob_key(data["sha256"]))
        assert c.get(data["preview"]).status_code == 200
        assert c.delete(data["preview"].removesuffix("/preview.png")).status_code == 204
        nothing_left(c, scratch)


def test_a_key_sees_its_own_datasets_and_an_admin_every_one(
    client: TestClient, trainer: TestClient, running: TestClient
) -> None:
    mine = upload(trainer, name="digits").json()
    admins = upload(client, zipped({"a.png": png(1)}), name="digits").json()  # a name is unique per key
    assert [d["id"] for d in trainer.get("/datasets").json()["datasets"]] == [mine["id"]]
    assert {d["id"] for d in client.get("/datasets").json()["datasets"]} == {mine["id"], admins["id"]}
    assert trainer.get(f"/datasets/{admins['id']}").status_code == 404  # not 403: its existence is not told
    assert trainer.delete(f"/datasets/{admins['id']}").status_code == 404
    assert trainer.get("/datasets/digits").json()["id"] == mine["id"]
    assert client.get("/datasets/digits").json()["id"] == admins["id"]  # the admin's own first
    assert client.get(f"/datasets/{mine['id']}").json() == mine
    r = trainer.post("/train", json={"model_name": "m", "dataset": admins["id"]})
    assert r.status_code == 422 and "GET /datasets" in r.json()["message"]
    generator = client_on(running, headers=bearer(GENERATE_KEY))
    assert generator.get("/datasets").status_code == 403
    assert client_on(running).get("/datasets").status_code == 401


def test_the_same_content_is_stored_once(trainer: TestClient) -> None:
    one, two = upload(trainer, name="one").json(), upload(trainer, name="two").json()
    assert one["sha256"] == two["sha256"] and one["id"] != two["id"]
    assert trainer.delete("/datasets/one").status_code == 204
    assert trainer.get("/datasets/two/preview.png").status_code == 200
    assert storage_of(trainer).exists(blob_key(two["sha256"]))


# --- names and fields --------------------------------------------------------------------------------------------


def test_a_taken_name_is_409_before_the_archive_is_read(trainer: TestClient, scratch: Path) -> None:
    upload(trainer, name="digits")
    r = upload(trainer, zipped({"a.png": png(3)}), name="digits")
    assert r.status_code == 409 and r.json()["error"] == "dataset_name_taken"
    assert len(store_of(trainer).all()) == 1


def test_a_name_taken_meanwhile_leaves_nothing_behind(
    trainer: TestClient, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two uploads of one name at once: the second's row is refused after its files were written; they go."""
    first = upload(trainer, name="digits").json()
    monkeypatch.setattr(DatasetStore, "name_taken", lambda *_: False)  # as if the first had not committed yet
    r = upload(trainer, zipped({"a.png": png(3)}), name="digits")
    assert r.status_code == 409 and r.json()["error"] == "dataset_name_taken"
    assert storage_of(trainer).keys("datasets") == sorted(
        [blob_key(first["sha256"]), f"datasets/{first['sha256']}.preview.png"]
    )
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"name": "mnist"}, "built-in dataset"),
        ({"name": "ds-0123456789ab"}, "form of a dataset id"),
        ({"name": "My Faces"}, "lower-case letters"),
        ({"image_size": 4}, "greater than or equal to 8"),
        ({"image_size": "big"}, "valid integer"),
    ],
)
def test_bad_fields_are_422(trainer: TestClient, scratch: Path, fields: dict[str, Any], complaint: str) -> None:
    r = upload(trainer, **fields)
    assert r.status_code == 422 and complaint in r.json()["message"], r.text
    nothing_left(trainer, scratch)


def test_a_request_without_the_archive_is_422(trainer: TestClient, scratch: Path) -> None:
    r = trainer.post("/datasets", data={"name": "x"})
    assert r.status_code == 422 and "body.file" in r.json()["message"]
    r = trainer.post("/datasets", json={"file": "x"})
    assert r.status_code == 422
    nothing_left(trainer, scratch)


# --- bad archives ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("archive", "code", "named"),
    [
        (zipped({"../evil.png": png(1)}), "unsafe_path", "../evil.png"),
        (zipped({"a.png": png(1), "b.png": png(2, (6, 6))}), "image_sizes_differ", "6×6 (1, e.g. b.png)"),
        (zipped({"a.gif": b"GIF89a"}), "unsupported_file", "a.gif"),
        (b"not an archive at all", "unsupported_format", "zip"),
        (zipped({"big.png": png(1, (200, 200))}), "image_too_large", "GANSERVE_DATASET_MAX_IMAGE_PIXELS"),
    ],
)
def test_a_bad_archive_is_422_naming_what_is_wrong(
    make_app: Callable[..., FastAPI], publish_model, scratch: Path, archive: bytes, code: str, named: str
) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(dataset_max_image_pixels=10_000), headers=bearer(TRAIN_KEY)) as c:
        r = upload(c, archive)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error"] == code and named in body["message"]
        nothing_left(c, scratch)


def test_image_size_makes_different_sizes_one(trainer: TestClient) -> None:
    r = upload(trainer, zipped({"a.png": png(1, (8, 12)), "b.png": png(2, (10, 10), "RGB")}), image_size=16)
    assert r.status_code == 201 and r.json()["shape"] == [3, 16, 16]


@pytest.mark.parametrize("limit", ["dataset_max_images", "dataset_max_decoded_bytes"])
def test_too_many_images_or_decoded_bytes_is_413(
    make_app: Callable[..., FastAPI], publish_model, scratch: Path, limit: str
) -> None:
    publish_model(DEFAULT_MODEL)
    value = {"dataset_max_images": 5, "dataset_max_decoded_bytes": 5 * 64 + 10}[limit]
    with TestClient(make_app(**{limit: value}), headers=bearer(TRAIN_KEY)) as c:
        r = upload(c)  # 6 images of 64 bytes
        assert r.status_code == 413, r.text
        assert r.json()["detail"] == {"limit": value, "setting": f"GANSERVE_{limit.upper()}"}
        assert f"GANSERVE_{limit.upper()}" in r.json()["message"]
        nothing_left(c, scratch)


def test_an_upload_over_the_byte_limit_is_413_before_it_is_read(
    make_app: Callable[..., FastAPI], publish_model, scratch: Path
) -> None:
    publish_model(DEFAULT_MODEL)
    huge = b"\0" * (300 * 1024)
    with TestClient(make_app(dataset_max_bytes=100 * 1024), headers=bearer(TRAIN_KEY)) as c:
        r = upload(c, huge)  # Content-Length says it all: refused before a byte is read
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
        assert "GANSERVE_DATASET_MAX_BYTES" in r.json()["message"]
        assert r.json()["detail"]["setting"] == "GANSERVE_DATASET_MAX_BYTES"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.zip"\r\n\r\n'
            for _ in range(300):
                yield b"\0" * 1024
            yield b"\r\n--b--\r\n"

        r = c.post("/datasets", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413 and "GANSERVE_DATASET_MAX_BYTES" in r.json()["message"]
        # Within the body's allowance for the form, but the archive itself is over the limit: counted exactly.
        r = upload(c, b"\0" * (100 * 1024 + 1))
        assert r.status_code == 413 and r.json()["error"] == "archive_too_large"
        nothing_left(c, scratch)
        assert c.post("/train", content=b"x" * 4096 * 300).status_code == 413  # other routes keep their limit


# --- jobs on a dataset -------------------------------------------------------------------------------------------


def test_a_job_on_an_uploaded_dataset_pins_it_and_keeps_it(trainer: TestClient, sender: FakeSender) -> None:
    data = upload(trainer, name="digits").json()
    r = trainer.post("/train", json={"model_name": "m", "dataset": "digits", "conditional": True})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["config"]["dataset"] == "digits" and sender.sent == [job["id"]]
    assert job["uploaded_dataset"] == {
        "id": data["id"],
        "sha256": data["sha256"],
        "location": blob_key(data["sha256"]),
        "count": 6,
        "shape": [1, 8, 8],
        "classes": ["one", "zero"],
    }
    r = trainer.delete("/datasets/digits")
    assert r.status_code == 409 and r.json()["error"] == "dataset_in_use"
    assert r.json()["detail"] == {"jobs": [job["id"]]} and job["id"] in r.json()["message"]
    assert trainer.delete(f"/train/{job['id']}").status_code == 202  # cancelled while queued
    assert trainer.delete("/datasets/digits").status_code == 204
    assert trainer.get(f"/train/{job['id']}").json()["uploaded_dataset"]["id"] == data["id"]


@pytest.mark.parametrize(
    ("archive", "job", "complaint"),
    [
        (None, {"dataset": "nowhere"}, "GET /datasets lists"),
        (zipped({"a.png": png(1)}), {"conditional": True}, "`conditional` needs labels"),
        (zipped({"a.png": png(1, (8, 12))}), {"image_size": 8}, "need square ones"),
        (zipped({"a.png": png(1, (8, 12))}), {"architecture": "dcgan"}, "need square ones"),
        (zipped({"a.png": png(1, (20, 20))}), {"architecture": "dcgan"}, "set `image_size`"),
    ],
)
def test_a_job_its_dataset_cannot_feed_is_422(
    trainer: TestClient, sender: FakeSender, archive: bytes | None, job: dict[str, Any], complaint: str
) -> None:
    if archive is not None:
        assert upload(trainer, archive, name="data").status_code == 201
    r = trainer.post("/train", json={"model_name": "m", "dataset": "data", **job})
    assert r.status_code == 422 and complaint in r.json()["message"], r.text
    assert r.json()["detail"][0]["loc"] == ["body", "dataset"]
    assert sender.sent == []


def test_built_in_datasets_need_no_upload(trainer: TestClient, sender: FakeSender) -> None:
    assert trainer.post("/train", json={"model_name": "m", "dataset": "ring-2d"}).json()["uploaded_dataset"] is None
    r = trainer.post("/train", json={"model_name": "m", "dataset": "ring-2d", "conditional": True})
    assert r.status_code == 422 and "needs labels" in r.json()["message"]
