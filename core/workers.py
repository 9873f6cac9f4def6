"""Workers and the resources a job asks for: what each worker process advertises (its class, devices and queues,
a row in the `workers` table that it refreshes every GANSERVE_WORKER_HEARTBEAT_S), which queue a job goes to, and
whether any worker can take it (docs/architecture.md, Queues and workers).

Times are the database's clock (PostgreSQL's `now()`, in the writes and in the reads), so a worker and an API on
hosts whose clocks differ still agree on who is live; SQLite, a file on one host, uses that host's clock.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, delete, func, insert, select, update

from core import db as tables
from core.db import Database, aware

STALE_BEATS = 3  # a worker whose row is older than this many heartbeats is not live
FORGET_AFTER = timedelta(days=1)  # the row of a worker silent this long is deleted by the next worker to start
MAX_GPUS = 64


class WorkerClass(StrEnum):
    cpu = "cpu"
    gpu = "gpu"


class Resources(BaseModel):
    """What a training job asks for (POST /train's `resources`)."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(
        ge=0,
        le=MAX_GPUS,
        description="GPUs the job needs on one worker: 0 runs it on a CPU worker, N ≥ 1 on a GPU worker with at "
        "least N devices. Left out: 1 when a live GPU worker is advertised, else 0.",
    )


class JobResources(Resources):
    """What a job asked for, as its record keeps it, and the queue it was sent to."""

    model_config = ConfigDict(extra="ignore")

    gpus: int | None = Field(  # type: ignore[assignment]
        ge=0,
        le=MAX_GPUS,
        description="GPUs it needs on one worker (0: a CPU worker); null: any worker (it was submitted while no "
        "worker had advertised itself).",
    )
    queue: str = Field(description="The broker queue it was sent to: `cpu`, `gpu-<gpus>`, or `training` (any worker).")
    requested: bool = Field(description="Whether the submission said `resources`; false: the server chose.")


class WorkerInfo(BaseModel):
    """A worker process as it advertises itself (GET /workers)."""

    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(description="Its Celery node name, e.g. `gpu0@host`.")
    worker_class: WorkerClass = Field(alias="class", description="`gpu` (it has devices) or `cpu`.")
    devices: list[int] = Field(description="The CUDA device ids it trains on; empty for a CPU worker.")
    queues: list[str] = Field(description="The broker queues it consumes, in the order it looks at them.")
    host: str
    pid: int
    started_at: datetime
    last_seen: datetime = Field(description="When it last refreshed its row (every GANSERVE_WORKER_HEARTBEAT_S).")
    live: bool = Field(description="Seen within 3 × GANSERVE_WORKER_HEARTBEAT_S.")

    def can_run(self, gpus: int) -> bool:
        if gpus == 0:
            return self.worker_class == WorkerClass.cpu
        return self.worker_class == WorkerClass.gpu and len(self.devices) >= gpus


@dataclass
class WorkerStore:
    db: Database
    heartbeat_s: float

    @property
    def stale_after(self) -> timedelta:
        return timedelta(seconds=STALE_BEATS * self.heartbeat_s)

    def advertise(
        self, name: str, worker_class: WorkerClass, devices: list[int], queues: list[str], host: str, pid: int
    ) -> None:
        """This worker's row, replacing any of the same name (a restart), and rows silent for a day deleted."""
        with self.db.begin() as conn:
            db_now = _db_now(conn)
            conn.execute(delete(tables.workers).where(tables.workers.c.last_seen < db_now - FORGET_AFTER))
            conn.execute(delete(tables.workers).where(tables.workers.c.name == name))
            conn.execute(
                insert(tables.workers).values(
                    name=name,
                    worker_class=worker_class.value,
                    devices=devices,
                    queues=queues,
                    host=host,
                    pid=pid,
                    started_at=db_now,
                    last_seen=db_now,
                )
            )

    def beat(self, name: str) -> bool:
        """Refresh the row's `last_seen`; False when there is no such row (deleted meanwhile: advertise again)."""
        with self.db.begin() as conn:
            result = conn.execute(
                update(tables.workers).where(tables.workers.c.name == name).values(last_seen=_db_now(conn))
            )
            return result.rowcount > 0

    def remove(self, name: str) -> None:
        with self.db.begin() as conn:
            conn.execute(delete(tables.workers).where(tables.workers.c.name == name))

    def list(self) -> list[WorkerInfo]:
        """Every advertised worker, live or not, by class then name."""
        with self.db.begin() as conn:
            db_now = _db_now(conn)
            rows = conn.execute(select(tables.workers).order_by(tables.workers.c.worker_class, tables.workers.c.name))
            return [
                WorkerInfo(
                    name=r.name,
                    worker_class=WorkerClass(r.worker_class),
                    devices=list(r.devices),
                    queues=list(r.queues),
                    host=r.host,
                    pid=r.pid,
                    started_at=aware(r.started_at),
                    last_seen=aware(r.last_seen),
                    live=db_now - aware(r.last_seen) <= self.stale_after,
                )
                for r in rows
            ]


def _db_now(conn: Connection) -> datetime:
    """The database's clock: PostgreSQL's `now()` (hosts agree through it). SQLite is a file on this host, whose
    CURRENT_TIMESTAMP has whole seconds only: this host's clock, to the microsecond, is the same clock."""
    if conn.dialect.name == "sqlite":
        return datetime.now(UTC)
    return aware(conn.execute(select(func.now())).scalar_one())


def default_gpus(workers: list[WorkerInfo]) -> int | None:
    """What a job that does not say `resources` asks for: a GPU when a live GPU worker is advertised, else the CPU;
    with no live worker, what the advertised (silent) workers could run; with none advertised at all, None: any
    worker (the API started before them; the first to come takes it, whatever its class)."""
    live = [w for w in workers if w.live]
    for pool in (live, workers):
        if any(w.worker_class == WorkerClass.gpu for w in pool):
            return 1
        if pool:
            return 0
    return None


def refusal(gpus: int, workers: list[WorkerInfo]) -> str | None:
    """Why no advertised worker, live or not, could ever run a job asking for `gpus` GPUs, and what to do; None
    when one could, or when no worker is advertised at all (the job waits for one)."""
    if not workers or any(w.can_run(gpus) for w in workers):
        return None
    gpu_sizes = [len(w.devices) for w in workers if w.worker_class == WorkerClass.gpu]
    if gpus == 0:
        return (
            f"No CPU worker is advertised, so no worker can run a job with resources.gpus 0: the workers are GPU "
            f"workers with up to {max(gpu_sizes)} device(s) (GET /workers). Leave `resources` out, or ask for "
            f"1 to {max(gpu_sizes)} GPUs, or start a CPU worker (`ganserve worker` with GANSERVE_DEVICES empty)."
        )
    if not gpu_sizes:
        return (
            f"Only CPU workers are advertised, so no worker can run a job asking for {gpus} GPU(s) (GET /workers). "
            "Send resources.gpus 0 or leave `resources` out, or start a GPU worker (`ganserve worker` with "
            "GANSERVE_DEVICES)."
        )
    return (
        f"No worker can run a job asking for {gpus} GPUs: the largest GPU worker advertised has {max(gpu_sizes)} "
        f"device(s) (GET /workers). Ask for at most {max(gpu_sizes)}, or start a worker with at least {gpus} "
        f"devices (GANSERVE_DEVICES with GANSERVE_GPUS_PER_WORKER={gpus})."
    )


def wanted(gpus: int | None) -> str:
    """The workers a job asking for `gpus` GPUs (None: any worker) needs, in words."""
    if gpus is None:
        return "any worker"
    return "a cpu worker" if gpus == 0 else f"a gpu worker with ≥{gpus} device{'s' if gpus > 1 else ''}"


def waiting_for(gpus: int | None, workers: list[WorkerInfo]) -> str | None:
    """Why a queued job asking for `gpus` GPUs (None: any worker) waits on no live worker, in words; None when a live
    one can take it."""
    fits = (lambda w: True) if gpus is None else (lambda w: w.can_run(gpus))
    if any(w.live and fits(w) for w in workers):
        return None
    silent = sum(1 for w in workers if not w.live and fits(w))
    also = f" ({silent} such worker(s) advertised but silent)" if silent else ""
    return f"no live worker can take it: it waits for {wanted(gpus)}{also}; GET /workers lists the workers"
