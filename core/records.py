"""Records of truth, one generic store for every kind of job (training jobs, core/jobs.py; evaluations,
core/evaluations.py), in the database (core/db.py).

A record is its pydantic model, stored as JSON in its table's `record` column beside the columns that queries
need (status, owner, creation time); it is validated on every read and write. `update` reads and writes in one
transaction with the row locked, so two processes updating one record (a worker's progress, the API's webhook
log) never lose each other's changes. A record the running version cannot read is unknown to it rather than an
error. Every method takes an optional connection, so that several steps share one transaction.
"""

import logging
import math
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ValidationError
from sqlalchemy import Connection, Table, func, insert, select, update

from core.db import Database
from core.train_config import NAME_PATTERN

log = logging.getLogger(__name__)


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled}


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def _finite_or_none(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


# A diverged loss (NaN) or an unknown ETA (inf) is stored and served as null: JSON has no NaN, and one
# non-finite number must not make a record unreadable.
FiniteFloat = Annotated[float | None, AfterValidator(_finite_or_none)]


def finite_json(value: Any) -> Any:
    """Metrics as JSON can hold them: non-finite floats (an FID of a degenerate set) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    return value


class Record(BaseModel):
    """What every job's record has: its id, where it stands, and when."""

    id: str
    status: JobStatus
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


R = TypeVar("R", bound=Record)


class RecordStore(Generic[R]):
    """The records of one kind in `table` (columns `id`, `status`, `owner`, `created_at`, `record`, and those
    `columns(record)` gives)."""

    def __init__(
        self,
        db: Database,
        table: Table,
        model: type[R],
        columns: Callable[[R], dict[str, Any]] = lambda _: {},
    ):
        self.db = db
        self.table = table
        self.model = model
        self.columns = columns

    @contextmanager
    def _conn(self, conn: Connection | None) -> Iterator[Connection]:
        if conn is not None:
            yield conn
        else:
            with self.db.begin() as own:
                yield own

    def _row(self, record: R) -> dict[str, Any]:
        return {
            "status": record.status.value,
            "created_at": record.created_at,
            "record": record.model_dump(mode="json"),
            **self.columns(record),
        }

    def _parse(self, record_id: str, data: Any) -> R | None:
        try:
            return self.model.model_validate(data)
        except ValidationError as e:
            log.warning("%s %s: unreadable record: %s", self.model.__name__, record_id, e)
            return None

    def create(self, *, owner: str | None = None, conn: Connection | None = None, **fields: Any) -> R:
        """A new record (status `queued`), submitted by the API key named `owner` (None: not over HTTP)."""
        record = self.model(id=new_id(), status=JobStatus.queued, created_at=now(), **fields)
        with self._conn(conn) as c:
            c.execute(insert(self.table).values(id=record.id, owner=owner, **self._row(record)))
        return record

    def get(self, record_id: str, conn: Connection | None = None) -> R:
        """Raises KeyError for an unknown, malformed or unreadable id."""
        if not re.fullmatch(NAME_PATTERN, record_id):
            raise KeyError(record_id)
        with self._conn(conn) as c:
            data = c.execute(select(self.table.c.record).where(self.table.c.id == record_id)).scalar()
        record = None if data is None else self._parse(record_id, data)
        if record is None:
            raise KeyError(record_id)
        return record

    def owner(self, record_id: str, conn: Connection | None = None) -> str | None:
        """The name of the API key that submitted the record (None: not submitted over HTTP). Raises KeyError."""
        if not re.fullmatch(NAME_PATTERN, record_id):
            raise KeyError(record_id)
        with self._conn(conn) as c:
            row = c.execute(select(self.table.c.owner).where(self.table.c.id == record_id)).one_or_none()
        if row is None:
            raise KeyError(record_id)
        return row.owner

    def update(
        self,
        record_id: str,
        conn: Connection | None = None,
        apply: Callable[[R], dict[str, Any]] | None = None,
        **changes: Any,
    ) -> R:
        """Apply `changes`, and what `apply(record as it is now)` returns (to append to a list, say), to the record,
        read and written with its row locked, so no other writer's change is lost. Raises KeyError."""
        if not re.fullmatch(NAME_PATTERN, record_id):
            raise KeyError(record_id)
        with self._conn(conn) as c:
            query = select(self.table.c.record).where(self.table.c.id == record_id).with_for_update()
            data = c.execute(query).scalar()
            before = None if data is None else self._parse(record_id, data)
            if before is None:
                raise KeyError(record_id)
            if apply is not None:
                changes = {**changes, **apply(before)}
            # Validated, not model_copy'd: the changes go through the same checks as a record read back.
            record = self.model.model_validate({**dict(before), **changes})
            record = self._updating(c, before, record)
            c.execute(update(self.table).where(self.table.c.id == record_id).values(**self._row(record)))
        return record

    def _updating(self, conn: Connection, before: R, after: R) -> R:
        """What a kind of record does, in the update's transaction, when it changes (core/jobs.py: a webhook)."""
        return after

    def list(self, *, status: JobStatus | None = None, owner: str | None = None) -> list[R]:
        """The readable records (of that status, of that owner), newest first."""
        query = select(self.table.c.id, self.table.c.record).order_by(self.table.c.created_at.desc())
        if status is not None:
            query = query.where(self.table.c.status == status.value)
        if owner is not None:
            query = query.where(self.table.c.owner == owner)
        with self.db.begin() as c:
            rows = c.execute(query).all()
        return [r for record_id, data in rows if (r := self._parse(record_id, data)) is not None]

    def count(self, statuses: set[JobStatus], owner: str | None = None, conn: Connection | None = None) -> int:
        """How many records have one of `statuses` (and that owner)."""
        query = select(func.count()).select_from(self.table)
        query = query.where(self.table.c.status.in_([s.value for s in statuses]))
        if owner is not None:
            query = query.where(self.table.c.owner == owner)
        with self._conn(conn) as c:
            return int(c.execute(query).scalar_one())
