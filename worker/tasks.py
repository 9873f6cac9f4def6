"""The worker's tasks: run a training job, or an evaluation job, described by its record on the volume.

Thin on purpose: `train` reads the job record, calls `training.loop.train`, mirrors progress into the
record, honours cancel requests and publishes the result; `evaluate` calls `training.metrics` on a
published model and files the figures under it. The records on the volume are the results; Celery's
result backend is not used.

Run the worker with `--pool solo --concurrency 1`: one training at a time per worker (and per GPU), in
the worker's main process, so CUDA is initialised in the process that trains and never in a parent that
forks children afterwards.
"""

import logging
from pathlib import Path

from celery.exceptions import Reject
from celery.worker import state as worker_state

from service.evaluations import EvaluationStore
from service.jobs import FINISHED, EpochRecord, JobStatus, JobStore, Progress, PublishedModel, now
from service.settings import get_settings
from worker.app import EVALUATE_TASK, TRAIN_TASK, celery_app

log = logging.getLogger(__name__)


def _relative(path: Path, root: Path) -> str:
    """A path as stored in the record: relative to the shared volume when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def worker_stopping() -> bool:
    """True once this worker began a warm or cold shutdown (SIGTERM, Ctrl-C, SIGQUIT)."""
    return worker_state.should_stop is not None or worker_state.should_terminate is not None


@celery_app.task(name=TRAIN_TASK, bind=True)
def train(self, job_id: str) -> dict[str, object]:
    settings = get_settings()
    store = JobStore(settings.jobs_dir)
    try:
        record = store.get(job_id)
    except KeyError:
        log.error("job %s: no record under %s; nothing to do", job_id, settings.jobs_dir)
        return {"job": job_id, "status": "missing"}

    # Idempotent start: a redelivered message for a finished job does nothing, and a job cancelled while
    # it was queued never starts.
    if record.status in FINISHED:
        log.info("job %s is already %s; not starting it again", job_id, record.status)
        return {"job": job_id, "status": str(record.status)}
    if store.cancel_requested(job_id):
        store.update(job_id, status=JobStatus.cancelled, finished_at=now())
        log.info("job %s was cancelled before it started", job_id)
        return {"job": job_id, "status": JobStatus.cancelled.value}

    try:
        return _run(store, job_id)
    except Reject:
        raise
    except Exception as e:
        # Not re-raised: a job that fails fails once, with a readable reason in its record; Celery must not
        # retry it (or redeliver it forever with acks_late).
        log.exception("job %s failed", job_id)
        try:
            store.update(job_id, status=JobStatus.failed, error=f"{type(e).__name__}: {e}", finished_at=now())
        except Exception:
            log.exception("job %s: could not record the failure", job_id)
        return {"job": job_id, "status": JobStatus.failed.value}


def _run(store: JobStore, job_id: str) -> dict[str, object]:
    # Imported here, not at module level: importing torch is slow and the API imports worker.app only.
    from training.checkpoint import publish
    from training.loop import TrainProgress, train

    settings = get_settings()
    volume = settings.checkpoint_dir
    # A requeued job starts again from its first step, so its history does too.
    record = store.update(job_id, status=JobStatus.running, started_at=now(), error=None, history=[])
    config = record.config
    out_dir = settings.jobs_dir / job_id
    log.info("job %s: training %r on %s (device %s)", job_id, config.model_name, config.dataset, settings.device)

    def on_progress(p: TrainProgress) -> None:
        current = store.get(job_id)
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
        if p.checkpoint is not None and (rel := _relative(p.checkpoint, volume)) not in current.checkpoints:
            changes["checkpoints"] = [*current.checkpoints, rel]
        if p.samples is not None and (rel := _relative(p.samples, volume)) not in current.samples:
            changes["samples"] = [*current.samples, rel]
        if p.epoch_end:
            entry = EpochRecord(epoch=p.epoch, step=p.step, losses=dict(p.losses), evaluation=p.evaluation)
            changes["history"] = [*current.history, entry]
            changes["evaluation_skipped"] = p.evaluation_skipped
        store.update(job_id, **changes)

    result = train(
        config,
        out_dir,
        data_root=settings.data_root,
        device=settings.device,
        progress_fn=on_progress,
        should_stop=lambda: store.cancel_requested(job_id) or worker_stopping(),
    )

    if result.status == "cancelled" and not store.cancel_requested(job_id):
        # Stopped because this worker is shutting down, not because anyone asked: the job goes back to the
        # queue (the message is rejected with requeue, as acks_late allows) and starts again on a worker.
        store.update(job_id, status=JobStatus.queued, started_at=None)
        log.warning("job %s interrupted by the worker's shutdown after %d steps; requeued", job_id, result.steps_done)
        raise Reject("worker shutting down", requeue=True)

    if result.status == "cancelled":
        store.update(job_id, status=JobStatus.cancelled, metrics=dict(result.losses), finished_at=now())
        log.info("job %s cancelled after %d steps", job_id, result.steps_done)
        return {"job": job_id, "status": JobStatus.cancelled.value}

    if result.final_checkpoint is None:
        raise RuntimeError("training completed without writing a final checkpoint")
    version = publish(settings.models_dir, config.model_name, result.final_checkpoint, result.samples)
    store.update(
        job_id,
        status=JobStatus.succeeded,
        metrics=dict(result.losses),
        model=PublishedModel(name=config.model_name, version=version),
        finished_at=now(),
    )
    log.info("job %s succeeded: published %s v%d", job_id, config.model_name, version)
    return {"job": job_id, "status": JobStatus.succeeded.value, "model": config.model_name, "version": version}


@celery_app.task(name=EVALUATE_TASK)
def evaluate(eval_id: str) -> dict[str, object]:
    settings = get_settings()
    store = EvaluationStore(settings.evaluations_dir)
    try:
        record = store.get(eval_id)
    except KeyError:
        log.error("evaluation %s: no record under %s; nothing to do", eval_id, settings.evaluations_dir)
        return {"evaluation": eval_id, "status": "missing"}
    if record.status in FINISHED:
        log.info("evaluation %s is already %s; not running it again", eval_id, record.status)
        return {"evaluation": eval_id, "status": str(record.status)}
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


def _evaluate(store: EvaluationStore, eval_id: str) -> dict[str, object]:
    from training.evaluation import evaluate_model  # torch: imported by the task, not by the API

    settings = get_settings()
    record = store.update(eval_id, status=JobStatus.running, started_at=now(), error=None)
    req = record.request
    log.info("evaluation %s: %s v%d, n=%d, extractor %s", eval_id, record.model, record.version, req.n, req.extractor)
    png = store.nn_png(eval_id)
    metrics = evaluate_model(
        Path(record.stem),
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
        nearest_neighbours_png=_relative(png, settings.checkpoint_dir),
        finished_at=now(),
    )
    store.file_result(record)
    log.info("evaluation %s succeeded: %s", eval_id, record.result)
    return {"evaluation": eval_id, "status": JobStatus.succeeded.value}
