"""Uploaded datasets as resources: a `datasets` row per dataset (core/db.py), naming its canonical file in object
storage, content-addressed (`datasets/<sha256>.safetensors`, and its preview grid beside it).

A dataset belongs to the API key that uploaded it; its name is unique per owner, its id (`ds-<12 hex>`) unique.
Files are written before the row, so a dataset whose row is not committed does not exist. Two datasets of the same
content share one file: whoever adds or removes a row of that SHA-256 holds the blob's lock (`blob_lock`) while
it checks or deletes the file, so a file is never deleted under a row that names it.

A job pins the uploaded dataset it trains on (`DatasetPin`, in its record, and `jobs.dataset_id`) when it is
submitted: a worker fetches exactly that file, and a dataset that a queued or running job uses is not deleted.
"""

import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import Connection, delete, func, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError

from core import db as tables
from core.db import Database, DatabaseUnavailable, aware
from core.records import FINISHED, JobStatus, now
from core.storage import Storage
from core.train_config import BUILTIN_DATASETS, NAME_PATTERN

log = logging.getLogger(__name__)

ID_PATTERN = r"^ds-[0-9a-f]{12}$"
DatasetFormat = Literal["images", "idx"]
ACTIVE = sorted(s.value for s in JobStatus if s not in FINISHED)


def new_dataset_id() -> str:
    return f"ds-{uuid.uuid4().hex[:12]}"


def blob_key(sha256: str) -> str:
    return f"datasets/{sha256}.safetensors"


def preview_key(sha256: str) -> str:
    return f"datasets/{sha256}.preview.png"


def name_problem(name: str) -> str | None:
    """Why `name` cannot name an uploaded dataset, or None when it can."""
    if not re.fullmatch(NAME_PATTERN, name):
        return "must be 1–64 lower-case letters, digits, '.', '_' and '-', starting with a letter or digit"
    if name in BUILTIN_DATASETS:
        return f"{name!r} is a built-in dataset's name ({', '.join(sorted(BUILTIN_DATASETS))}); choose another"
    if re.fullmatch(ID_PATTERN, name):
        return "has the form of a dataset id (ds-<12 hex digits>); choose another"
    return None


class DatasetInfo(BaseModel):
    """A dataset as the API shows it."""

    id: str = Field(examples=["ds-3f2b9c0d1e4a"])
    name: str | None = Field(description="Unique among the uploading key's datasets; null: known by its id only.")
    format: DatasetFormat = Field(description="What was uploaded: `images` (PNG/JPEG) or `idx` (MNIST's files).")
    count: int = Field(description="Images.")
    shape: list[int] = Field(description="[C, H, W] of every image: C 1 (greyscale) or 3 (RGB).")
    classes: list[str] | None = Field(description="Class names (label i is classes[i]); null: unlabelled.")
    sha256: str = Field(description="SHA-256 of the canonical file (safetensors: uint8 `images`, int64 `labels`).")
    size_bytes: int = Field(description="Size of the canonical file.")
    created_at: datetime
    preview: str = Field(
        description="A grid of 64 of its images spread over the dataset (every class shows), PNG.",
        examples=["/datasets/ds-3f2b9c0d1e4a/preview.png"],
    )


class DatasetPin(BaseModel):
    """What a job needs of the uploaded dataset it trains on, fixed when the job is submitted."""

    id: str
    sha256: str
    location: str = Field(description="The storage key of its canonical file.")
    count: int
    shape: list[int]
    classes: list[str] | None = None


@dataclass(frozen=True)
class DatasetRecord:
    id: str
    owner: str | None
    name: str | None
    sha256: str
    format: DatasetFormat
    count: int
    shape: tuple[int, int, int]
    classes: tuple[str, ...] | None
    size_bytes: int
    location: str
    created_at: datetime

    @property
    def preview_key(self) -> str:
        return preview_key(self.sha256)

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            id=self.id,
            name=self.name,
            format=self.format,
            count=self.count,
            shape=list(self.shape),
            classes=None if self.classes is None else list(self.classes),
            sha256=self.sha256,
            size_bytes=self.size_bytes,
            created_at=self.created_at,
            preview=f"/datasets/{self.id}/preview.png",
        )

    def pin(self) -> DatasetPin:
        classes = None if self.classes is None else list(self.classes)
        shape = list(self.shape)
        return DatasetPin(
            id=self.id, sha256=self.sha256, location=self.location, count=self.count, shape=shape, classes=classes
        )


class NameTaken(Exception):
    """The owner already has a dataset of that name."""


class AmbiguousName(Exception):
    """An admin named a dataset that several keys have: the ids to choose from."""

    def __init__(self, ids: list[str]):
        super().__init__(", ".join(ids))
        self.ids = ids


class DatasetInUse(Exception):
    """Queued or running jobs train on the dataset: their ids."""

    def __init__(self, jobs: list[str]):
        super().__init__(", ".join(jobs))
        self.jobs = jobs


def _record(row: Any) -> DatasetRecord:
    m = row._mapping
    classes = m["classes"]
    return DatasetRecord(
        id=m["id"],
        owner=m["owner"],
        name=m["name"],
        sha256=m["sha256"],
        format=m["format"],
        count=m["count"],
        shape=tuple(m["shape"]),
        classes=None if classes is None else tuple(classes),
        size_bytes=m["size_bytes"],
        location=m["location"],
        created_at=aware(m["created_at"]),
    )


class DatasetStore:
    def __init__(self, db: Database):
        self.db = db

    @contextmanager
    def blob_lock(self, sha256: str) -> Iterator[Connection]:
        """A transaction in which no other one adds or removes a dataset of this SHA-256 (PostgreSQL: an advisory
        lock of the blob; SQLite's transactions are serialised already); the connection to use inside it."""
        with self.db.begin() as conn:
            if self.db.dialect == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(int(sha256[:15], 16))))
            yield conn

    def add(
        self,
        conn: Connection,
        *,
        owner: str | None,
        name: str | None,
        sha256: str,
        format: DatasetFormat,
        count: int,
        shape: tuple[int, int, int],
        classes: list[str] | None,
        size_bytes: int,
        location: str,
    ) -> DatasetRecord:
        """A new dataset's row, in `conn`'s transaction (its files written already). Raises NameTaken."""
        values = {
            "id": new_dataset_id(),
            "owner": owner,
            "name": name,
            "sha256": sha256,
            "format": format,
            "count": count,
            "shape": list(shape),
            "classes": classes,
            "size_bytes": size_bytes,
            "location": location,
            "created_at": now(),
        }
        try:
            with conn.begin_nested():  # a savepoint: the caller's transaction survives a refused insert
                conn.execute(insert(tables.datasets).values(**values))
        except IntegrityError:
            raise NameTaken(name) from None
        return _record(conn.execute(select(tables.datasets).where(tables.datasets.c.id == values["id"])).one())

    def name_taken(self, owner: str | None, name: str) -> bool:
        t = tables.datasets
        with self.db.begin() as conn:
            return conn.execute(select(t.c.id).where(t.c.owner == owner, t.c.name == name)).first() is not None

    def resolve(
        self,
        ref: str,
        owner: str | None,
        *,
        any_owner: bool = False,
        conn: Connection | None = None,
        lock: bool = False,
    ) -> DatasetRecord:
        """The dataset `ref` (an id, or a name among `owner`'s) that `owner` may use; `any_owner` (an admin key):
        every key's, a name being looked up among the owner's own first. `lock`: the row is held until `conn`'s
        transaction ends (FOR UPDATE), so that it is not deleted meanwhile. Raises KeyError, AmbiguousName."""
        if conn is None:
            with self.db.begin() as own:
                return self.resolve(ref, owner, any_owner=any_owner, conn=own, lock=lock)
        t = tables.datasets
        if re.fullmatch(ID_PATTERN, ref):
            query = select(t).where(t.c.id == ref)
            if not any_owner:
                query = query.where(t.c.owner == owner)
        elif re.fullmatch(NAME_PATTERN, ref):
            mine = conn.execute(select(t.c.id).where(t.c.name == ref, t.c.owner == owner)).scalars().all()
            ids = mine
            if not mine and any_owner:
                ids = conn.execute(select(t.c.id).where(t.c.name == ref).order_by(t.c.id)).scalars().all()
            if len(ids) > 1:
                raise AmbiguousName(list(ids))
            if not ids:
                raise KeyError(ref)
            query = select(t).where(t.c.id == ids[0])
        else:
            raise KeyError(ref)
        row = conn.execute(query.with_for_update() if lock else query).one_or_none()
        if row is None:
            raise KeyError(ref)
        return _record(row)

    def get(self, dataset_id: str, conn: Connection | None = None) -> DatasetRecord | None:
        if conn is None:
            with self.db.begin() as own:
                return self.get(dataset_id, own)
        row = conn.execute(select(tables.datasets).where(tables.datasets.c.id == dataset_id)).one_or_none()
        return None if row is None else _record(row)

    def all(self, owner: str | None = None) -> list[DatasetRecord]:
        """The datasets (of `owner`; None: everyone's), newest first."""
        t = tables.datasets
        query = select(t).order_by(t.c.created_at.desc(), t.c.id)
        if owner is not None:
            query = query.where(t.c.owner == owner)
        with self.db.begin() as conn:
            return [_record(r) for r in conn.execute(query)]

    def jobs_using(self, dataset_id: str, conn: Connection | None = None) -> list[str]:
        """The queued or running jobs that train on the dataset."""
        if conn is None:
            with self.db.begin() as own:
                return self.jobs_using(dataset_id, own)
        jobs = tables.jobs
        query = select(jobs.c.id).where(jobs.c.dataset_id == dataset_id, jobs.c.status.in_(ACTIVE))
        return sorted(conn.execute(query).scalars())

    def sharing(self, sha256: str, conn: Connection) -> int:
        """How many datasets name the file of this SHA-256."""
        t = tables.datasets
        return int(conn.execute(select(func.count()).select_from(t).where(t.c.sha256 == sha256)).scalar_one())

    def remove(self, dataset_id: str) -> DatasetRecord | None:
        """Delete the dataset's row (None: it was gone already); raises DatasetInUse while a queued or running job
        trains on it. The row is locked first: a job submitted meanwhile either sees no dataset, or is seen here."""
        t = tables.datasets
        with self.db.begin() as conn:
            row = conn.execute(select(t).where(t.c.id == dataset_id).with_for_update()).one_or_none()
            if row is None:
                return None
            using = self.jobs_using(dataset_id, conn)
            if using:
                raise DatasetInUse(using)
            conn.execute(delete(t).where(t.c.id == dataset_id))
        return _record(row)


# --- the files beside the rows ------------------------------------------------------------------------------


def register(
    store: DatasetStore,
    storage: Storage,
    canonical: Path,
    preview: Path,
    *,
    owner: str | None,
    name: str | None,
    sha256: str,
    format: DatasetFormat,
    count: int,
    shape: tuple[int, int, int],
    classes: list[str] | None,
) -> DatasetRecord:
    """A new dataset: its canonical file (SHA-256 `sha256`) and preview into storage, then its row. On any failure
    nothing of it is left behind (files that another dataset names are kept). Raises NameTaken, BlobError."""
    key, pkey = blob_key(sha256), preview_key(sha256)
    try:
        # A key names its content: a file already there (another dataset's) is this one, and is not sent again.
        if not storage.exists(key):
            storage.put_file(key, canonical)
        if not storage.exists(pkey):
            storage.put_file(pkey, preview)
        with store.blob_lock(sha256) as conn:
            record = store.add(
                conn,
                owner=owner,
                name=name,
                sha256=sha256,
                format=format,
                count=count,
                shape=shape,
                classes=classes,
                size_bytes=canonical.stat().st_size,
                location=key,
            )
            # The last other dataset of this content may have been deleted, and its files with it, since the writes
            # above: under the lock, no removal runs, so what is there now stays.
            if not storage.exists(key):
                storage.put_file(key, canonical)
            if not storage.exists(pkey):
                storage.put_file(pkey, preview)
    except BaseException:
        discard(store, storage, sha256)
        raise
    return record


def discard(store: DatasetStore, storage: Storage, sha256: str) -> None:
    """Delete the files of `sha256` unless a dataset names them. A file that cannot be deleted is logged and left:
    no row names it, so it is only space (and a later upload of the same content uses it)."""
    try:
        with store.blob_lock(sha256) as conn:
            if store.sharing(sha256, conn):
                return
            for key in (blob_key(sha256), preview_key(sha256)):
                try:
                    storage.delete(key)
                except Exception as e:  # the store's own errors (unreachable, refused): the file stays
                    log.warning("dataset file %s not deleted: %s: %s", key, type(e).__name__, e)
    except (OperationalError, DatabaseUnavailable) as e:
        log.warning("dataset files of %s… kept, the database does not answer: %s", sha256[:12], e)


def delete_dataset(store: DatasetStore, storage: Storage, dataset_id: str) -> DatasetRecord | None:
    """Delete a dataset: its row, then its files unless another dataset names them. Raises DatasetInUse."""
    removed = store.remove(dataset_id)
    if removed is not None:
        discard(store, storage, removed.sha256)
    return removed
