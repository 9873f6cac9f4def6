"""Blobs behind one interface (core/storage.py), on a local folder and on a real S3 server: what is written reads
back, a blob read with its SHA-256 is refused when it is not that blob, keys cannot leave the root, and the
cache keeps what was fetched, within its size."""

import hashlib
from pathlib import Path

import pytest

from core.storage import BlobCache, BlobError, Storage, open_storage


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "file":
        return open_storage((tmp_path / "blobs").as_uri())
    return open_storage(request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_server"))


def test_written_blobs_read_back_and_list(storage: Storage, tmp_path: Path) -> None:
    storage.put_bytes("jobs/a/one.bin", b"one")
    source = tmp_path / "two.bin"
    source.write_bytes(b"two" * 1000)
    storage.put_file("jobs/a/sub/two.bin", source)
    assert storage.get_bytes("jobs/a/one.bin") == b"one"
    assert storage.keys("jobs/a") == ["jobs/a/one.bin", "jobs/a/sub/two.bin"]
    assert storage.keys("jobs/nothing") == []
    target = tmp_path / "out" / "two.bin"
    storage.get_file("jobs/a/sub/two.bin", target, hashlib.sha256(b"two" * 1000).hexdigest())
    assert target.read_bytes() == b"two" * 1000
    assert storage.exists("jobs/a/one.bin") and not storage.exists("jobs/a/three.bin")
    storage.delete("jobs/a/one.bin")
    storage.delete("jobs/a/one.bin")  # twice: no error
    assert storage.keys("jobs/a") == ["jobs/a/sub/two.bin"]


def test_a_blob_that_is_not_its_sha256_is_refused(storage: Storage, tmp_path: Path) -> None:
    storage.put_bytes("m/model.safetensors", b"weights")
    wrong = hashlib.sha256(b"other weights").hexdigest()
    with pytest.raises(BlobError, match="is not the blob of SHA-256"):
        storage.get_bytes("m/model.safetensors", wrong)
    with pytest.raises(BlobError, match="is not the blob"):
        storage.get_file("m/model.safetensors", tmp_path / "got", wrong)
    assert not (tmp_path / "got").exists()  # nothing half-fetched left behind
    with pytest.raises(BlobError, match="does not exist"):
        storage.get_bytes("m/missing")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a/."])
def test_keys_cannot_leave_the_root(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError, match="not a blob key"):
        storage.put_bytes(key, b"x")


def test_the_cache_fetches_once_and_keeps_within_its_size(s3_bucket: str, s3_server: str, tmp_path: Path) -> None:
    storage = open_storage(s3_bucket, s3_server)
    blobs = {f"b{i}": bytes([i]) * 1000 for i in range(3)}
    for key, data in blobs.items():
        storage.put_bytes(key, data)
    cache = BlobCache(tmp_path / "cache", max_bytes=2500)
    sha = {key: hashlib.sha256(data).hexdigest() for key, data in blobs.items()}
    first = cache.fetch(storage, "b0", sha["b0"])
    assert first.read_bytes() == blobs["b0"]
    storage.delete("b0")
    assert cache.fetch(storage, "b0", sha["b0"]) == first  # from the cache: the store is not asked again
    cache.fetch(storage, "b1", sha["b1"])
    cache.fetch(storage, "b2", sha["b2"])  # 3,000 bytes would not fit: the least recently used goes
    assert not first.exists()
    assert sorted(p.name for p in (tmp_path / "cache").glob("??/*")) == sorted([sha["b1"], sha["b2"]])
    with pytest.raises(BlobError):  # a key whose bytes are not that SHA-256 is never cached as it
        cache.fetch(storage, "b1", hashlib.sha256(b"something else").hexdigest())
    assert len(list((tmp_path / "cache").glob("??/*"))) == 2


def test_local_storage_is_read_where_it_lies(tmp_path: Path) -> None:
    storage = open_storage((tmp_path / "volume").as_uri())
    storage.put_bytes("models/m/1/model.json", b"{}")
    cache = BlobCache(tmp_path / "cache", max_bytes=0)
    path = cache.fetch(storage, "models/m/1/model.json", hashlib.sha256(b"{}").hexdigest())
    assert path == tmp_path / "volume" / "models" / "m" / "1" / "model.json"
    assert not (tmp_path / "cache").exists()


def test_an_unreachable_s3_server_is_a_blob_error_naming_the_blob(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    storage = open_storage("s3://nowhere/blobs", "http://127.0.0.1:1")
    with pytest.raises(BlobError, match="s3://nowhere/blobs/k"):
        storage.get_bytes("k")
    with pytest.raises(BlobError, match="cannot list s3://nowhere/blobs/jobs"):
        storage.keys("jobs")  # not an empty listing: a resume would start over from step 0


def test_a_prefix_with_nothing_under_it_lists_nothing(storage: Storage) -> None:
    assert storage.keys("no/such/folder") == []


def test_an_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="GANSERVE_STORAGE_URL"):
        Storage("ftp://host/x")
