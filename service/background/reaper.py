"""The reaper: finds training jobs whose worker vanished and queues them again.

A worker that is SIGKILLed or loses its machine never acknowledges its message, and Redis hands it out again
only after the visibility timeout (24 h). So the API's lifespan scans the `running` records every few seconds:
one whose `heartbeat_at` has not changed for `GANSERVE_STALE_AFTER_S` (on this process's own clock) has lost
its worker, and is cancelled (a cancel was asked), failed (`GANSERVE_MAX_ATTEMPTS` reached) or queued again
and sent; the next worker resumes it from its newest checkpoint. Several API processes may each run one: a
job queued twice still runs once (docs/architecture.md, "Faults").
"""

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.jobs import JobRecord, JobStore
from core.records import JobStatus, now
from core.tasks import ANY_QUEUE, TRAIN_TASK
from service.background.periodic import periodic

if TYPE_CHECKING:
    from service.state import AppState

log = logging.getLogger(__name__)

TaskSender = Callable[[str], None]


def scan_every_s(stale_after_s: float) -> float:
    """How often to look: a few times per staleness period, at most every 5 s."""
    return max(0.2, min(5.0, stale_after_s / 4))


def _signature(record: JobRecord) -> tuple[Any, ...]:
    return (record.heartbeat_at, record.worker, record.attempts)


@dataclass
class Reaper:
    store: JobStore
    send: TaskSender
    stale_after_s: float
    max_attempts: int
    clock: Callable[[], float] = time.monotonic
    # job id → (its heartbeat as last seen, when this process first saw that heartbeat)
    _seen: dict[str, tuple[tuple[Any, ...], float]] = field(default_factory=dict)

    def scan(self) -> list[str]:
        """One pass over the records; returns the ids of the jobs it re-queued, failed or cancelled."""
        t = self.clock()
        running = [r for r in self.store.list() if r.status == JobStatus.running]
        ids = {r.id for r in running}
        self._seen = {job_id: seen for job_id, seen in self._seen.items() if job_id in ids}
        acted = []
        for record in running:
            seen = self._seen.get(record.id)
            if seen is None or seen[0] != _signature(record):
                self._seen[record.id] = (_signature(record), t)
            elif t - seen[1] >= self.stale_after_s and self._reap(record.id, seen[0], t - seen[1]):
                acted.append(record.id)
        return acted

    def _reap(self, job_id: str, signature: tuple[Any, ...], silent_s: float) -> bool:
        record = self.store.get(job_id)  # again: it may have moved on since the listing
        if record.status != JobStatus.running or _signature(record) != signature:
            return False
        lost = f"its worker {record.worker or '(unknown)'} gave no heartbeat for {silent_s:.0f} s"
        if self.store.cancel_requested(job_id):
            self.store.update(job_id, status=JobStatus.cancelled, finished_at=now())
            log.warning("job %s: %s; it was being cancelled, so it is cancelled", job_id, lost)
            return True
        if record.attempts >= self.max_attempts:
            reason = (
                f"the worker running it vanished {record.workers_lost + 1} time(s); the last time, on attempt "
                f"{record.attempts} of {self.max_attempts} (GANSERVE_MAX_ATTEMPTS), {lost}; not retried"
            )
            self.store.update(job_id, status=JobStatus.failed, error=reason, finished_at=now())
            log.error("job %s failed: %s", job_id, reason)
            return True
        self.store.update(job_id, status=JobStatus.queued, started_at=None, workers_lost=record.workers_lost + 1)
        try:
            self.send(job_id)
        except Exception as e:  # the broker is down: leave it as it was, the next scan tries again
            self.store.update(
                job_id, status=record.status, started_at=record.started_at, workers_lost=record.workers_lost
            )
            log.error("job %s: %s, but the broker cannot take it again yet (%s: %s)", job_id, lost, type(e).__name__, e)
            return False
        log.warning(
            "job %s: %s; queued again (attempt %d of at most %d follows)",
            job_id,
            lost,
            record.attempts + 1,
            self.max_attempts,
        )
        return True


def requeue(state: "AppState") -> Callable[[str], None]:
    """What the reaper sends for a job: what POST /train sent, to the queue it chose then (an older version's job,
    which has none, to the queue every worker drains)."""

    def send(job_id: str) -> None:
        record = state.jobs.get(job_id)
        queue = record.resources.queue if record.resources is not None else ANY_QUEUE
        state.tasks.send(TRAIN_TASK, job_id, queue=queue)

    return send


@contextlib.asynccontextmanager
async def running(state: "AppState") -> AsyncIterator[Reaper]:
    """Run the app's reaper for the duration of the block (the API's lifespan)."""
    settings = state.settings

    send = requeue(state)

    reaper = Reaper(state.jobs, send, settings.stale_after_s, settings.max_attempts)
    every = scan_every_s(settings.stale_after_s)
    log.info(
        "reaper: a running job silent for %.0f s is queued again (checked every %.1f s)", reaper.stale_after_s, every
    )
    async with periodic("reaper", reaper.scan, every):
        yield reaper
