"""What each API key submitted: its training jobs (the `jobs` rows it owns: the queue limit
`GANSERVE_MAX_QUEUED_PER_KEY` counts those still queued or running) and its `Idempotency-Key`s (so a retried
POST /train never makes a second job), stored by the key's name, never the key, and the Idempotency-Key by its
SHA-256.

`lock(key)` is one transaction that holds the key's row of `submission_locks` (FOR UPDATE on PostgreSQL;
SQLite's transactions are serialised already): everything a submission checks and writes happens inside it,
so two submissions of one key, on any API process, never interleave.
"""

import hashlib
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from core import db as db_tables
from core.db import Database, aware
from core.records import FINISHED, JobStatus
from core.train_config import NAME_PATTERN

log = logging.getLogger(__name__)

IDEMPOTENCY_TTL = timedelta(hours=24)
ACTIVE = {s for s in JobStatus if s not in FINISHED}


class IdempotencyRecord(BaseModel):
    job_id: str
    request_sha256: str
    created_at: datetime


def _now() -> datetime:
    return datetime.now(UTC)


def _digest(idempotency_key: str) -> str:
    return hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()


class Submissions:
    def __init__(self, db: Database, clock=_now):
        self.db = db
        self.clock = clock

    @contextmanager
    def lock(self, key_name: str) -> Iterator[Connection]:
        """A transaction in which no other submission of `key_name` runs; the connection to use inside it."""
        if not re.fullmatch(NAME_PATTERN, key_name):  # validated when the key was loaded
            raise ValueError(f"not a key name: {key_name!r}")
        table = db_tables.submission_locks
        dialect = postgresql if self.db.dialect == "postgresql" else sqlite
        with self.db.begin() as conn:
            conn.execute(dialect.insert(table).values(key_name=key_name).on_conflict_do_nothing())
            conn.execute(select(table.c.key_name).where(table.c.key_name == key_name).with_for_update())
            yield conn

    def active_jobs(self, conn: Connection, key_name: str) -> list[str]:
        """The key's jobs still queued or running."""
        jobs = db_tables.jobs
        query = select(jobs.c.id).where(jobs.c.owner == key_name, jobs.c.status.in_([s.value for s in ACTIVE]))
        return sorted(conn.execute(query).scalars())

    def jobs_of(self, key_name: str) -> set[str]:
        """Every job the key submitted."""
        with self.db.begin() as conn:
            return set(conn.execute(select(db_tables.jobs.c.id).where(db_tables.jobs.c.owner == key_name)).scalars())

    def recall(self, conn: Connection, key_name: str, idempotency_key: str) -> IdempotencyRecord | None:
        """The job this key submitted under `idempotency_key` in the last 24 h, if any."""
        table = db_tables.idempotency_keys
        mine = (table.c.key_name == key_name, table.c.key_sha256 == _digest(idempotency_key))
        row = conn.execute(select(table).where(*mine)).one_or_none()
        if row is None:
            return None
        record = IdempotencyRecord(job_id=row.job_id, request_sha256=row.request_sha256, created_at=row.created_at)
        if self.clock() - aware(record.created_at) > IDEMPOTENCY_TTL:
            conn.execute(delete(table).where(*mine))
            return None
        return record

    def remember(self, conn: Connection, key_name: str, idempotency_key: str, job_id: str, request_sha256: str) -> None:
        table = db_tables.idempotency_keys
        now = self.clock()
        conn.execute(delete(table).where(table.c.created_at < now - IDEMPOTENCY_TTL))  # the expired, of every key
        row = {"key_name": key_name, "key_sha256": _digest(idempotency_key), "job_id": job_id}
        conn.execute(insert(table).values(request_sha256=request_sha256, created_at=now, **row))

    def forget(self, key_name: str, idempotency_key: str) -> None:
        table = db_tables.idempotency_keys
        with self.db.begin() as conn:
            conn.execute(
                delete(table).where(table.c.key_name == key_name, table.c.key_sha256 == _digest(idempotency_key))
            )
