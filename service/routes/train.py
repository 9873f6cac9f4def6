"""`/train`: start, follow, list and cancel training jobs. The job record on the shared volume is the
truth; the broker only carries the job's id to a worker."""

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from service.deps import JobStoreDep, TaskSenderDep
from service.errors import APIError, error_responses
from service.jobs import FINISHED, JobRecord, JobStatus, JobStore, now
from service.schemas import JobList
from training.config import TrainConfig

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
