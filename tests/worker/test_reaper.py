"""The API's reaper (service/background/reaper.py), on a real JobStore with a clock the test drives: a running job whose
heartbeat stops is queued again and sent, up to GANSERVE_MAX_ATTEMPTS, then failed; a live one is left alone.
Last, the reaper the API's lifespan starts sends through the real (filesystem) broker."""

import time
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.jobs import JobRecord, JobStore
from core.records import JobStatus, now
from core.settings import Settings
from service.background.reaper import Reaper
from service.main import create_app

STALE_S = 60.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sent() -> list[str]:
    return []


@pytest.fixture
def reaper(store: JobStore, sent: list[str], clock: Clock) -> Reaper:
    return Reaper(store, sent.append, stale_after_s=STALE_S, max_attempts=3, clock=clock)


def running(store: JobStore, submit, attempts: int = 1) -> JobRecord:
    job = submit()
    return store.update(
        job.id, status=JobStatus.running, started_at=now(), worker="host:1", heartbeat_at=now(), attempts=attempts
    )


def test_a_live_job_is_left_alone(reaper: Reaper, store: JobStore, submit, clock: Clock, sent: list[str]) -> None:
    job = running(store, submit)
    for _ in range(10):
        assert reaper.scan() == []
        clock.t += STALE_S / 2
        store.update(job.id, heartbeat_at=now())  # it beats
    assert store.get(job.id).status == JobStatus.running and sent == []


def test_a_silent_job_is_queued_again_and_sent(
    reaper: Reaper, store: JobStore, submit, clock: Clock, sent: list[str]
) -> None:
    job = running(store, submit)
    assert reaper.scan() == []  # first sight of this heartbeat
    clock.t += STALE_S - 1
    assert reaper.scan() == []
    clock.t += 1
    assert reaper.scan() == [job.id]
    record = store.get(job.id)
    assert (record.status, record.workers_lost, record.attempts, record.started_at) == (JobStatus.queued, 1, 1, None)
    assert sent == [job.id]
    assert reaper.scan() == [] and sent == [job.id]  # once


def test_staleness_is_measured_on_the_reapers_own_clock(reaper: Reaper, store: JobStore, submit, clock: Clock) -> None:
    """A heartbeat stamped far in the past by a worker whose clock is behind is not stale while it changes."""
    job = running(store, submit)
    for i in range(5):
        store.update(job.id, heartbeat_at=now() - timedelta(hours=3, seconds=-i))
        assert reaper.scan() == []
        clock.t += STALE_S / 2
    assert store.get(job.id).status == JobStatus.running


def test_after_max_attempts_the_job_fails_saying_why(
    reaper: Reaper, store: JobStore, submit, clock: Clock, sent: list[str]
) -> None:
    job = running(store, submit, attempts=3)
    store.update(job.id, workers_lost=2)
    reaper.scan()
    clock.t += STALE_S
    assert reaper.scan() == [job.id]
    record = store.get(job.id)
    assert record.status == JobStatus.failed and record.finished_at is not None and sent == []
    assert record.error is not None
    assert record.error == (
        "the worker running it vanished 3 time(s); the last time, on attempt 3 of 3 (GANSERVE_MAX_ATTEMPTS), "
        "its worker host:1 gave no heartbeat for 60 s; not retried"
    )


def test_a_broker_that_cannot_take_it_leaves_it_for_the_next_scan(
    store: JobStore, submit, clock: Clock, sent: list[str]
) -> None:
    down = True

    def send(job_id: str) -> None:
        if down:
            raise ConnectionError("redis is down")
        sent.append(job_id)

    reaper = Reaper(store, send, stale_after_s=STALE_S, max_attempts=3, clock=clock)
    job = running(store, submit)
    reaper.scan()
    clock.t += STALE_S
    assert reaper.scan() == []
    record = store.get(job.id)
    assert (record.status, record.workers_lost, record.worker) == (JobStatus.running, 0, "host:1")
    down = False
    clock.t += 1
    assert reaper.scan() == [job.id] and sent == [job.id]
    assert store.get(job.id).status == JobStatus.queued


def test_a_silent_job_being_cancelled_is_cancelled(
    reaper: Reaper, store: JobStore, submit, clock: Clock, sent: list[str]
) -> None:
    job = running(store, submit)
    store.request_cancel(job.id)
    reaper.scan()
    clock.t += STALE_S
    assert reaper.scan() == [job.id]
    assert store.get(job.id).status == JobStatus.cancelled and sent == []


def test_the_apis_reaper_sends_through_the_broker(tmp_path: Path, submit, store: JobStore, settings: Settings) -> None:
    """The lifespan's reaper, end to end in-process: a stale job goes back to the (filesystem) broker's queue."""
    app_settings = settings.model_copy(update={"broker_url": "filesystem://", "stale_after_s": 0.4})
    job = running(store, submit)
    queue = app_settings.broker_dir / "queue"
    with TestClient(create_app(app_settings)):
        deadline = time.monotonic() + 10
        while not (queue.is_dir() and any(queue.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert store.get(job.id).status == JobStatus.queued
    messages = list(queue.iterdir())
    assert len(messages) == 1 and job.id in messages[0].read_text()
