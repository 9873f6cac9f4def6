"""Training jobs' records (core/records.py) and what belongs to each job in the database besides: the cancel
request (a column the worker polls, so the API never writes the worker's record to ask), the claims of its
attempts (a row per attempt: one insert succeeds, so two workers handed the same job never both run it), and
the outbox entry of its webhook (delivered by service/background/webhooks.py), and the bytes its run files hold in
storage (`storage_bytes`, core/quota.py). The run's own files (checkpoints, samples) live on the volume, in
`<GANSERVE_CHECKPOINT_DIR>/jobs/<id>/`.
"""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from core import db as db_tables
from core.datasets import DatasetPin
from core.db import Database
from core.records import FINISHED, FiniteFloat, Record, RecordStore, finite_json, new_id, now
from core.train_config import TrainConfig
from core.workers import JobResources


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
        description="Sample-quality metrics measured at the end of this epoch (every `eval_every` epochs, or on the "
        "default budget schedule), with the feature extractor they were measured in.",
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
    uploaded_dataset: DatasetPin | None = Field(
        None,
        description="The uploaded dataset `config.dataset` named when the job was submitted, as the worker fetches "
        "it (by SHA-256); null for a built-in dataset.",
    )
    resources: JobResources | None = Field(
        None,
        description="The GPUs it asked for (or the server chose: `requested` false) and the queue it was sent to; "
        "null for a job of a version before resource classes, or one trained by `ganserve train`.",
    )
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


class OutboxState(StrEnum):
    pending = "pending"  # owed: waiting for its (next) attempt
    sending = "sending"  # claimed by one deliverer, which is calling the webhook
    delivered = "delivered"
    failed = "failed"


@dataclass(frozen=True)
class OutboxEntry:
    """A job's webhook as the outbox holds it."""

    job_id: str
    delivery: str  # X-Ganserve-Delivery
    state: OutboxState
    attempts: int
    next_attempt_at: float  # Unix time
    claimed_at: float | None = None  # Unix time of the claim of a `sending` entry: which claim it is


def _entry(row: Any) -> OutboxEntry:
    return OutboxEntry(
        row.job_id, row.delivery, OutboxState(row.state), row.attempts, row.next_attempt_at, row.claimed_at
    )


def _columns(record: JobRecord) -> dict[str, Any]:
    return {"dataset_id": record.uploaded_dataset.id if record.uploaded_dataset is not None else None}


class JobStore(RecordStore[JobRecord]):
    def __init__(self, db: Database):
        super().__init__(db, db_tables.jobs, JobRecord, _columns)

    def _updating(self, conn: Connection, before: JobRecord, after: JobRecord) -> JobRecord:
        if after.webhook and after.status in FINISHED and before.status not in FINISHED:
            # Its webhook is owed, in the same transaction as the status: whoever finishes a job (the worker, a
            # cancel, a failed submission, the reaper) owes the call; the API's deliverer makes it. Once per job:
            # one that finishes again (a worker that started it as it was being cancelled) owes nothing more, and
            # its status is written all the same. The job's row is locked, so no other transaction inserts meanwhile.
            box = db_tables.webhook_outbox
            if conn.execute(select(box.c.job_id).where(box.c.job_id == after.id)).first() is None:
                entry = {"job_id": after.id, "delivery": new_id(), "state": OutboxState.pending.value, "attempts": 0}
                conn.execute(insert(box).values(next_attempt_at=0.0, **entry))
                after = after.model_copy(update={"webhook_status": WebhookStatus.pending})
        return after

    # --- cancel requests and attempts ----------------------------------------------------------------

    def request_cancel(self, job_id: str) -> None:
        with self.db.begin() as c:
            c.execute(update(db_tables.jobs).where(db_tables.jobs.c.id == job_id).values(cancel_requested=True))

    def cancel_requested(self, job_id: str) -> bool:
        with self.db.begin() as c:
            query = select(db_tables.jobs.c.cancel_requested).where(db_tables.jobs.c.id == job_id)
            return bool(c.execute(query).scalar())

    def claim(self, job_id: str, attempt: int, worker: str) -> bool:
        """Take attempt number `attempt` of a job: True for exactly one caller (the row's primary key)."""
        try:
            with self.db.begin() as c:
                row = {"job_id": job_id, "attempt": attempt, "worker": worker, "claimed_at": now()}
                c.execute(insert(db_tables.job_attempts).values(**row))
        except IntegrityError:
            return False
        return True

    # --- storage used (core/quota.py) ----------------------------------------------------------------

    def set_storage_bytes(self, job_id: str, size: int) -> None:
        """What the job's run files now hold in storage (the worker's count after each upload or pruning)."""
        with self.db.begin() as c:
            c.execute(update(db_tables.jobs).where(db_tables.jobs.c.id == job_id).values(storage_bytes=size))

    def storage_bytes(self, job_id: str) -> int:
        with self.db.begin() as c:
            query = select(db_tables.jobs.c.storage_bytes).where(db_tables.jobs.c.id == job_id)
            return int(c.execute(query).scalar() or 0)

    # --- the webhook outbox --------------------------------------------------------------------------

    def webhooks_due(self, wall: float) -> list[str]:
        """The jobs whose webhook is owed and due at Unix time `wall`, oldest first."""
        box = db_tables.webhook_outbox
        query = select(box.c.job_id).where(box.c.state == OutboxState.pending.value, box.c.next_attempt_at <= wall)
        with self.db.begin() as c:
            return list(c.execute(query.order_by(box.c.next_attempt_at)).scalars())

    def claim_webhook(self, job_id: str, wall: float) -> OutboxEntry | None:
        """Take a due webhook for one attempt: the entry for exactly one caller (a conditional update), else None."""
        box = db_tables.webhook_outbox
        due = (box.c.job_id == job_id, box.c.state == OutboxState.pending.value, box.c.next_attempt_at <= wall)
        with self.db.begin() as c:
            claimed = c.execute(update(box).where(*due).values(state=OutboxState.sending.value, claimed_at=wall))
            if claimed.rowcount != 1:
                return None
            row = c.execute(select(box).where(box.c.job_id == job_id)).one()
        return _entry(row)

    def settle_webhook(
        self,
        job_id: str,
        state: OutboxState,
        attempts: int,
        next_attempt_at: float,
        *,
        claim: OutboxEntry | None = None,
        delivery: WebhookDelivery | None = None,
    ) -> bool:
        """An attempt's outcome: delivered, failed for good, or pending again until `next_attempt_at`. With
        `claim` (what `claim_webhook` returned), only while that claim holds; with `delivery`, the attempt is
        appended to the job's `webhook_deliveries` in the same transaction, and its `webhook_status` follows
        `state`. False when the claim was given back as abandoned meanwhile: the attempt is logged in the record,
        and the entry (and the status) are left to whoever claimed it since."""
        box = db_tables.webhook_outbox
        held = [box.c.job_id == job_id]
        if claim is not None:
            held += [box.c.state == OutboxState.sending.value, box.c.claimed_at == claim.claimed_at]
        values = {"state": state.value, "attempts": attempts, "next_attempt_at": next_attempt_at, "claimed_at": None}
        with self.db.begin() as c:
            settled = c.execute(update(box).where(*held).values(**values)).rowcount == 1
            if delivery is not None:
                status = {"webhook_status": WebhookStatus(state.value)} if settled else {}
                self.update(
                    job_id, c, apply=lambda r: {"webhook_deliveries": [*r.webhook_deliveries, delivery]}, **status
                )
        return settled

    def release_abandoned_webhooks(self, wall: float, stale_s: float) -> list[str]:
        """Claims older than `stale_s` (their deliverer vanished mid-attempt) owed again; returns their jobs."""
        box = db_tables.webhook_outbox
        stale = (box.c.state == OutboxState.sending.value, box.c.claimed_at < wall - stale_s)
        owed = update(box).where(*stale).values(state=OutboxState.pending.value, claimed_at=None)
        with self.db.begin() as c:  # RETURNING: only those this call gave back, whoever else runs it at once
            return list(c.execute(owed.returning(box.c.job_id)).scalars())

    def webhook(self, job_id: str) -> OutboxEntry | None:
        box = db_tables.webhook_outbox
        with self.db.begin() as c:
            row = c.execute(select(box).where(box.c.job_id == job_id)).one_or_none()
        return None if row is None else _entry(row)
