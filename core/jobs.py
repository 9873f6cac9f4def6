"""Training jobs' records of truth, as JSON files on the volume shared by API and worker.

`<jobs_dir>/<id>/job.json` is the record (replaced atomically, so readers never see half of one);
`<jobs_dir>/<id>/cancel` is the cancel request, a separate file so that the API never races the worker
over the record; `<jobs_dir>/<id>/attempt-<n>` is created exclusively by the worker that starts the job's
n-th attempt, so two workers handed the same job at once never both run it; `<jobs_dir>/<id>/webhook.*` is
the outbox of a job's webhook (`owe_webhook`, delivered by service/background/webhooks.py). Files, not
Redis, because the record must outlive a Redis or API restart and must work with the embedded broker
too. Imported by the worker: keep it free of FastAPI.
"""

import json
import logging
import math
import os
import re
import tempfile
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, ValidationError

from core.files import atomic_write_json
from core.train_config import NAME_PATTERN, TrainConfig

log = logging.getLogger(__name__)


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled}


def _finite_or_none(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


# A diverged loss (NaN) or an unknown ETA (inf) is stored and served as null: JSON has no NaN, and one
# non-finite number must not make a job's record unreadable.
FiniteFloat = Annotated[float | None, AfterValidator(_finite_or_none)]


class Progress(BaseModel):
    epoch: int = Field(0, description="Epochs completed.")
    epochs: int
    step: int = Field(0, description="Generator steps completed.")
    total_steps: int
    fraction: float = Field(0.0, ge=0, le=1)
    images_per_sec: FiniteFloat = None
    eta_seconds: FiniteFloat = None


class PublishedModel(BaseModel):
    name: str
    version: int


def finite_json(value: Any) -> Any:
    """Metrics as JSON can hold them: non-finite floats (an FID of a degenerate set) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    return value


class EpochRecord(BaseModel):
    epoch: int
    step: int = Field(description="Generator steps completed at the end of this epoch.")
    losses: dict[str, FiniteFloat] = Field(description="Means over the epoch (null: not finite).")
    evaluation: Annotated[dict[str, Any] | None, AfterValidator(finite_json)] = Field(
        None,
        description="Sample-quality metrics measured at the end of this epoch (every `eval_every` epochs), "
        "with the feature extractor they were measured in.",
    )


class WebhookStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


class WebhookDelivery(BaseModel):
    """One attempt to call a job's webhook."""

    delivery: str = Field(description="The delivery's id (`X-Ganserve-Delivery`): the same for every retry.")
    attempt: int = Field(description="1 for the first call, 2 for the first retry, …")
    at: datetime
    status_code: int | None = Field(None, description="The receiver's HTTP status; null when there was no answer.")
    error: str | None = Field(None, description="Why the attempt did not succeed; null when it did (2xx).")


class JobRecord(BaseModel):
    id: str
    status: JobStatus
    config: TrainConfig
    progress: Progress | None = None
    metrics: dict[str, FiniteFloat] = Field(
        default_factory=dict, description="Latest losses and D outputs (null: not finite)."
    )
    checkpoints: list[str] = Field(default_factory=list, description="Paths relative to the volume.")
    samples: list[str] = Field(default_factory=list, description="Sample grid PNGs, relative to the volume.")
    history: list[EpochRecord] = Field(
        default_factory=list, description="One entry per finished epoch: losses, and metrics where measured."
    )
    evaluation_skipped: str | None = Field(None, description="Why this job measures no sample quality, if not.")
    model: PublishedModel | None = None
    error: str | None = None
    attempts: int = Field(
        0,
        description="How many times a worker started this job: 1, plus one per restart after its worker stopped.",
    )
    resumed_from_step: int | None = Field(
        None, description="The step of the checkpoint the latest attempt resumed from; null when it began at step 0."
    )
    workers_lost: int = Field(0, description="How many times its worker vanished (no heartbeat) and it was re-queued.")
    worker: str | None = Field(None, description="The worker running (or that last ran) this job: `host:pid`.")
    heartbeat_at: datetime | None = Field(
        None, description="When that worker last said it is alive (every few seconds while the job runs)."
    )
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    webhook: str | None = Field(
        None, description="The URL called (POST, HMAC-signed) when the job finishes: see README, Webhooks."
    )
    webhook_status: WebhookStatus | None = Field(
        None,
        description="`pending` (owed, or waiting for its next attempt), `delivered` (a 2xx answer) or `failed` "
        "(every attempt failed, or the call was refused); null until the job finishes.",
    )
    webhook_deliveries: list[WebhookDelivery] = Field(
        default_factory=list, description="Every attempt to call the webhook, oldest first."
    )


# A finished job's webhook is owed through an outbox file beside its record, delivered by the API
# (service/background/webhooks.py): `webhook.pending` → `webhook.sending` (claimed by one deliverer, by rename) →
# `webhook.delivered` | `webhook.failed`, or back to `webhook.pending` to wait for its next attempt. Only ever
# renamed, so at most one of them exists for a job.
WEBHOOK_PENDING = "webhook.pending"
WEBHOOK_SENDING = "webhook.sending"
WEBHOOK_DELIVERED = "webhook.delivered"
WEBHOOK_FAILED = "webhook.failed"


def owe_webhook(job_dir: Path) -> bool:
    """Create a job's outbox entry, whole (written aside, then linked into place) and once: True when this call
    created it, False when it already existed."""
    state = {"delivery": str(uuid.uuid4()), "attempts": 0, "next_attempt_at": 0.0}
    fd, tmp = tempfile.mkstemp(dir=job_dir, prefix=".webhook.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # API and worker may run as different users on the shared volume
        with os.fdopen(fd, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, job_dir / WEBHOOK_PENDING)  # fails if it exists: never two entries, never a half-written one
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def now() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    def __init__(self, jobs_dir: Path):
        self.root = jobs_dir

    def job_dir(self, job_id: str) -> Path:
        if not re.fullmatch(NAME_PATTERN, job_id):
            raise KeyError(job_id)
        return self.root / job_id

    def create(self, config: TrainConfig, webhook: str | None = None) -> JobRecord:
        record = JobRecord(id=new_job_id(), status=JobStatus.queued, config=config, created_at=now(), webhook=webhook)
        self.save(record)
        return record

    def save(self, record: JobRecord) -> None:
        atomic_write_json(self.job_dir(record.id) / "job.json", record.model_dump(mode="json"))

    def get(self, job_id: str) -> JobRecord:
        """Raises KeyError for an unknown (or malformed) id."""
        path = self.job_dir(job_id) / "job.json"
        try:
            return JobRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise KeyError(job_id) from None
        except ValidationError as e:
            # Written by an incompatible version, or damaged: unknown to this one (list() skips it too).
            log.warning("job %s: unreadable record %s: %s", job_id, path, e)
            raise KeyError(job_id) from None

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        before = self.get(job_id)
        # Validated, not model_copy'd: the changes go through the same checks as a record read from disk.
        record = JobRecord.model_validate({**dict(before), **changes})
        if record.webhook and record.status in FINISHED and before.status not in FINISHED:
            # Its webhook is owed: the outbox entry first, so a crash between the two writes loses no call (the
            # deliverer waits until the record says finished). No HTTP here: the API's deliverer makes the call.
            owe_webhook(self.job_dir(job_id))
            record = record.model_copy(update={"webhook_status": WebhookStatus.pending})
        self.save(record)
        return record

    def list(self) -> list[JobRecord]:
        """Every readable record, newest first."""
        records = []
        if self.root.is_dir():
            for path in self.root.glob("*/job.json"):
                try:
                    records.append(JobRecord.model_validate_json(path.read_bytes()))
                except (OSError, ValidationError):
                    continue  # a record from an incompatible version, or being replaced right now
        return sorted(records, key=lambda r: r.created_at, reverse=True)

    def request_cancel(self, job_id: str) -> None:
        (self.job_dir(job_id) / "cancel").touch()

    def cancel_requested(self, job_id: str) -> bool:
        return (self.job_dir(job_id) / "cancel").exists()

    def claim(self, job_id: str, attempt: int) -> bool:
        """Take attempt number `attempt` of a job: True for exactly one caller (an exclusive create)."""
        try:
            fd = os.open(self.job_dir(job_id) / f"attempt-{attempt}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        os.close(fd)
        return True
