"""The worker's tasks: run a training job, or an evaluation job, described by its record on the volume.

Thin on purpose: `train` reads the job record, calls `training.loop.train`, mirrors progress into the record,
honours cancel requests and publishes the result; `evaluate` measures a published model
(`training.evaluation`) and files the figures under it. The records (core/) are the results; Celery's result
backend is not used.

The run folder, `<GANSERVE_CHECKPOINT_DIR>/jobs/<id>/`, is this worker's copy of the run in object storage
(worker/run_files.py): what the loop writes there is uploaded as it is written, and a job starting here fetches
its newest checkpoint from storage first.

Faults. A training job resumes from its run's newest checkpoint (`training.run_state`), its history cut back
to that epoch, so a job restarted after its worker died loses at most the epochs since. While it runs, a
thread writes `heartbeat_at` into its record every `GANSERVE_HEARTBEAT_S`, so the API's reaper
(service/background/reaper.py) can re-queue a job whose heartbeat stops. Starting is idempotent: a finished
job is not run again, one running with a fresh heartbeat on another worker is left to it, and each attempt is
claimed by exactly one worker (`JobStore.claim`). A failure (a diverged loss, a missing dataset, a full disk,
out of memory …) ends the job `failed` with a readable reason, never `running`.

`ganserve worker` runs it with `--pool solo --concurrency 1`: one job at a time per worker (and per GPU). Each
attempt runs in a spawned child process that the worker watches (worker/job_process.py): CUDA is initialised
there, and a hang, a leak or a sticky CUDA error ends with it, while a cancel, a shutdown, `max_runtime_s` or a
stall can always end the job.
"""

import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery.exceptions import Reject
from sqlalchemy import select

from core import db as tables
from core.db import connect
from core.evaluations import EvaluationRecord, EvaluationStore
from core.jobs import EpochRecord, JobRecord, JobStore, Progress, PublishedModel
from core.model_versions import ModelVersions, local_stem
from core.records import FINISHED, JobStatus, now
from core.settings import Settings, get_settings
from core.storage import BlobCache, BlobError
from core.tasks import EVALUATE_TASK, TRAIN_TASK
from worker.app import celery_app
from worker.datasets import dataset_file
from worker.job_process import (
    DATABASE_DOWN,
    REQUEUE,
    Signals,
    describe_exit,
    run_evaluation_in_child,
    supervise,
    worker_stopping,
)
from worker.publishing import publish_job_model
from worker.run_files import RunFiles, storage_of, store_file

if TYPE_CHECKING:
    from training.distributed import World

log = logging.getLogger(__name__)


def worker_id() -> str:
    """Who runs a job, as its record says: `host:pid` (a restarted worker is another one)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def failure_reason(e: BaseException) -> str:
    """What the record says when a job fails: what happened and, where there is one, what to do."""
    import torch

    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        where = f" while writing {e.filename}" if e.filename else ""
        return f"disk full: no space left on the volume{where}; free space and submit the job again ({e})"
    if isinstance(e, MemoryError | torch.OutOfMemoryError):
        what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return f"out of memory ({what}); use a smaller batch_size or model, or a worker with more memory"
    return f"{type(e).__name__}: {e}"


class Heartbeat:
    """The running job's record, written by this worker only while it is still this worker's.

    A daemon thread writes `heartbeat_at` every `interval_s`, so data loading, evaluation and checkpoint
    writing count as alive like training steps do. Every write (the thread's and the progress reports')
    goes through `update` under one lock, and first checks that the record still says `running` on this
    worker: if the reaper re-queued the job after a stall, or another worker took it over, `lost` turns true,
    nothing more is written, and the training stops at its next step."""

    def __init__(self, store: JobStore, job_id: str, worker: str, interval_s: float):
        self.store, self.job_id, self.worker, self.interval_s = store, job_id, worker, interval_s
        self.lost = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def update(self, changes: Callable[[JobRecord], dict[str, Any]] | None = None) -> None:
        """Write `changes(record as it is)` and the heartbeat, in one transaction with the row locked, if the job
        is still this worker's. While the database does not answer, the training waits here (nothing it reports
        is lost), unless the worker is shutting down."""
        with self._lock:
            if not self.lost:
                patiently(f"job {self.job_id}: its record", self._write, changes)

    def still_ours(self) -> bool:
        """Read the record now (not the last beat's news) and say whether the job is still this worker's; once it
        is not, `lost` turns true. The fence of every file the run writes or removes: a worker paused past the
        reaper's patience (SIGSTOP, a swapped-out VM) may wake up mid-epoch, before its heartbeat thread runs."""
        with self._lock:
            if self.lost:
                return False
            record: JobRecord | None = None

            def read() -> None:
                nonlocal record
                record = self.store.get(self.job_id)

            patiently(f"job {self.job_id}: its record", read)
            assert record is not None
            if record.status != JobStatus.running or record.worker != self.worker:
                self.lost = True
                log.warning(
                    "job %s is no longer this worker's (%s, worker %s); it stops without writing",
                    self.job_id,
                    record.status.value,
                    record.worker,
                )
            return not self.lost

    def _write(self, changes: Callable[[JobRecord], dict[str, Any]] | None) -> None:
        def ours(current: JobRecord) -> dict[str, Any]:
            if current.status != JobStatus.running or current.worker != self.worker:
                raise _NotOurs(f"{current.status.value}, worker {current.worker}")
            return {"heartbeat_at": now(), **(changes(current) if changes else {})}

        try:
            self.store.update(self.job_id, apply=ours)
        except _NotOurs as e:
            self.lost = True
            log.warning("job %s is no longer this worker's (%s); it stops without writing", self.job_id, e)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.update()
            except Exception:  # keep trying; the reaper judges silence, not us
                log.exception("job %s: heartbeat not written", self.job_id)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class _NotOurs(Exception):
    """Raised inside an update (so nothing is written) when the job has gone to another worker or state."""


PATIENCE_MAX_S = 30.0


def patiently(what: str, write: Callable[..., None], *args: Any) -> None:
    """`write(*args)`, retried with growing waits (1, 2, 4 … 30 s) while the database does not answer: a running
    job pauses rather than fails or forgets what it did. Gives up (raises) when the worker is shutting down."""
    wait = 1.0
    while True:
        try:
            write(*args)
            return
        except DATABASE_DOWN as e:
            if worker_stopping():
                raise
            log.warning("%s not written, the database does not answer (%s); trying again in %.0f s", what, e, wait)
            time.sleep(wait)
            wait = min(PATIENCE_MAX_S, 2 * wait)


def owner_of(store: JobStore, job_id: str) -> str | None:
    """The API key's name that submitted the job (its published versions are that key's)."""
    with store.db.begin() as conn:
        return conn.execute(select(tables.jobs.c.owner).where(tables.jobs.c.id == job_id)).scalar()


def running_elsewhere(record: JobRecord, settings: Settings, me: str) -> bool:
    """The job is `running` on another worker whose heartbeat is fresh: a duplicate message must not start it."""
    if record.status != JobStatus.running or record.worker == me or record.heartbeat_at is None:
        return False
    return (now() - record.heartbeat_at).total_seconds() < settings.stale_after_s


@celery_app.task(name=TRAIN_TASK, bind=True)
def train(self, job_id: str) -> dict[str, object]:
    settings = get_settings()
    store = JobStore(connect(settings.effective_database_url))
    try:
        record = store.get(job_id)
    except KeyError:
        log.error("job %s: no record of it in the database; nothing to do", job_id)
        return {"job": job_id, "status": "missing"}

    # Idempotent start: a redelivered message for a finished job does nothing, one for a job that another
    # worker is running (fresh heartbeat) is dropped, and a job cancelled while it was queued never starts.
    me = worker_id()
    if record.status in FINISHED:
        log.info("job %s is already %s; not starting it again", job_id, record.status)
        return {"job": job_id, "status": str(record.status)}
    if running_elsewhere(record, settings, me):
        log.warning("job %s is running on %s; this duplicate is dropped", job_id, record.worker)
        return {"job": job_id, "status": "running-elsewhere"}
    if store.cancel_requested(job_id):
        store.update(job_id, status=JobStatus.cancelled, finished_at=now())
        log.info("job %s was cancelled before it started", job_id)
        return {"job": job_id, "status": JobStatus.cancelled.value}
    attempt = record.attempts + 1
    if not store.claim(job_id, attempt, me):
        log.warning(
            "job %s: attempt %d was already taken by another worker; this duplicate is dropped", job_id, attempt
        )
        return {"job": job_id, "status": "running-elsewhere"}

    # A job asking for several GPUs trains on one process per GPU (training/distributed.py), all watched together.
    ranks = max(1, record.resources.gpus or 1) if record.resources is not None else 1
    try:
        outcome = run_attempt_process(store, job_id, attempt, me, record.config.max_runtime_s, ranks)
    except Exception as e:  # the job's process could not be started or watched: the job must not stay queued
        log.exception("job %s: attempt %d could not be run", job_id, attempt)
        store.update(job_id, status=JobStatus.failed, error=failure_reason(e), finished_at=now())
        outcome = {"job": job_id, "status": JobStatus.failed.value}
    finally:
        _drop_run_folder(store, job_id, me)
    if outcome.get("status") == REQUEUE:
        raise Reject("the job goes back to the queue", requeue=True)
    return outcome


# How an attempt, and an evaluation, run: in a process of their own, watched (worker/job_process.py). Tests that
# patch the training code in this process put `run_attempt` / `run_evaluation` themselves here.
run_attempt_process = supervise
run_evaluation_process = run_evaluation_in_child


def run_attempt(job_id: str, attempt: int, me: str, signals: Signals) -> dict[str, object]:
    """The job's body, in the job's process (one rank of it when the watch started several): train, record,
    publish. A failure ends the job `failed`, once; on several ranks the watch decides (the job's failure, or the
    consequence of a rank lost)."""
    from training import distributed

    settings = get_settings()
    store = JobStore(connect(settings.effective_database_url))
    world = distributed.world_from_env()
    try:
        distributed.init(settings.device)
        if world.is_main:
            outcome = _run(store, job_id, attempt, me, signals, world)
        else:
            outcome = _run_rank(store, job_id, settings, world)
        if world.distributed:
            import torch.distributed as dist

            dist.barrier()  # every rank done before any leaves the group (one leaving first makes the others abort)
        return outcome
    except Exception as e:
        if world.distributed:  # told to the watch, which alone knows whether another rank died first
            log.exception("job %s: rank %d failed", job_id, world.rank)
            return {"job": job_id, "status": "error", "rank": world.rank, "error": failure_reason(e), "at": time.time()}
        # Not re-raised: a job that fails fails once, with a readable reason in its record; Celery must not
        # retry it (or redeliver it forever with acks_late).
        log.exception("job %s failed", job_id)
        try:
            if running_elsewhere(store.get(job_id), settings, me):  # taken over meanwhile: not ours to end
                return {"job": job_id, "status": "superseded"}
            store.update(job_id, status=JobStatus.failed, error=failure_reason(e), finished_at=now())
        except Exception:
            log.exception("job %s: could not record the failure", job_id)
        return {"job": job_id, "status": JobStatus.failed.value}
    finally:
        distributed.teardown()


def _drop_run_folder(store: JobStore, job_id: str, me: str) -> None:
    """This worker's copy of the run, once the job ended here and storage holds the run elsewhere (a job that
    goes on, here or on another worker, keeps it)."""
    try:
        record = store.get(job_id)
    except Exception:  # the database does not answer: a folder left behind is only disk space
        log.warning("job %s: its run folder is kept, the record cannot be read", job_id)
        return
    if record.status in FINISHED and record.worker == me:
        RunFiles.of(get_settings(), job_id).discard()


def _run_rank(store: JobStore, job_id: str, settings: Settings, world: "World") -> dict[str, object]:
    """A rank other than 0: trains its shard of every batch and writes nothing (rank 0 records, writes, and
    decides for all when to stop)."""
    import torch.distributed as dist

    from training import run_state
    from training.loop import train

    dist.barrier()  # rank 0 has brought the run's newest checkpoint back and marked the job running
    record = store.get(job_id)
    out_dir = settings.jobs_dir / job_id
    point = run_state.latest(out_dir)
    result = train(
        record.config,
        out_dir,
        data_root=settings.data_root,
        device=settings.device,
        resume_from=None if point is None else point.stem,
        dataset_file=dataset_file(settings, record),
        world=world,
    )
    return {"job": job_id, "rank": world.rank, "status": result.status}


def _run(store: JobStore, job_id: str, attempt: int, me: str, signals: Signals, world: "World") -> dict[str, object]:
    # Imported when a job runs: the worker starts, and answers the broker, without waiting for torch.
    from training import run_state
    from training.loop import TrainProgress, train

    settings = get_settings()
    out_dir = settings.jobs_dir / job_id
    # A restarted job continues from its newest checkpoint (in storage: fetched into the run folder first); its
    # history keeps the epochs up to that one (the loop reports them again from there, so there is neither a gap
    # nor a duplicate).
    run = RunFiles.of(settings, job_id)
    run.bring_back()
    point = run_state.latest(out_dir)
    history = [e for e in store.get(job_id).history if point is not None and e.epoch <= point.epoch]
    record = store.update(
        job_id,
        status=JobStatus.running,
        started_at=now(),
        error=None,
        history=history,
        attempts=attempt,
        worker=me,
        heartbeat_at=now(),
        resumed_from_step=None if point is None else point.step,
    )
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()  # the other ranks may now read the checkpoint brought back
    config = record.config
    log.info(
        "job %s: training %r on %s (device %s), attempt %d, %s",
        job_id,
        config.model_name,
        config.dataset,
        settings.device,
        attempt,
        "from step 0" if point is None else f"resuming after epoch {point.epoch} (step {point.step})",
    )

    def changes_for(p: TrainProgress, current: JobRecord) -> dict[str, object]:
        changes: dict[str, object] = {
            "progress": Progress(
                epoch=p.epoch,
                epochs=p.epochs,
                step=p.step,
                total_steps=p.total_steps,
                fraction=min(1.0, max(0.0, p.step / p.total_steps)) if p.total_steps else 0.0,
                images_per_sec=p.images_per_sec,
                eta_seconds=p.eta_seconds,
            ),
            "metrics": dict(p.losses),
        }
        if p.checkpoint is not None and (key := run.key(p.checkpoint)) not in current.checkpoints:
            changes["checkpoints"] = [*current.checkpoints, key]
        if p.samples is not None and (key := run.key(p.samples)) not in current.samples:
            changes["samples"] = [*current.samples, key]
        if p.epoch_end:
            entry = EpochRecord(epoch=p.epoch, step=p.step, losses=dict(p.losses), evaluation=p.evaluation)
            changes["history"] = [*current.history, entry]
            changes["evaluation_skipped"] = p.evaluation_skipped
        return changes

    def count_storage() -> None:
        """The run's bytes in storage, for its owner's quota; a count that fails is logged, never the job's end."""
        try:
            store.set_storage_bytes(job_id, run.stored_bytes())
        except (BlobError, *DATABASE_DOWN) as e:
            log.warning("job %s: its storage use is not counted now: %s", job_id, e)

    def files(written: list[Path], removed: list[Path], heartbeat: Heartbeat) -> None:
        run.files_fn(written, [])
        # The record names the checkpoints that exist: those retention removed leave it before their blobs go, so
        # that a reader of the record never asks storage for one that is gone.
        gone = {run.key(path.with_suffix("")) for path in removed}
        if gone:
            heartbeat.update(lambda current: {"checkpoints": [k for k in current.checkpoints if k not in gone]})
        run.files_fn([], removed)
        count_storage()

    def report(p: TrainProgress, heartbeat: Heartbeat) -> None:
        signals.touch()
        heartbeat.update(lambda current: changes_for(p, current))

    def stop(heartbeat: Heartbeat) -> bool:
        signals.touch()  # asked before every step: the watch's sign of progress
        return heartbeat.lost or signals.stop_asked()

    count_storage()  # what earlier attempts left
    keep = min(config.keep_checkpoints or settings.keep_checkpoints, settings.max_keep_checkpoints)
    with Heartbeat(store, job_id, me, settings.heartbeat_s) as heartbeat:
        result = train(
            config,
            out_dir,
            data_root=settings.data_root,
            device=settings.device,
            progress_fn=lambda p: report(p, heartbeat),
            should_stop=lambda: stop(heartbeat),
            resume_from=None if point is None else point.stem,
            files_fn=lambda written, removed: files(written, removed, heartbeat),
            dataset_file=dataset_file(settings, record),
            may_write=heartbeat.still_ours,
            world=world,
            keep_checkpoints=keep,
        )
        version = None
        if result.status == "completed" and heartbeat.still_ours():
            if result.final_checkpoint is None:
                raise RuntimeError("training completed without writing a final checkpoint")
            owner = owner_of(store, job_id)  # published as the job's key, under its claim (worker/publishing.py)
            version = publish_job_model(
                settings,
                run.storage,
                store.db,
                job_id,
                config.model_name,
                result.final_checkpoint,
                result.samples,
                owner,
            )

    superseded = {"job": job_id, "status": "superseded"}
    if heartbeat.lost:
        log.warning("job %s: left to whoever holds it now, after %d steps here", job_id, result.steps_done)
        return superseded

    def end(**changes: object) -> bool:
        """The job's last write, made only while the record still says it is this worker's."""
        heartbeat.update(lambda _: changes)
        return not heartbeat.lost

    if result.status == "cancelled" and signals.time_up.is_set() and not store.cancel_requested(job_id):
        limit = min(config.max_runtime_s or settings.max_runtime_s, settings.max_runtime_s)
        error = f"stopped after its max_runtime_s ({limit} s), at step {result.steps_done}; its checkpoints are kept"
        if not end(status=JobStatus.failed, error=error, metrics=dict(result.losses), finished_at=now()):
            return superseded
        log.warning("job %s failed: %s", job_id, error)
        return {"job": job_id, "status": JobStatus.failed.value}

    if result.status == "cancelled" and not store.cancel_requested(job_id):
        # Stopped because this worker is shutting down, not because anyone asked: the job goes back to the
        # queue (the message is rejected with requeue, as acks_late allows) and starts again on a worker.
        if not end(status=JobStatus.queued, started_at=None):
            return superseded
        log.warning("job %s interrupted by the worker's shutdown after %d steps; requeued", job_id, result.steps_done)
        return {"job": job_id, "status": REQUEUE}

    if result.status == "cancelled":
        if not end(status=JobStatus.cancelled, metrics=dict(result.losses), finished_at=now()):
            return superseded
        log.info("job %s cancelled after %d steps", job_id, result.steps_done)
        return {"job": job_id, "status": JobStatus.cancelled.value}

    assert version is not None
    published = PublishedModel(name=config.model_name, version=version)
    if not end(status=JobStatus.succeeded, metrics=dict(result.losses), model=published, finished_at=now()):
        return superseded
    log.info("job %s succeeded: published %s v%d", job_id, config.model_name, version)
    return {"job": job_id, "status": JobStatus.succeeded.value, "model": config.model_name, "version": version}


@celery_app.task(name=EVALUATE_TASK)
def evaluate(eval_id: str) -> dict[str, object]:
    settings = get_settings()
    store = EvaluationStore(connect(settings.effective_database_url), settings.evaluations_dir)
    try:
        record = store.get(eval_id)
    except KeyError:
        log.error("evaluation %s: no record of it in the database; nothing to do", eval_id)
        return {"evaluation": eval_id, "status": "missing"}
    if record.status in FINISHED:
        log.info("evaluation %s is already %s; not running it again", eval_id, record.status)
        return {"evaluation": eval_id, "status": str(record.status)}
    outcome = run_evaluation_process(eval_id)
    if outcome["status"] == "died":  # the kernel's OOM killer, a segfault, a CUDA abort
        error = f"its process died without finishing ({describe_exit(outcome['exitcode'])})"
        store.update(eval_id, status=JobStatus.failed, error=error, finished_at=now())
        log.error("evaluation %s failed: %s", eval_id, error)
        return {"evaluation": eval_id, "status": JobStatus.failed.value}
    return outcome


def run_evaluation(eval_id: str) -> dict[str, object]:
    """An evaluation's body, in its own process: measure, file the figures. A failure ends it `failed`, once."""
    settings = get_settings()
    store = EvaluationStore(connect(settings.effective_database_url), settings.evaluations_dir)
    try:
        return _evaluate(store, eval_id)
    except Exception as e:
        # Not re-raised, for the same reasons as a training job: it fails once, readably.
        log.exception("evaluation %s failed", eval_id)
        try:
            store.update(eval_id, status=JobStatus.failed, error=f"{type(e).__name__}: {e}", finished_at=now())
        except Exception:
            log.exception("evaluation %s: could not record the failure", eval_id)
        return {"evaluation": eval_id, "status": JobStatus.failed.value}


def _version_stem(store: EvaluationStore, record: EvaluationRecord, settings: Settings) -> Path:
    """The files of the version to measure, on this machine: bundled with the code, or published (fetched from
    storage into the cache when remote)."""
    from training.checkpoint import model_stem

    if record.source == "bundled":
        return model_stem(settings.bundled_models_dir, record.model, record.version)
    row = ModelVersions(store.db).get(record.model, record.version)
    if row is None:
        raise RuntimeError(f"model {record.model} has no version {record.version} any more")
    return local_stem(row, storage_of(settings), BlobCache(settings.effective_cache_dir, settings.cache_max_bytes))


def _evaluate(store: EvaluationStore, eval_id: str) -> dict[str, object]:
    from training.evaluation import evaluate_model  # torch: imported when a job runs

    settings = get_settings()
    record = store.update(eval_id, status=JobStatus.running, started_at=now(), error=None)
    req = record.request
    log.info("evaluation %s: %s v%d, n=%d, extractor %s", eval_id, record.model, record.version, req.n, req.extractor)
    png = store.nn_png(eval_id)
    metrics = evaluate_model(
        _version_stem(store, record, settings),
        n=req.n,
        data_root=settings.data_root,
        extractor=req.extractor,
        nn_png=png,
        progress_fn=lambda stage: store.update(eval_id, stage=stage),
    )
    record = store.update(
        eval_id,
        status=JobStatus.succeeded,
        stage=None,
        result=metrics.to_dict(),
        nearest_neighbours_png=store_file(settings, png),
        finished_at=now(),
    )
    log.info("evaluation %s succeeded: %s", eval_id, record.result)
    return {"evaluation": eval_id, "status": JobStatus.succeeded.value}
