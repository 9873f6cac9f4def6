"""A job's attempt in a process of its own (worker/job_process.py), as a worker runs it: the training task here
starts a real spawned child, which reads its settings from the environment. A hang is a real one: the dataset's
folder's image is a FIFO nobody writes, so the child blocks inside the training code (in `open`) while its heartbeat
thread beats on, as it did for a step that hung."""

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery.exceptions import Reject
from worker_support import TINY, write_mnist

from core.db import connect
from core.jobs import JobRecord, JobStore
from core.records import JobStatus
from core.settings import Settings
from core.train_config import TrainConfig
from worker import job_process, tasks

pytestmark = pytest.mark.slow  # each test starts a Python with torch


@pytest.fixture
def hosted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Settings]]:
    """`hosted(hang=…)`: the worker's settings in its environment (the child reads them there), on a volume of this
    test's own; with `hang`, the image folder `stuck` holds a FIFO for an image."""

    def make(*, hang: bool, **overrides: str) -> Settings:
        data = write_mnist(tmp_path / "data")
        if hang:
            (data / "stuck").mkdir()
            os.mkfifo(data / "stuck" / "000.png")
        env = {
            "GANSERVE_CHECKPOINT_DIR": str(tmp_path / "volume"),
            "GANSERVE_DATA_ROOT": str(data),
            "GANSERVE_DEVICE": "cpu",
            "GANSERVE_HEARTBEAT_S": "0.2",
            "GANSERVE_STALL_AFTER_S": "3",
            "GANSERVE_STOP_GRACE_S": "2",
            "GANSERVE_MAX_ATTEMPTS": "2",
            **overrides,
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = Settings()
        monkeypatch.setattr(tasks, "get_settings", lambda: settings)
        monkeypatch.setattr(job_process, "get_settings", lambda: settings)
        return settings

    yield make


def submit(settings: Settings, **config: object) -> tuple[JobStore, JobRecord]:
    store = JobStore(connect(settings.effective_database_url))
    fields = {"model_name": "watched", **TINY, **config}
    return store, store.create(config=TrainConfig.model_validate(fields))


HANGS = {"dataset": "image-folder", "image_folder": "stuck"}


def test_a_hung_job_is_killed_and_requeued_then_failed_on_its_last_attempt(hosted) -> None:
    settings = hosted(hang=True)
    store, job = submit(settings, **HANGS)
    with pytest.raises(Reject):  # attempt 1: back to the queue
        tasks.train(job.id)
    record = store.get(job.id)
    assert record.status == JobStatus.queued and record.attempts == 1, record
    assert record.error is not None and "attempt 1: stalled: no training step or progress for 3 s" in record.error

    assert tasks.train(job.id)["status"] == "failed"  # attempt 2 of 2
    record = store.get(job.id)
    assert record.status == JobStatus.failed and record.attempts == 2, record
    assert "stalled" in record.error and "on its last attempt (2 of 2)" in record.error, record.error


def test_a_hung_job_is_cancelled_within_the_grace(hosted) -> None:
    """DELETE /train/{id} of a job hung in its training code: it ends `cancelled` GANSERVE_STOP_GRACE_S after,
    not whenever the hang ends (never, here)."""
    settings = hosted(hang=True, GANSERVE_STALL_AFTER_S="600")  # only the cancel can end it
    store, job = submit(settings, **HANGS)
    outcome: dict = {}
    task = threading.Thread(target=lambda: outcome.update(tasks.train(job.id)))
    task.start()
    deadline = time.monotonic() + 60
    while store.get(job.id).status != JobStatus.running:  # its process started, marked it, and hangs in open()
        assert time.monotonic() < deadline and task.is_alive(), store.get(job.id)
        time.sleep(0.1)
    time.sleep(1)
    store.request_cancel(job.id)  # what DELETE /train/{id} does to a running job
    asked = time.monotonic()
    task.join(30)
    assert not task.is_alive() and outcome["status"] == "cancelled", outcome
    assert time.monotonic() - asked < 2 + 5  # the grace, and a poll or two
    assert store.get(job.id).status == JobStatus.cancelled


def test_a_job_past_its_max_runtime_stops_and_fails_keeping_its_checkpoints(hosted) -> None:
    settings = hosted(hang=False, GANSERVE_STALL_AFTER_S="120")  # starting up on a busy machine is no stall
    store, job = submit(settings, epochs=10_000, sample_every=5, max_runtime_s=12)  # time to train a little
    assert tasks.train(job.id)["status"] == "failed"
    record = store.get(job.id)
    assert record.status == JobStatus.failed and "stopped after its max_runtime_s (12 s)" in record.error, record
    assert record.checkpoints and record.history, record  # it trained, and keeps what it wrote


def test_a_process_killed_before_it_marked_its_attempt_leaves_the_next_one_claimable(hosted) -> None:
    """Stalled while still starting (0.5 s: before it has even imported torch): the job is queued again with its
    attempt counted, so the redelivered message claims attempt 2 instead of being dropped as a duplicate of 1."""
    settings = hosted(hang=True, GANSERVE_STALL_AFTER_S="0.5", GANSERVE_MAX_ATTEMPTS="3")
    store, job = submit(settings, **HANGS)
    with pytest.raises(Reject):
        tasks.train(job.id)
    record = store.get(job.id)
    assert (record.status, record.attempts, record.started_at) == (JobStatus.queued, 1, None), record
    with pytest.raises(Reject):
        tasks.train(job.id)  # attempt 2, claimed
    assert store.get(job.id).attempts == 2


# --- several processes: a data-parallel world of 2 ranks (gloo), as a job asking for 2 GPUs runs on a GPU worker ---


def run_in_thread(target: Callable[[], dict]) -> tuple[threading.Thread, dict]:
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(target()))
    thread.start()
    return thread, outcome


def wait_for_epoch(store: JobStore, job_id: str, epoch: int, thread: threading.Thread) -> JobRecord:
    deadline = time.monotonic() + 120
    while True:
        record = store.get(job_id)
        if record.progress is not None and record.progress.epoch >= epoch and record.checkpoints:
            return record
        assert time.monotonic() < deadline and thread.is_alive(), record
        time.sleep(0.1)


def ranks_of(job_id: str) -> dict[int, multiprocessing.Process]:
    return {
        int(p.name.rsplit("rank", 1)[1]): p
        for p in multiprocessing.active_children()
        if p.name.startswith(f"ganserve-job-{job_id[:12]}-rank")
    }


def test_a_two_process_job_trains_publishes_and_only_rank_0_records(hosted) -> None:
    settings = hosted(hang=False, GANSERVE_STALL_AFTER_S="120")
    store, job = submit(settings, epochs=3)
    outcome = job_process.supervise(store, job.id, 1, "host:1", None, ranks=2)
    assert outcome["status"] == "succeeded", outcome
    record = store.get(job.id)
    assert record.status == JobStatus.succeeded and record.worker == "host:1" and record.attempts == 1, record
    assert [e.epoch for e in record.history] == [1, 2, 3]  # one report per epoch: rank 0's alone
    assert [e.step for e in record.history] == [4, 8, 12]  # 64 images at a global batch of 16, as on one process
    assert record.model is not None and record.model.version == 1


def test_a_rank_killed_mid_job_ends_the_attempt_and_the_next_resumes_from_its_checkpoint(hosted) -> None:
    settings = hosted(hang=False, GANSERVE_STALL_AFTER_S="120", GANSERVE_MAX_ATTEMPTS="3")
    store, job = submit(settings, epochs=400, sample_every=100)
    thread, outcome = run_in_thread(lambda: job_process.supervise(store, job.id, 1, "host:1", None, ranks=2))
    seen = wait_for_epoch(store, job.id, 3, thread)
    ranks = ranks_of(job.id)
    assert sorted(ranks) == [0, 1]
    os.kill(ranks[1].pid, signal.SIGKILL)  # one rank lost: rank 0 is left alone in a collective
    thread.join(60)
    assert not thread.is_alive() and outcome["status"] == job_process.REQUEUE, outcome
    assert not ranks_of(job.id)  # rank 0 is gone too
    record = store.get(job.id)
    assert record.status == JobStatus.queued and record.attempts == 1, record
    assert "attempt 1: its process died without finishing (killed by SIGKILL" in record.error, record.error

    # The next attempt (two processes again) resumes from the last checkpoint rank 0 wrote, not from step 0.
    assert job_process.supervise(store, job.id, 2, "host:2", None, ranks=2)["status"] == "succeeded"
    record = store.get(job.id)
    assert record.status == JobStatus.succeeded and record.attempts == 2, record
    assert record.resumed_from_step is not None and record.resumed_from_step >= 4 * seen.progress.epoch, record
    assert [e.epoch for e in record.history] == list(range(1, record.config.epochs + 1))


def test_a_cancelled_two_process_job_stops_both_ranks(hosted) -> None:
    # A grace long enough for two ranks to stop and answer on a busy machine: this is no hung job.
    settings = hosted(hang=False, GANSERVE_STALL_AFTER_S="120", GANSERVE_STOP_GRACE_S="30")
    store, job = submit(settings, epochs=400, sample_every=100)
    thread, outcome = run_in_thread(lambda: job_process.supervise(store, job.id, 1, "host:1", None, ranks=2))
    wait_for_epoch(store, job.id, 2, thread)
    ranks = ranks_of(job.id)
    store.request_cancel(job.id)
    thread.join(60)
    assert not thread.is_alive() and outcome["status"] == "cancelled", outcome
    assert store.get(job.id).status == JobStatus.cancelled
    assert [ranks[r].exitcode for r in (0, 1)] == [0, 0]  # both stopped on their own, at the same step
