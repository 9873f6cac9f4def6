"""What each API key's blobs take in object storage, and the quota that bounds it (GANSERVE_STORAGE_QUOTA_BYTES).

A key's usage is the sum of the sizes recorded where its blobs were written: its uploaded datasets
(`datasets.size_bytes`), its jobs' run files (`jobs.storage_bytes`: checkpoints and sample grids, kept by the
worker as it uploads and prunes them, worker/run_files.py) and its published model versions
(`model_versions.storage_bytes`). One SQL sum, never a listing of storage. A blob two keys share (the same
dataset uploaded by both) counts for each. The API refuses new work at or over the quota (POST /train: 429, POST
/datasets: 413); a job already running is not stopped: checkpoint retention bounds what it adds.
"""

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from core import db as tables
from core.db import Database
from core.storage import Storage

FREEING = (
    "delete datasets it no longer needs (GET /datasets lists them, DELETE /datasets/{id} removes one), or ask the "
    "operator to raise GANSERVE_STORAGE_QUOTA_BYTES"
)


@dataclass(frozen=True)
class Usage:
    """Bytes of storage one key uses, by kind."""

    datasets: int
    jobs: int
    models: int

    @property
    def total(self) -> int:
        return self.datasets + self.jobs + self.models

    def detail(self, quota: int) -> dict[str, Any]:
        """What an error's detail says: used, quota, and by what."""
        return {"used": self.total, "quota": quota, "by_kind": asdict(self), "to_free": FREEING}


def usage(db: Database, owner: str, conn: Connection | None = None) -> Usage:
    """The bytes key `owner` uses in storage (core/db.py's recorded sizes)."""

    def total(column: Any, owner_column: Any, c: Connection) -> int:
        return int(c.execute(select(func.coalesce(func.sum(column), 0)).where(owner_column == owner)).scalar_one())

    def read(c: Connection) -> Usage:
        d, j, m = tables.datasets, tables.jobs, tables.model_versions
        return Usage(
            datasets=total(d.c.size_bytes, d.c.owner, c),
            jobs=total(j.c.storage_bytes, j.c.owner, c),
            models=total(m.c.storage_bytes, m.c.owner, c),
        )

    if conn is not None:
        return read(conn)
    with db.begin() as c:
        return read(c)


def over_quota(
    db: Database, owner: str | None, quota: int, adding: int = 0, conn: Connection | None = None
) -> Usage | None:
    """The key's usage when it is at or over `quota` (or would pass it by adding `adding` bytes), else None. No
    quota (0) or no key (the CLI's own jobs): None. `conn`: read in that transaction (one holding SQLite's write
    lock must not wait for a second connection)."""
    if quota <= 0 or owner is None:
        return None
    used = usage(db, owner, conn)
    if adding > 0:
        return used if used.total + adding > quota else None
    return used if used.total >= quota else None


def stored_bytes(storage: Storage, prefix: str) -> int:
    """Bytes of every blob under `prefix` (a folder) in storage; 0 when nothing is there. Raises BlobError when
    storage cannot be reached."""
    try:
        found = storage._remote("list", prefix, storage.fs.find, storage.path(prefix.rstrip("/")), detail=True)
    except FileNotFoundError:
        return 0
    return sum(int(info.get("size") or 0) for info in found.values() if info.get("type", "file") == "file")
