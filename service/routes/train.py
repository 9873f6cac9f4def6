"""`/train`: start, follow, list and cancel training jobs. The job record on the shared volume is the
truth; the broker only carries the job's id to a worker."""

import logging
import re
from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from service import plots
from service.deps import JobStoreDep, SettingsDep, TaskSenderDep
from service.errors import APIError, error_responses
from service.jobs import FINISHED, JobRecord, JobStatus, JobStore, now
from service.schemas import JobList, JobMetrics
from training.config import TrainConfig
from training.losses import objective

log = logging.getLogger(__name__)

router = APIRouter(prefix="/train", tags=["train"])

RETRY_AFTER_S = 5

JobId = Annotated[str, Path(description="The job's id, as returned by POST /train.", examples=["3f2b…"])]


def _get(store: JobStore, job_id: str) -> JobRecord:
    try:
        return store.get(job_id)
    except KeyError:
        raise APIError(
            404, "job_not_found", f"No training job {job_id!r}; GET /train lists the jobs.", detail={"id": job_id}
        ) from None


# `def`, not `async def`: sending to the broker is blocking network I/O.
@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRecord,
    summary="Start a training job",
    description=(
        "Queues a GAN training run and answers at once with the job record (status `queued`) and its URL "
        "in `Location`. Follow it with GET /train/{id}. When the broker cannot take the job the record is "
        "marked `failed` and the answer is 503 with `Retry-After`."
    ),
    responses=error_responses(422, 503),
)
def start_training(config: TrainConfig, response: Response, store: JobStoreDep, send: TaskSenderDep) -> JobRecord:
    record = store.create(config)
    try:
        send(record.id)
    except Exception as e:  # kombu OperationalError, redis/OS connection errors, timeouts: all mean "broker down"
        reason = f"the job could not be queued, the broker is unreachable: {type(e).__name__}: {e}"
        log.error("job %s: %s", record.id, reason)
        store.update(record.id, status=JobStatus.failed, error=reason, finished_at=now())
        raise APIError(
            503,
            "broker_unavailable",
            f"Training is unavailable right now ({reason}); retry in a few seconds.",
            detail={"id": record.id},
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    log.info("job %s queued: model %s, %d epoch(s)", record.id, config.model_name, config.epochs)
    response.headers["Location"] = f"/train/{record.id}"
    return record


@router.get("", response_model=JobList, summary="List training jobs, newest first")
def list_jobs(store: JobStoreDep) -> JobList:
    jobs = store.list()
    return JobList(jobs=jobs, count=len(jobs))


@router.get("/{job_id}", response_model=JobRecord, summary="A training job's record", responses=error_responses(404))
def get_job(job_id: JobId, store: JobStoreDep) -> JobRecord:
    return _get(store, job_id)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRecord,
    summary="Cancel a training job",
    description=(
        "Asks the job to stop. A job still `queued` is `cancelled` at once (the worker skips it); a `running` "
        "one stops at its next step and becomes `cancelled` shortly after. A finished job answers 409."
    ),
    responses=error_responses(404, 409),
)
def cancel_job(job_id: JobId, store: JobStoreDep) -> JobRecord:
    record = _get(store, job_id)
    if record.status in FINISHED:
        raise APIError(
            409,
            "job_finished",
            f"Job {job_id} already finished with status {record.status.value}; there is nothing to cancel.",
            detail={"id": job_id, "status": record.status.value},
        )
    # The cancel file first: a worker picking the job up right now sees it and stops on its own.
    store.request_cancel(job_id)
    if record.status == JobStatus.queued:
        record = store.update(job_id, status=JobStatus.cancelled, finished_at=now())
    return record


# --- a job's metrics, curves and sample grids: readable while it runs and after it ends ---------------


def _eval_every(record: JobRecord) -> int:
    return record.config.eval_every or record.config.sample_every


PLOTS = ("losses", "fid")
SAMPLE_NAME = re.compile(r"epoch-(\d+)\.png$")


@router.get(
    "/{job_id}/metrics",
    response_model=JobMetrics,
    summary="A training job's history: losses per epoch, sample-quality metrics where measured",
    responses=error_responses(404),
)
def get_metrics(job_id: JobId, store: JobStoreDep) -> JobMetrics:
    record = _get(store, job_id)
    extractors = list(dict.fromkeys(e.evaluation["extractor"] for e in record.history if e.evaluation))
    return JobMetrics(
        id=record.id,
        status=record.status,
        extractor=extractors[-1] if extractors else None,
        evaluation_skipped=record.evaluation_skipped,
        eval_every=_eval_every(record),
        history=record.history,
    )


@router.get(
    "/{job_id}/plots/{plot}.png",
    response_class=Response,
    summary="A training job's curves as a PNG: `losses` (D and G per epoch) or `fid` (FID and KID)",
    responses={200: {"content": {"image/png": {}}}, **error_responses(404)},
)
def get_plot(job_id: JobId, plot: str, store: JobStoreDep) -> Response:
    record = _get(store, job_id)
    if plot not in PLOTS:
        raise APIError(
            404, "plot_not_found", f"No plot {plot!r}; choose one of {', '.join(PLOTS)}.", detail={"plots": list(PLOTS)}
        )
    if not record.history:
        raise APIError(
            404,
            "no_history_yet",
            f"Job {job_id} has not finished an epoch yet (status {record.status.value}); retry after its first.",
            detail={"status": record.status.value},
        )
    if plot == "fid" and not plots.evaluated(record.history, "fid"):
        why = record.evaluation_skipped or (
            "this job's dataset is scored with mode metrics, not FID (see GET /train/{id}/metrics)"
            if record.config.is_toy
            else f"no evaluation has run yet; the first is due at epoch {_eval_every(record)}"
        )
        raise APIError(
            404, "no_fid", f"Job {job_id} has no FID to plot: {why}.", detail={"status": record.status.value}
        )
    title = f"{record.config.model_name} ({record.status.value}, {record.history[-1].epoch} epochs)"
    if plot == "losses":
        config = record.config
        probabilistic = objective(config.loss).probabilistic  # else D is a critic: no equilibrium value to draw
        png = plots.losses_png(record.history, title, probabilistic, binary=config.architecture != "mad-gan")
    else:
        png = plots.fid_png(record.history, title)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})


@router.get(
    "/{job_id}/samples/{epoch}.png",
    response_class=Response,
    summary="The sample grid a training job wrote at the end of an epoch (seeds 0–63, as /generate renders them)",
    responses={200: {"content": {"image/png": {}}}, **error_responses(404)},
)
def get_samples(
    job_id: JobId,
    epoch: Annotated[int, Path(ge=1, description="An epoch with a grid: see the job's `samples`.")],
    store: JobStoreDep,
    settings: SettingsDep,
) -> Response:
    record = _get(store, job_id)
    written = {int(m.group(1)): rel for rel in record.samples if (m := SAMPLE_NAME.search(rel))}
    if epoch not in written:
        raise APIError(
            404,
            "samples_not_found",
            f"Job {job_id} has no sample grid for epoch {epoch}; it writes one every "
            f"{record.config.sample_every} epoch(s) and after the last. Available: {sorted(written) or 'none yet'}.",
            detail={"epochs": sorted(written)},
        )
    path = settings.checkpoint_dir / written[epoch]
    try:
        png = path.read_bytes()
    except OSError:
        raise APIError(
            404,
            "samples_missing",
            f"The grid of epoch {epoch} is recorded but gone from the volume ({written[epoch]}).",
        ) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})
