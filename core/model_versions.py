"""Published model versions (`model_versions`, core/db.py): a row per version, naming where its files are in
object storage (core/storage.py). Publishing writes the files first, then commits the row: a version whose row is
not committed does not exist, and a number is given once (the primary key), whoever else publishes the name.
`local_stem` gives a version's files on this machine (fetched into the cache from remote storage) for loading.
Every published name is claimed (core/model_names.py): a version's row and, when nobody holds the name yet, its
claim for the publisher commit together. Who may publish under a name is its caller's check (`ModelNames.claim`
before the files are written: the worker's worker/publishing.py, POST /train at submission).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from core import db as tables
from core.db import Database, aware
from core.files import atomic_write_json
from core.model_names import ModelNames, Visibility
from core.records import now
from core.storage import BlobCache, BlobError, Storage

MODEL_STEM = "model"  # a version's files: model.safetensors, model.json (and samples.png)


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    owner: str | None
    weights_sha256: str
    metadata: dict[str, Any]  # the published model.json
    location: str  # the storage key of its folder
    has_samples: bool
    created_at: datetime
    storage_bytes: int = 0  # bytes of its folder's files in storage (a key's usage, core/quota.py)

    @property
    def samples_key(self) -> str | None:
        return f"{self.location}/samples.png" if self.has_samples else None


class ModelVersions:
    """`reserved`: the bundled models' names, never published over (NameReserved); `visibility`: that of a name
    claimed by its first publish (GANSERVE_MODEL_VISIBILITY)."""

    def __init__(self, db: Database, reserved: Iterable[str] = (), visibility: Visibility = "public"):
        self.db = db
        self.claims = ModelNames(db, reserved)
        self.visibility: Visibility = visibility

    def add(
        self,
        name: str,
        *,
        weights_sha256: str,
        metadata: dict[str, Any],
        location: str,
        has_samples: bool,
        owner: str | None = None,
        storage_bytes: int = 0,
    ) -> int:
        """Commit the next version of `name` (its files already written at `location`, `storage_bytes` of them);
        returns its number."""
        table = tables.model_versions
        row = {"owner": owner, "weights_sha256": weights_sha256, "metadata": metadata, "location": location}
        while True:
            try:
                with self.db.begin() as conn:
                    top = conn.execute(select(func.max(table.c.version)).where(table.c.name == name)).scalar()
                    version = (top or 0) + 1
                    values = {**row, "has_samples": has_samples, "created_at": now(), "storage_bytes": storage_bytes}
                    conn.execute(insert(table).values(name=name, version=version, **values))
                return version
            except IntegrityError:  # another publisher took that number (or the name's claim) a moment ago: again
                continue

    def versions(self, name: str) -> list[int]:
        table = tables.model_versions
        with self.db.begin() as conn:
            return sorted(conn.execute(select(table.c.version).where(table.c.name == name)).scalars())

    def names(self) -> list[str]:
        with self.db.begin() as conn:
            return sorted(conn.execute(select(tables.model_versions.c.name).distinct()).scalars())

    def get(self, name: str, version: int) -> ModelVersion | None:
        table = tables.model_versions
        with self.db.begin() as conn:
            row = conn.execute(select(table).where(table.c.name == name, table.c.version == version)).one_or_none()
        return None if row is None else _version(row._mapping)

    def all(self, name: str | None = None) -> list[ModelVersion]:
        """Every version (of `name`), by name and number."""
        table = tables.model_versions
        query = select(table).order_by(table.c.name, table.c.version)
        if name is not None:
            query = query.where(table.c.name == name)
        with self.db.begin() as conn:
            return [_version(row._mapping) for row in conn.execute(query)]


def _version(row: Any) -> ModelVersion:
    return ModelVersion(**{**row, "created_at": aware(row["created_at"])})


def local_stem(version: ModelVersion, storage: Storage, cache: BlobCache) -> Path:
    """The version's `model` stem on this machine: where it lies for local storage; else its weights fetched into
    the cache (checked against their SHA-256) beside a model.json written from the row. Raises BlobError."""
    key = f"{version.location}/{MODEL_STEM}"
    local = storage.local_path(key)
    if local is not None:
        if not local.with_suffix(".safetensors").is_file():
            raise BlobError(f"{storage.describe(key + '.safetensors')} does not exist")
        return local
    # Named <sha256>.safetensors in the cache, so the cache's own size limit and eviction govern model files too.
    weights = cache.fetch(storage, f"{key}.safetensors", version.weights_sha256, suffix=".safetensors")
    meta = weights.with_suffix(".json")
    if not meta.is_file():
        atomic_write_json(meta, version.metadata)
    return weights.with_suffix("")
