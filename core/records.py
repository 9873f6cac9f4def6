"""Records of truth on the volume shared by the API and the workers, one generic store for every kind of job
(training jobs, core/jobs.py; evaluations, core/evaluations.py).

A record is one JSON file, replaced atomically (core/files.py) so readers never see half of one, and validated
by its pydantic model on every read and write. A record the running version cannot read (written by an
incompatible version, or damaged) is unknown to it rather than an error. Files, not Redis: a record must
outlive a Redis or API restart and work with the embedded broker too.
"""

import logging
import math
import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ValidationError

from core.files import atomic_write_json
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
    """The records of one kind, each at `root / layout.format(id=…)` (e.g. `"{id}/job.json"`)."""

    def __init__(self, root: Path, model: type[R], layout: str):
        self.root = root
        self.model = model
        self.layout = layout

    def path(self, record_id: str) -> Path:
        """Raises KeyError for a malformed id (never a path outside the root)."""
        if not re.fullmatch(NAME_PATTERN, record_id):
            raise KeyError(record_id)
        return self.root / self.layout.format(id=record_id)

    def create(self, **fields: Any) -> R:
        record = self.model(id=new_id(), status=JobStatus.queued, created_at=now(), **fields)
        self.save(record)
        return record

    def save(self, record: R) -> None:
        atomic_write_json(self.path(record.id), record.model_dump(mode="json"))

    def get(self, record_id: str) -> R:
        """Raises KeyError for an unknown, malformed or unreadable id."""
        path = self.path(record_id)
        try:
            return self.model.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise KeyError(record_id) from None
        except ValidationError as e:
            log.warning("%s %s: unreadable record %s: %s", self.model.__name__, record_id, path, e)
            raise KeyError(record_id) from None

    def update(self, record_id: str, **changes: Any) -> R:
        # Validated, not model_copy'd: the changes go through the same checks as a record read from disk.
        record = self.model.model_validate({**dict(self.get(record_id)), **changes})
        self.save(record)
        return record

    def list(self) -> list[R]:
        """Every readable record, newest first."""
        records = []
        for path in self.root.glob(self.layout.format(id="*")):
            try:
                records.append(self.model.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError):
                continue  # a record from an incompatible version, or being replaced right now
        return sorted(records, key=lambda r: r.created_at, reverse=True)
