"""Uploaded datasets' rows and files (core/datasets.py), on SQLite and on PostgreSQL: a dataset is its owner's,
found by id or by name; names are unique per owner; one in use by a queued or running job is not deleted; two
datasets of one content share one file, which goes with the last of them; a failed registration leaves nothing."""

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection

from core.datasets import (
    AmbiguousName,
    DatasetInUse,
    DatasetStore,
    NameTaken,
    blob_key,
    delete_dataset,
    name_problem,
    preview_key,
    register,
)
from core.db import Database
from core.jobs import JobStore
from core.records import JobStatus
from core.storage import Storage, open_storage
from core.train_config import TrainConfig


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return open_storage((tmp_path / "blobs").as_uri())


def files(tmp_path: Path, content: bytes) -> tuple[Path, Path, str]:
    """A stand-in canonical file and preview of `content`, and the file's SHA-256."""
    folder = tmp_path / hashlib.sha256(content).hexdigest()[:8]
    folder.mkdir(exist_ok=True)
    (folder / "dataset.safetensors").write_bytes(content)
    (folder / "preview.png").write_bytes(b"png of " + content)
    return folder / "dataset.safetensors", folder / "preview.png", hashlib.sha256(content).hexdigest()


def add(store: DatasetStore, storage: Storage, tmp_path: Path, owner: str, name: str | None, content: bytes = b"x"):
    canonical, preview, sha = files(tmp_path, content)
    fields: dict[str, Any] = {"format": "images", "count": 3, "shape": (1, 8, 8), "classes": ["a", "b"]}
    return register(store, storage, canonical, preview, owner=owner, name=name, sha256=sha, **fields)


def test_a_dataset_is_found_by_id_or_name_by_its_owner_only(any_db: Database, storage: Storage, tmp_path: Path):
    store = DatasetStore(any_db)
    mine = add(store, storage, tmp_path, "alice", "faces")
    assert mine.id.startswith("ds-") and mine.location == blob_key(mine.sha256)
    assert (mine.count, mine.shape, mine.classes, mine.size_bytes) == (3, (1, 8, 8), ("a", "b"), 1)
    assert store.resolve(mine.id, "alice") == mine == store.resolve("faces", "alice")
    for ref in (mine.id, "faces", "Not A Name", "ds-000000000000"):
        with pytest.raises(KeyError):
            store.resolve(ref, "bob")
    assert store.resolve(mine.id, "bob", any_owner=True) == mine  # an admin's key
    assert store.resolve("faces", "bob", any_owner=True) == mine
    info = mine.info()
    assert info.preview == f"/datasets/{mine.id}/preview.png" and info.shape == [1, 8, 8]


def test_names_are_unique_per_owner(any_db: Database, storage: Storage, tmp_path: Path) -> None:
    store = DatasetStore(any_db)
    first = add(store, storage, tmp_path, "alice", "faces", b"one")
    with pytest.raises(NameTaken):
        add(store, storage, tmp_path, "alice", "faces", b"two")
    assert not storage.exists(blob_key(hashlib.sha256(b"two").hexdigest()))  # the refused one left nothing
    assert storage.exists(first.location) and storage.exists(first.preview_key)
    theirs = add(store, storage, tmp_path, "bob", "faces", b"two")
    unnamed = [add(store, storage, tmp_path, "alice", None, c) for c in (b"three", b"four")]
    assert [d.id for d in store.all("alice")] == [unnamed[1].id, unnamed[0].id, first.id]  # newest first
    assert {d.id for d in store.all()} == {first.id, theirs.id, *(d.id for d in unnamed)}
    assert store.name_taken("alice", "faces") and not store.name_taken("carol", "faces")
    with pytest.raises(AmbiguousName) as caught:
        store.resolve("faces", "carol", any_owner=True)
    assert sorted(caught.value.ids) == sorted([first.id, theirs.id])
    assert store.resolve("faces", "bob", any_owner=True) == theirs  # the admin's own first


@pytest.mark.parametrize(
    ("name", "problem"),
    [("mnist", "built-in"), ("ds-0123456789ab", "form of a dataset id"), ("Faces", "lower-case"), ("ok", None)],
)
def test_names_that_cannot_name_a_dataset(name: str, problem: str | None) -> None:
    found = name_problem(name)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_a_dataset_in_use_is_not_deleted(any_db: Database, storage: Storage, tmp_path: Path) -> None:
    store, jobs = DatasetStore(any_db), JobStore(any_db)
    data = add(store, storage, tmp_path, "alice", "faces")
    queued = jobs.create(
        owner="alice", config=TrainConfig(model_name="m", dataset=data.id), uploaded_dataset=data.pin()
    )
    running = jobs.create(
        owner="alice", config=TrainConfig(model_name="n", dataset="faces"), uploaded_dataset=data.pin()
    )
    jobs.create(owner="alice", config=TrainConfig(model_name="o"))  # a built-in dataset: not counted
    jobs.update(running.id, status=JobStatus.running)
    assert store.jobs_using(data.id) == sorted([queued.id, running.id])
    with pytest.raises(DatasetInUse) as caught:
        delete_dataset(store, storage, data.id)
    assert caught.value.jobs == sorted([queued.id, running.id])
    assert store.get(data.id) == data and storage.exists(data.location)
    jobs.update(queued.id, status=JobStatus.cancelled)
    jobs.update(running.id, status=JobStatus.succeeded)
    assert delete_dataset(store, storage, data.id) == data
    assert store.get(data.id) is None and not storage.exists(data.location) and not storage.exists(data.preview_key)
    assert delete_dataset(store, storage, data.id) is None  # gone already
    assert jobs.get(running.id).uploaded_dataset == data.pin()  # the finished job still says what it trained on


def test_one_content_is_one_file_deleted_with_its_last_dataset(any_db: Database, storage: Storage, tmp_path: Path):
    store = DatasetStore(any_db)
    one = add(store, storage, tmp_path, "alice", "a", b"same")
    two = add(store, storage, tmp_path, "bob", None, b"same")
    assert one.sha256 == two.sha256 and one.location == two.location and one.id != two.id
    delete_dataset(store, storage, one.id)
    assert storage.get_bytes(two.location, two.sha256) == b"same" and storage.exists(preview_key(two.sha256))
    delete_dataset(store, storage, two.id)
    assert storage.keys("datasets") == []


def test_a_failed_registration_keeps_the_files_another_dataset_names(
    any_db: Database, storage: Storage, tmp_path: Path
) -> None:
    store = DatasetStore(any_db)
    kept = add(store, storage, tmp_path, "alice", "a", b"same")
    with pytest.raises(NameTaken):
        add(store, storage, tmp_path, "alice", "a", b"same")
    assert storage.get_bytes(kept.location, kept.sha256) == b"same"
    assert [d.id for d in store.all()] == [kept.id]


def test_a_registration_restores_a_file_deleted_under_it(any_db: Database, storage: Storage, tmp_path: Path) -> None:
    """The last other dataset of the same content is deleted, files and all, after the new one found its files in
    storage and before its row: under the blob's lock the new one writes them again."""
    store = DatasetStore(any_db)
    old = add(store, storage, tmp_path, "alice", "old", b"same")
    canonical, preview, sha = files(tmp_path, b"same")
    real_lock = store.blob_lock

    @contextmanager
    def lock_after_a_delete(sha256: str) -> Iterator[Connection]:
        store.blob_lock = real_lock  # type: ignore[method-assign]
        delete_dataset(store, storage, old.id)
        assert not storage.exists(old.location)  # no dataset named the file at that moment
        with real_lock(sha256) as conn:
            yield conn

    store.blob_lock = lock_after_a_delete  # type: ignore[method-assign]
    fields: dict[str, Any] = {"format": "images", "count": 1, "shape": (1, 1, 1), "classes": None}
    new = register(store, storage, canonical, preview, owner="alice", name="new", sha256=sha, **fields)
    assert store.get(old.id) is None and store.get(new.id) == new
    assert storage.get_bytes(new.location, sha) == b"same" and storage.exists(new.preview_key)
