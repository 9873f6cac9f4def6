"""The training task under faults, each really injected: a worker that dies mid-job (the next one resumes),
heartbeats through long phases, duplicate messages, a worker that was replaced, and failures (diverged losses, a
missing dataset, a full disk, out of memory) that must end `failed` with a readable reason, never `running`."""

import errno
import math
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

import training.checkpoint
import training.data
import training.loop
import training.run_state
from core import db as tables
from core.db import connect
from core.jobs import JobRecord, JobStore
from core.model_versions import ModelVersions
from core.records import JobStatus, now
from core.settings import Settings
from worker import tasks

STEPS_PER_EPOCH = 4  # 64 images, batch 16


class WorkerKilled(BaseException):
    """Stands for SIGKILL: not an Exception, so the task records nothing, as a killed process records nothing."""


def run_task(job_id: str, worker: str = "host:1", monkeypatch: pytest.MonkeyPatch | None = None) -> dict:
    if monkeypatch is not None:
        monkeypatch.setattr(tasks, "worker_id", lambda: worker)
    return tasks.train(job_id)


def kill_at_resume_save(monkeypatch: pytest.MonkeyPatch, epoch: int, *, after_saving: bool) -> None:
    """The worker dies at the end of `epoch`: just after its checkpoint is written, or just before."""
    real_save = training.run_state.save

    def save(out_dir, s, **kwargs):
        if kwargs["epoch"] == epoch and not after_saving:
            raise WorkerKilled
        stem = real_save(out_dir, s, **kwargs)
        if kwargs["epoch"] == epoch:
            raise WorkerKilled
        return stem

    monkeypatch.setattr(training.run_state, "save", save)


def heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("heartbeat-")]


def requeue(store: JobStore, job_id: str) -> None:
    """What the reaper does once the dead worker's heartbeat is stale."""
    store.update(job_id, status=JobStatus.queued, started_at=None)


def history_epochs(record: JobRecord) -> list[int]:
    return [e.epoch for e in record.history]


@pytest.mark.parametrize("after_saving", [True, False], ids=["killed-after-its-checkpoint", "killed-before-it"])
def test_a_killed_job_resumes_from_its_last_epoch(
    after_saving: bool, submit, store: JobStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = submit()
    assert run_task(straight.id, monkeypatch=monkeypatch)["status"] == "succeeded"

    job = submit()
    with monkeypatch.context() as m:
        kill_at_resume_save(m, epoch=2, after_saving=after_saving)
        with pytest.raises(WorkerKilled):
            run_task(job.id, "host:1", m)
    died = store.get(job.id)
    assert died.status == JobStatus.running and died.attempts == 1 and died.worker == "host:1"
    assert history_epochs(died) == [1, 2]  # epoch 2 was reported before its checkpoint
    assert not heartbeat_threads()

    requeue(store, job.id)
    assert run_task(job.id, "host:2", monkeypatch)["status"] == "succeeded"
    done = store.get(job.id)
    resumed_epoch = 2 if after_saving else 1
    assert done.status == JobStatus.succeeded and done.attempts == 2 and done.worker == "host:2"
    assert done.resumed_from_step == resumed_epoch * STEPS_PER_EPOCH
    assert history_epochs(done) == [1, 2, 3, 4]  # no gap, no duplicate
    # the same numbers as a job that never stopped
    assert [e.losses for e in done.history] == [e.losses for e in store.get(straight.id).history]
    assert done.metrics == store.get(straight.id).metrics
    with store.db.begin() as conn:
        claims = conn.execute(select(tables.job_attempts).where(tables.job_attempts.c.job_id == job.id)).all()
    assert [(c.attempt, c.worker) for c in claims] == [(1, "host:1"), (2, "host:2")]


def test_heartbeats_continue_through_a_long_phase(
    submit, store: JobStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading the data takes a second here (injected): the record's heartbeat keeps moving all the same."""
    job = submit(epochs=1)
    beats: list[object] = []
    real_load = training.loop.load_to_device

    def slow_load(*args, **kwargs):
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            record = store.get(job.id)
            assert record.status == JobStatus.running and record.worker == "host:7"
            beats.append(record.heartbeat_at)
            time.sleep(0.05)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(training.loop, "load_to_device", slow_load)
    assert run_task(job.id, "host:7", monkeypatch)["status"] == "succeeded"
    assert len(set(beats)) >= 5, beats
    assert not heartbeat_threads()


def test_a_duplicate_message_for_a_job_running_elsewhere_is_dropped(
    submit, store: JobStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = submit(epochs=1)
    store.update(job.id, status=JobStatus.running, worker="other:1", heartbeat_at=now(), attempts=1)
    assert run_task(job.id, "host:1", monkeypatch)["status"] == "running-elsewhere"
    record = store.get(job.id)
    assert (record.status, record.worker, record.attempts, record.progress) == (JobStatus.running, "other:1", 1, None)

    # Its heartbeat gone stale: the job's worker is dead, so this message takes the job over.
    store.update(job.id, heartbeat_at=now() - timedelta(seconds=settings.stale_after_s + 1))
    assert run_task(job.id, "host:1", monkeypatch)["status"] == "succeeded"
    assert store.get(job.id).attempts == 2


def test_each_attempt_is_claimed_once(submit, store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    job = submit(epochs=1)
    assert store.claim(job.id, 1, "host:0") and not store.claim(job.id, 1, "host:1")
    # Another worker claimed attempt 1 an instant ago and has not marked the job running yet.
    assert run_task(job.id, "host:1", monkeypatch)["status"] == "running-elsewhere"
    assert store.get(job.id).status == JobStatus.queued


def test_a_replaced_worker_stops_without_writing(
    submit, store: JobStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This worker stalled; the reaper re-queued its job and another worker took it. When it wakes up it sees
    that, stops at its next step and leaves the record (and the model) alone."""
    job = submit(epochs=3)
    real_load = training.loop.load_to_device

    def load_then_get_replaced(*args, **kwargs):
        data = real_load(*args, **kwargs)
        store.update(job.id, worker="other:2", heartbeat_at=now(), attempts=2)
        time.sleep(10 * settings.heartbeat_s)  # the heartbeat thread notices
        return data

    monkeypatch.setattr(training.loop, "load_to_device", load_then_get_replaced)
    assert run_task(job.id, "host:1", monkeypatch)["status"] == "superseded"
    record = store.get(job.id)
    assert (record.status, record.worker, record.attempts, record.history) == (JobStatus.running, "other:2", 2, [])
    assert ModelVersions(connect(settings.effective_database_url)).names() == []


def run_folder(settings: Settings, job_id: str) -> dict[str, tuple[int, int]]:
    """Every file of the job's run folder (here storage itself): its path, size and modification time."""
    root = settings.jobs_dir / job_id
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_a_worker_that_wakes_after_its_job_moved_on_writes_and_deletes_nothing(
    submit, store: JobStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This worker was paused (SIGSTOP) past the reaper's patience; another worker took the job over and wrote a
    newer stand-in. This one wakes up mid-epoch, before its heartbeat thread runs again: at the epoch's end it must
    not write its stale state, nor prune the run's stand-ins (one of them the other worker's), nor touch the record
    or publish. Checked at each write, not only by the heartbeat."""
    job = submit(epochs=4, sample_every=10)  # epochs 1–3 end in stand-ins, which each save prunes
    monkeypatch.setattr(tasks.Heartbeat, "_beat", lambda self: None)  # its thread does not run (stands for paused)
    seen: dict[str, dict[str, tuple[int, int]]] = {}
    real_d_step = training.loop.d_step

    def d_step(s, real, labels, step):
        if step == 2 * STEPS_PER_EPOCH and "taken over" not in seen:  # the first step of epoch 3
            store.update(job.id, worker="other:2", heartbeat_at=now(), attempts=2)  # the other worker's claim
            checkpoints = settings.jobs_dir / job.id / "checkpoints"
            for suffix in (".safetensors", ".json"):  # ... and its newer stand-in, as it would write
                (checkpoints / f"epoch-0007{suffix}").write_bytes((checkpoints / f"epoch-0002{suffix}").read_bytes())
            seen["taken over"] = run_folder(settings, job.id)
        return real_d_step(s, real, labels, step)

    monkeypatch.setattr(training.loop, "d_step", d_step)
    assert run_task(job.id, "host:1", monkeypatch)["status"] == "superseded"
    assert "epoch-0002.json" in "".join(seen["taken over"])  # the stand-in its epoch-3 save would have pruned
    assert run_folder(settings, job.id) == seen["taken over"]  # nothing written, removed or rewritten since
    record = store.get(job.id)
    assert (record.status, record.worker, record.attempts) == (JobStatus.running, "other:2", 2)
    assert history_epochs(record) == [1, 2]
    assert ModelVersions(connect(settings.effective_database_url)).names() == []


# --- failures: `failed`, with a reason a user can act on ------------------------------------------------


def nan_losses(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    real_g_step = training.loop.g_step
    monkeypatch.setattr(training.loop, "g_step", lambda s, step: real_g_step(s, step) * (math.nan if step >= 5 else 1))


def missing_dataset(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    def offline(root: Path) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(training.data, "_download_mnist", offline)
    monkeypatch.setattr(settings, "data_root", settings.checkpoint_dir.parent / "empty-data")


def disk_full(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    real_write = training.checkpoint.atomic_write_bytes

    def write(path: Path, data: bytes) -> None:
        if path.suffix == ".safetensors":  # the checkpoint's weights; the job record still fits
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(training.checkpoint, "atomic_write_bytes", write)


def cuda_out_of_memory(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    def d_step(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(training.loop, "d_step", d_step)


def host_out_of_memory(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    def write_samples(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(training.loop, "write_samples", write_samples)


FAULTS = {
    "nan-losses": (nan_losses, "NonFiniteLossError: the run diverged: g_loss = nan by step"),
    "missing-dataset": (missing_dataset, "DatasetError: mnist not found"),
    "disk-full": (disk_full, "disk full: no space left on the volume while writing"),
    "cuda-out-of-memory": (cuda_out_of_memory, "out of memory (OutOfMemoryError: CUDA out of memory"),
    "host-out-of-memory": (host_out_of_memory, "out of memory (MemoryError); use a smaller batch_size"),
}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_a_failure_ends_failed_with_a_readable_reason(
    fault: str, submit, store: JobStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    inject, reason = FAULTS[fault]
    job = submit(epochs=3)
    inject(monkeypatch, settings)
    assert run_task(job.id, "host:1", monkeypatch)["status"] == "failed"
    record = store.get(job.id)
    assert record.status == JobStatus.failed and record.finished_at is not None and record.model is None
    assert record.error is not None and record.error.startswith(reason), record.error
    assert not heartbeat_threads()
    if fault == "nan-losses":  # NaN from step 6, in epoch 2: stopped there, nothing diverged was checkpointed
        assert "by step 8 (epoch 2)" in record.error
        assert history_epochs(record) == [1] and [c[-4:] for c in record.checkpoints] == ["0001"]
    if fault == "disk-full":
        assert "epoch-0001.safetensors" in record.error


def test_a_job_cancelled_while_running_keeps_its_last_checkpoint(
    submit, store: JobStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = submit(epochs=50)
    real_save = training.run_state.save

    def save_then_cancel(out_dir, s, **kwargs):
        if kwargs["epoch"] == 2:
            store.request_cancel(job.id)
        return real_save(out_dir, s, **kwargs)

    monkeypatch.setattr(training.run_state, "save", save_then_cancel)
    assert run_task(job.id, "host:1", monkeypatch)["status"] == "cancelled"
    record = store.get(job.id)
    assert record.status == JobStatus.cancelled and record.progress is not None
    assert record.progress.step == 2 * STEPS_PER_EPOCH  # stopped at the first step after the request
    assert history_epochs(record) == [1, 2]
    assert record.checkpoints == [
        "jobs/" + job.id + "/checkpoints/epoch-0001",
        "jobs/" + job.id + "/checkpoints/epoch-0002",
    ]
    for stem in record.checkpoints:
        training.checkpoint.load(settings.checkpoint_dir / stem)  # intact


def test_a_database_outage_pauses_a_running_job_and_loses_nothing(
    submit, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database stops answering for a while during a job (its writes and the cancel check fail): the job
    waits, then goes on, and ends with every epoch in its history, as if nothing had happened."""
    from sqlalchemy.exc import OperationalError

    straight = submit(epochs=3)
    assert run_task(straight.id, monkeypatch=monkeypatch)["status"] == "succeeded"

    job = submit(epochs=3)
    outage = {"left": 0, "failed": 0}
    real_update, real_cancel = JobStore.update, JobStore.cancel_requested

    def down_now() -> None:
        if outage["left"] > 0:
            outage["left"] -= 1
            outage["failed"] += 1
            raise OperationalError("UPDATE jobs …", {}, ConnectionRefusedError("the database is down"))

    def update(self, record_id, conn=None, apply=None, **changes):
        if apply is not None:  # the worker's writes while it runs
            down_now()
        return real_update(self, record_id, conn, apply, **changes)

    def cancel_requested(self, job_id):
        down_now()
        return real_cancel(self, job_id)

    def save(out_dir, s, **kwargs):
        if kwargs["epoch"] == 1:
            outage["left"] = 5  # from the end of epoch 1: five database calls fail
        return training.run_state.save.__wrapped__(out_dir, s, **kwargs)

    save.__wrapped__ = training.run_state.save  # type: ignore[attr-defined]
    monkeypatch.setattr(JobStore, "update", update)
    monkeypatch.setattr(JobStore, "cancel_requested", cancel_requested)
    monkeypatch.setattr(training.run_state, "save", save)
    monkeypatch.setattr(tasks, "PATIENCE_MAX_S", 0.01)
    monkeypatch.setattr(tasks.time, "sleep", lambda s: None)
    assert run_task(job.id, "host:1", monkeypatch)["status"] == "succeeded"
    assert outage["failed"] == 5
    done = store.get(job.id)
    assert history_epochs(done) == [1, 2, 3]
    assert [e.losses for e in done.history] == [e.losses for e in store.get(straight.id).history]
