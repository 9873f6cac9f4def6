"""A key's storage usage (core/quota.py), on SQLite and on PostgreSQL: the sum of its datasets' sizes, its jobs'
recorded run bytes and its published versions' bytes, nobody else's; the quota's verdict at, under and over it;
and the bytes under a storage prefix, as the worker counts a run's."""

import hashlib
from pathlib import Path

import pytest

from core.datasets import DatasetStore, register
from core.db import Database
from core.jobs import JobStore
from core.model_versions import ModelVersions
from core.quota import Usage, over_quota, stored_bytes, usage
from core.storage import Storage, open_storage
from core.train_config import TrainConfig


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return open_storage((tmp_path / "blobs").as_uri())


def dataset(db: Database, storage: Storage, tmp_path: Path, owner: str, content: bytes) -> int:
    sha = hashlib.sha256(content).hexdigest()
    canonical, preview = tmp_path / f"{sha}.safetensors", tmp_path / f"{sha}.png"
    canonical.write_bytes(content)
    preview.write_bytes(b"png")
    fields = {"format": "images", "count": 1, "shape": (1, 8, 8), "classes": None}
    register(DatasetStore(db), storage, canonical, preview, owner=owner, name=None, sha256=sha, **fields)  # type: ignore[arg-type]
    return len(content)


def test_a_keys_usage_is_its_own_datasets_jobs_and_models(any_db: Database, storage: Storage, tmp_path: Path) -> None:
    jobs = JobStore(any_db)
    assert usage(any_db, "alice") == Usage(0, 0, 0)
    d = dataset(any_db, storage, tmp_path, "alice", b"a" * 100) + dataset(any_db, storage, tmp_path, "alice", b"b" * 20)
    dataset(any_db, storage, tmp_path, "bob", b"c" * 7)
    config = TrainConfig(model_name="m")
    first, second = jobs.create(owner="alice", config=config), jobs.create(owner="alice", config=config)
    jobs.set_storage_bytes(first.id, 1000)
    jobs.set_storage_bytes(second.id, 500)
    jobs.set_storage_bytes(second.id, 300)  # pruned since: the latest count is what it holds
    jobs.set_storage_bytes(jobs.create(owner="bob", config=config).id, 10**9)
    jobs.create(owner=None, config=config)  # the CLI's: nobody's quota
    assert jobs.storage_bytes(second.id) == 300
    versions = ModelVersions(any_db)
    meta = {"weights": "w"}
    versions.add("m", weights_sha256="0" * 64, metadata=meta, location="models/m/0", has_samples=False, owner="alice")
    versions.add(
        "m",
        weights_sha256="1" * 64,
        metadata=meta,
        location="models/m/1",
        has_samples=True,
        owner="alice",
        storage_bytes=64,
    )
    assert versions.get("m", 2).storage_bytes == 64  # type: ignore[union-attr]
    used = usage(any_db, "alice")
    assert used == Usage(datasets=d, jobs=1300, models=64)
    assert used.total == 120 + 1300 + 64
    assert used.detail(2000) | {"to_free": None} == {
        "used": 1484,
        "quota": 2000,
        "by_kind": {"datasets": 120, "jobs": 1300, "models": 64},
        "to_free": None,
    }
    assert usage(any_db, "bob") == Usage(datasets=7, jobs=10**9, models=0)


def test_the_quota_holds_at_its_limit(any_db: Database, storage: Storage, tmp_path: Path) -> None:
    dataset(any_db, storage, tmp_path, "alice", b"x" * 100)
    assert over_quota(any_db, "alice", 101) is None
    assert over_quota(any_db, "alice", 100) == Usage(100, 0, 0)  # at it: no more
    assert over_quota(any_db, "alice", 150, adding=50) is None  # up to it exactly
    assert over_quota(any_db, "alice", 150, adding=51) is not None
    assert over_quota(any_db, "alice", 0) is None  # 0: no quota
    assert over_quota(any_db, None, 1) is None  # no key: the operator's own work


def test_stored_bytes_sums_a_prefix(storage: Storage) -> None:
    storage.put_bytes("jobs/a/checkpoints/epoch-0001.safetensors", b"w" * 1000)
    storage.put_bytes("jobs/a/checkpoints/epoch-0001.json", b"{}")
    storage.put_bytes("jobs/a/samples/epoch-0001.png", b"p" * 30)
    storage.put_bytes("jobs/ab/checkpoints/epoch-0001.json", b"not a's")
    assert stored_bytes(storage, "jobs/a") == 1032
    storage.delete("jobs/a/checkpoints/epoch-0001.safetensors")
    assert stored_bytes(storage, "jobs/a/") == 32
    assert stored_bytes(storage, "jobs/nothing-here") == 0


def test_stored_bytes_on_s3(s3_bucket: str, s3_server: str) -> None:
    storage = open_storage(s3_bucket, s3_server)
    storage.put_bytes("jobs/a/checkpoints/epoch-0001.json", b"{}")
    storage.put_bytes("jobs/a/samples/epoch-0001.png", b"p" * 30)
    assert stored_bytes(storage, "jobs/a") == 32
    assert stored_bytes(storage, "jobs/b") == 0
