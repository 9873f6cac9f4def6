"""Training jobs' records (core/records.py), and the files beside each record that other parties own.

`<jobs_dir>/<id>/job.json` is the record; beside it `cancel` is the cancel request (a separate file, so that the
API never races the worker over the record), `attempt-<n>` is created exclusively by the worker that starts
the job's n-th attempt (so two workers handed the same job never both run it), and `webhook.*` is the outbox of
the job's webhook (`owe_webhook`, delivered by service/background/webhooks.py). The run's own files
(checkpoints, samples) live in the same folder.
"""

import json
import os
import tempfile
import uuid
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field

from core.records import FINISHED, FiniteFloat, Record, RecordStore, finite_json
from core.train_config import TrainConfig


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


class JobRecord(Record):
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
    webhook: str | None = Field(
        None, description="The URL called (POST, HMAC-signed) when the job finishes: docs/operations.md, Webhooks."
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


class JobStore(RecordStore[JobRecord]):
    def __init__(self, jobs_dir: Path):
        super().__init__(jobs_dir, JobRecord, "{id}/job.json")

    def job_dir(self, job_id: str) -> Path:
        return self.path(job_id).parent

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        before = self.get(job_id)
        record = JobRecord.model_validate({**dict(before), **changes})
        if record.webhook and record.status in FINISHED and before.status not in FINISHED:
            # Its webhook is owed: the outbox entry first, so a crash between the two writes loses no call (the
            # deliverer waits until the record says finished). No HTTP here: the API's deliverer makes the call.
            owe_webhook(self.job_dir(job_id))
            record = record.model_copy(update={"webhook_status": WebhookStatus.pending})
        self.save(record)
        return record

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
