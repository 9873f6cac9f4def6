"""The `workers` table (core/workers.py) on SQLite and PostgreSQL: a worker's row advertised, refreshed, gone stale,
replaced on a restart, removed; and the decisions read from the rows: a job's default GPUs, the 422's refusal, and
what a queued job waits for."""

import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from core import db as tables
from core.db import Database
from core.workers import FORGET_AFTER, WorkerClass, WorkerInfo, WorkerStore, default_gpus, refusal, waiting_for

BEAT_S = 0.4  # stale after 1.2 s


@pytest.fixture
def store(any_db: Database) -> WorkerStore:
    return WorkerStore(any_db, BEAT_S)


def test_a_worker_is_advertised_refreshed_and_goes_stale(store: WorkerStore) -> None:
    store.advertise("gpu0-1@h", WorkerClass.gpu, [0, 1], ["evaluate", "gpu-2", "gpu-1", "training"], "h", 42)
    store.advertise("cpu@h", WorkerClass.cpu, [], ["evaluate", "cpu", "training"], "h", 43)
    (cpu, gpu) = store.list()  # by class, then name
    assert (cpu.name, cpu.worker_class, cpu.devices, cpu.live) == ("cpu@h", WorkerClass.cpu, [], True)
    assert (gpu.name, gpu.devices, gpu.queues, gpu.host, gpu.pid) == (
        "gpu0-1@h",
        [0, 1],
        ["evaluate", "gpu-2", "gpu-1", "training"],
        "h",
        42,
    )
    assert gpu.started_at.tzinfo is not None and gpu.last_seen >= gpu.started_at
    time.sleep(1.5)  # more than 3 beats
    assert store.beat("gpu0-1@h") is True
    live = {w.name: w.live for w in store.list()}
    assert live == {"cpu@h": False, "gpu0-1@h": True}
    assert store.beat("nobody@h") is False  # no row: the registration advertises again


def test_a_restart_replaces_the_row_and_a_stop_removes_it(store: WorkerStore) -> None:
    store.advertise("w@h", WorkerClass.cpu, [], ["evaluate", "cpu"], "h", 1)
    store.advertise("w@h", WorkerClass.gpu, [3], ["evaluate", "gpu-1"], "h", 2)
    (w,) = store.list()
    assert (w.worker_class, w.devices, w.pid) == (WorkerClass.gpu, [3], 2)
    store.remove("w@h")
    assert store.list() == []


def test_a_worker_silent_for_a_day_is_forgotten_when_another_starts(store: WorkerStore) -> None:
    store.advertise("old@h", WorkerClass.gpu, [0], ["gpu-1"], "h", 1)
    with store.db.begin() as conn:
        long_ago = datetime.now(UTC) - FORGET_AFTER * 2
        conn.execute(update(tables.workers).values(last_seen=long_ago))
    assert [w.live for w in store.list()] == [False]
    store.advertise("new@h", WorkerClass.cpu, [], ["cpu"], "h", 2)
    assert [w.name for w in store.list()] == ["new@h"]


def info(name: str, devices: list[int], live: bool = True) -> WorkerInfo:
    now = datetime.now(UTC)
    cls = WorkerClass.gpu if devices else WorkerClass.cpu
    return WorkerInfo(
        name=name,
        worker_class=cls,
        devices=devices,
        queues=[],
        host="h",
        pid=1,
        started_at=now,
        last_seen=now,
        live=live,
    )


def test_a_job_without_resources_goes_where_a_live_worker_can_take_it() -> None:
    assert default_gpus([]) is None  # the API before any worker advertised itself: any worker, the first to come
    assert default_gpus([info("c", [])]) == 0
    assert default_gpus([info("c", []), info("g", [0])]) == 1
    assert default_gpus([info("c", []), info("g", [0], live=False)]) == 0  # the GPU worker is down: the CPU
    assert default_gpus([info("g", [0], live=False)]) == 1  # nothing live: what the advertised ones could run


def test_refusals_say_what_is_wrong_and_how_to_fix_it() -> None:
    assert refusal(4, []) is None  # no worker advertised at all: queued, waits for one
    two = [info("g", [0, 1], live=False), info("c", [])]
    assert refusal(2, two) is None and refusal(0, two) is None  # a silent worker counts: it may come back
    message = refusal(4, two)
    assert message is not None and "largest GPU worker advertised has 2" in message and "at most 2" in message
    assert "GANSERVE_GPUS_PER_WORKER=4" in message
    message = refusal(1, [info("c", [])])
    assert message is not None and "Only CPU workers" in message and "resources.gpus 0" in message
    message = refusal(0, [info("g", [0])])
    assert message is not None and "No CPU worker" in message and "GANSERVE_DEVICES empty" in message


def test_what_a_queued_job_waits_for() -> None:
    workers = [info("g2", [0, 1], live=False), info("g1", [2]), info("c", [])]
    assert waiting_for(1, workers) is None and waiting_for(0, workers) is None
    assert waiting_for(2, workers) == (
        "no live worker can take it: it waits for a gpu worker with ≥2 devices (1 such worker(s) advertised "
        "but silent); GET /workers lists the workers"
    )
    assert waiting_for(0, []) == "no live worker can take it: it waits for a cpu worker; GET /workers lists the workers"
    assert waiting_for(None, workers) is None  # any worker: one is live
    assert waiting_for(None, [info("g", [0], live=False)]) == (
        "no live worker can take it: it waits for any worker (1 such worker(s) advertised but silent); "
        "GET /workers lists the workers"
    )
