"""`/train`: start, follow, list and cancel training jobs. The job's row in the database is the truth; the
broker only carries the job's id to a worker."""

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from pydantic import Field
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from core.datasets import DatasetStore
from core.jobs import JobRecord, JobStore
from core.keys import Scope
from core.model_names import ModelNames, NameOwned, NameReserved, reserved_names
from core.quota import over_quota
from core.records import FINISHED, JobStatus, now
from core.settings import Settings
from core.submissions import IDEMPOTENCY_TTL
from core.tasks import TRAIN_TASK, train_queue
from core.train_config import NAME_PATTERN, TrainConfig
from core.workers import JobResources, WorkerInfo, default_gpus, refusal, waiting_for
from service.api import plots
from service.api.blobs import png_blob
from service.api.errors import APIError, broker_unavailable, error_responses, validation_error
from service.api.routes.datasets import job_dataset
from service.api.schemas import JobList, JobMetrics, JobView, TrainRequest
from service.background import webhooks
from service.security.auth import Principal, TrainKey, require_train
from service.state import AppState, StateDep
from training.losses import objective
from training.model_size import job_parameters

log = logging.getLogger(__name__)

# Every route here needs a key with scope `train` (service/security/auth.py), and counts against its rate limit.
router = APIRouter(
    prefix="/train",
    tags=["train"],
    dependencies=[Depends(require_train)],
    responses=error_responses(401, 403, 429),
)


KeyName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64, examples=["alice"])]
JobId = Annotated[str, Path(description="The job's id, as returned by POST /train.", examples=["3f2b…"])]


def _sees_all(principal: Principal) -> bool:
    return Scope.admin in principal.scopes


def _get(store: JobStore, job_id: str, principal: Principal) -> JobRecord:
    """The job, when `principal` may see it: a key sees the jobs it submitted, an `admin` key every job (those
    submitted not over HTTP too). Another key's job answers the very 404 of a job that does not exist, so that no
    key learns which ids exist."""
    try:
        record = store.get(job_id)
        if not _sees_all(principal) and store.owner(job_id) != principal.name:
            raise KeyError(job_id)
    except KeyError:
        raise APIError(
            404,
            "job_not_found",
            f"No training job {job_id!r} for key {principal.name!r}; GET /train lists this key's jobs.",
            detail={"id": job_id},
        ) from None
    return record


def _check_caps(config: TrainConfig, settings: Settings, state: StateDep, principal: TrainKey) -> None:
    """This server's own bounds, tighter than (or equal to) TrainConfig's: epochs, steps, runtime, checkpoints kept
    and the networks' size (422). The storage quota is checked with the submission (`_check_quota`), after an
    Idempotency-Key replay, so that a retry gets its job back whatever the key has stored since."""
    caps = [
        ("epochs", config.epochs, settings.max_epochs, "GANSERVE_MAX_EPOCHS"),
        ("steps", config.steps, settings.max_steps, "GANSERVE_MAX_STEPS"),
        ("max_runtime_s", config.max_runtime_s, settings.max_runtime_s, "GANSERVE_MAX_RUNTIME_S"),
        ("keep_checkpoints", config.keep_checkpoints, settings.max_keep_checkpoints, "GANSERVE_MAX_KEEP_CHECKPOINTS"),
    ]
    for field, value, limit, setting in caps:
        if value is not None and value > limit:
            raise validation_error(
                ("body", field),
                f"Input should be less than or equal to {limit} (this server's {setting})",
                value,
                "less_than_equal",
            )
    any_owner = Scope.admin in principal.scopes
    parameters = job_parameters(config, DatasetStore(state.db), principal.name, any_owner)
    if parameters is not None and parameters > settings.max_model_parameters:
        raise APIError(
            422,
            "model_too_large",
            f"This job's networks (G and D together) have {parameters:,} parameters, more than this server's "
            f"GANSERVE_MAX_MODEL_PARAMETERS ({settings.max_model_parameters:,}). Use fewer or narrower layers "
            "(`g_hidden`, `d_hidden`), smaller images (`image_size`) or a smaller `latent_dim`; or ask the "
            "operator to raise GANSERVE_MAX_MODEL_PARAMETERS.",
            detail={"parameters": parameters, "limit": settings.max_model_parameters},
        )


def _check_quota(state: StateDep, principal: TrainKey, conn: Connection) -> None:
    """The key's storage quota (429): no new job while it stores as much as it may."""
    settings = state.settings
    used = over_quota(state.db, principal.name, settings.storage_quota_bytes, conn=conn)
    if used is not None:
        raise APIError(
            429,
            "storage_quota_exceeded",
            f"API key {principal.name!r} uses {used.total:,} bytes of storage, at or over its quota of "
            f"{settings.storage_quota_bytes:,} (GANSERVE_STORAGE_QUOTA_BYTES): no new job until it uses less. "
            "Delete datasets it no longer needs (GET /datasets, DELETE /datasets/{id}), or ask the operator to "
            "raise the quota.",
            detail=used.detail(settings.storage_quota_bytes),
        )


def _request_sha256(
    config: TrainConfig, webhook: str | None = None, resources: dict | None = None, visibility: str | None = None
) -> str:
    """The job as validated (defaults filled in), so the same job sent with other spacing or key order,
    or with a default spelled out, is the same request; its webhook, resources and visibility, when it has them,
    are part of it."""
    request = config.model_dump(mode="json") | ({"webhook": webhook} if webhook is not None else {})
    request |= {"resources": resources} if resources is not None else {}
    request |= {"visibility": visibility} if visibility is not None else {}
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def _resources(body: TrainRequest, workers: list[WorkerInfo]) -> JobResources:
    """What the job asks for (or, when it does not say, what the live workers offer) and its queue; a 422 when
    no advertised worker could ever run it."""
    if body.resources is None:
        gpus = default_gpus(workers)
        return JobResources(gpus=gpus, queue=train_queue(gpus), requested=False)
    gpus = body.resources.gpus
    if problem := refusal(gpus, workers):
        live: dict[str, int] = {}
        for w in workers:
            live[w.worker_class.value] = live.get(w.worker_class.value, 0) + w.live
        raise APIError(
            422,
            "no_worker_can_run_it",
            problem,
            detail={
                "resources": body.resources.model_dump(),
                "max_gpus": max((len(w.devices) for w in workers), default=0),
                "classes": sorted({w.worker_class.value for w in workers}),
                "live": live,
            },
        )
    return JobResources(gpus=gpus, queue=train_queue(gpus), requested=True)


def _check_data_parallel(config: TrainConfig, gpus: int) -> None:
    """A job on several GPUs trains as that many processes (training/distributed.py): what they cannot run is a
    422 now, not a job failed on the worker."""
    from training import distributed  # torch.distributed: loaded for such jobs only

    world = distributed.World(rank=0, size=gpus, local_rank=0, local_size=gpus)
    try:
        distributed.check_supported(config, world)
        distributed.check_batch(config.batch_size, world)
    except ValueError as e:
        raise APIError(
            422,
            "not_data_parallel",
            f"This job cannot train on {gpus} GPUs: {e}.",
            detail={"gpus": gpus, "batch_size": config.batch_size},
        ) from None


def _claim_name(state: AppState, principal: Principal, body: TrainRequest, conn: Connection) -> None:
    """Claim the job's model name for its key in the submission's transaction (so that no job trains for a name it
    could not publish under, and a refused submission claims nothing): a bundled model's name is a 422, another
    key's a 403. The claim is made under a savepoint: when another key's first claim of the same name commits
    between our read and our insert, the primary key refuses ours and the claim is read again (then another's)."""
    names = ModelNames(state.db, reserved=reserved_names(state.settings.bundled_models_dir))
    name, admin = body.model_name, _sees_all(principal)
    visibility = body.visibility or state.settings.model_visibility

    def claim() -> None:
        names.claim(name, principal.name, visibility=visibility, admin=admin, conn=conn)

    try:
        try:
            with conn.begin_nested():
                claim()
        except IntegrityError:
            claim()
    except NameReserved:
        raise APIError(
            422,
            "model_name_reserved",
            f"Model name {name!r} is the name of a model bundled with this server, which no job may train or "
            "publish under (not even an `admin` key's). Choose another model_name.",
            detail={"model_name": name},
        ) from None
    except NameOwned:
        raise APIError(
            403,
            "model_name_owned",
            f"Model name {name!r} is taken: it belongs to another API key (or to the server's operator), as a name is "
            "its first trainer's, and only its owner (or an `admin` key) may train or publish under it. Choose "
            "another model_name.",
            detail={"model_name": name},
        ) from None


def job_waiting_for(record: JobRecord, workers: list[WorkerInfo]) -> str | None:
    """Why a queued job waits on no live worker (None: some live worker can take it, or it is not queued)."""
    if record.status != JobStatus.queued:
        return None
    # A job of an older version has no resources: it is on the queue every worker drains, as is one for any worker.
    return waiting_for(record.resources.gpus if record.resources is not None else None, workers)


def view(record: JobRecord, workers: list[WorkerInfo]) -> JobView:
    return JobView.model_validate(record.model_dump() | {"waiting_for": job_waiting_for(record, workers)})


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Any string unique to this job (a UUID, say). A retry of the same job "
        f"with the same Idempotency-Key within {IDEMPOTENCY_TTL.total_seconds() / 3600:.0f} h returns the job "
        "the first made (with `Idempotent-Replayed: true`) instead of a second one; reusing it for a "
        "different job is a 422.",
    ),
]


# `def`, not `async def`: sending to the broker is blocking network I/O.
@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    summary="Start a training job",
    description=(
        "Queues a GAN training run and answers at once with the job record (status `queued`) and its URL "
        "in `Location`. Follow it with GET /train/{id}. When the broker cannot take the job the record is "
        "marked `failed` and the answer is 503 with `Retry-After`. A key may have at most "
        "GANSERVE_MAX_QUEUED_PER_KEY jobs queued or running (429 beyond). Send an `Idempotency-Key` to make "
        "retries safe. A `webhook` is called when the job finishes (422 when the server does not allow it). "
        "`resources` says how many GPUs it needs (422 when no advertised worker could ever run it). The job's "
        "`model_name` is claimed for this key before it is queued: the first key to train a name owns it (with "
        "`visibility`), and another key's job under it is a 403 `model_name_owned` (an `admin` key may use any); a "
        "bundled model's name is a 422 `model_name_reserved`."
    ),
    responses=error_responses(403, 422, 503),
)
def start_training(
    body: TrainRequest,
    response: Response,
    state: StateDep,
    principal: TrainKey,
    idempotency_key: IdempotencyKey = None,
) -> JobView:
    store, settings, submissions = state.jobs, state.settings, state.submissions
    config, webhook = body.train_config(), body.webhook  # the webhook is the job's, not the model's config
    _check_caps(config, settings, state, principal)
    if webhook is not None and (problem := webhooks.refusal(webhook, settings)):
        raise validation_error(("body", "webhook"), problem, webhook, "webhook_refused")
    resources_asked = body.resources.model_dump() if body.resources is not None else None
    request_sha256 = _request_sha256(config, webhook, resources_asked, body.visibility)
    workers = state.workers.list()
    resources = _resources(body, workers)
    if resources.gpus is not None and resources.gpus > 1:
        _check_data_parallel(config, resources.gpus)
    # One submission per key at a time, in one transaction: a retry racing its original waits for it, then
    # replays it; two submissions never both pass the queue limit.
    with submissions.lock(principal.name) as conn:
        if idempotency_key is not None:
            prior = submissions.recall(conn, principal.name, idempotency_key)
            if prior is not None:
                if prior.request_sha256 != request_sha256:
                    raise APIError(
                        422,
                        "idempotency_key_reused",
                        f"Idempotency-Key {idempotency_key!r} was already used by this API key for a different "
                        f"job ({prior.job_id}) in the last {IDEMPOTENCY_TTL.total_seconds() / 3600:.0f} h; send "
                        "the same body to get that job back, or a new Idempotency-Key for a new job.",
                        detail={"id": prior.job_id},
                    )
                try:
                    record = store.get(prior.job_id, conn)
                except KeyError:
                    record = None  # its record is gone: submit afresh
                if record is not None:
                    log.info("job %s: replayed for key %s (Idempotency-Key)", record.id, principal.name)
                    response.headers["Location"] = f"/train/{record.id}"
                    response.headers["Idempotent-Replayed"] = "true"
                    return view(record, workers)
        _check_quota(state, principal, conn)
        _claim_name(state, principal, body, conn)  # rolled back with the rest if the job is refused below
        uploaded = job_dataset(state, principal, config, conn)  # its row held: not deleted under the job
        active = submissions.active_jobs(conn, principal.name)
        if len(active) >= settings.max_queued_per_key:
            raise APIError(
                429,
                "too_many_jobs",
                f"API key {principal.name!r} already has {len(active)} training job(s) queued or running, the most "
                f"this server allows (GANSERVE_MAX_QUEUED_PER_KEY={settings.max_queued_per_key}). Wait for one "
                "to finish, or cancel one with DELETE /train/{id}.",
                detail={"active": active, "limit": settings.max_queued_per_key},
            )
        record = store.create(
            owner=principal.name,
            conn=conn,
            config=config,
            webhook=webhook,
            uploaded_dataset=uploaded,
            resources=resources,
        )
        if idempotency_key is not None:
            # With the record: a crash after the send must not let a retry make a second job.
            submissions.remember(conn, principal.name, idempotency_key, record.id, request_sha256)
    # Sent once committed, so that the worker the message reaches finds the record.
    try:
        state.tasks.send(TRAIN_TASK, record.id, queue=resources.queue)
    except Exception as e:
        reason, error = broker_unavailable("training job", record.id, e)
        log.error("job %s: %s", record.id, reason)
        store.update(record.id, status=JobStatus.failed, error=reason, finished_at=now())
        if idempotency_key is not None:
            submissions.forget(principal.name, idempotency_key)  # never queued: a retry may queue it anew
        raise error from None
    log.info(
        "job %s queued by key %s: model %s, %d epoch(s), on queue %s",
        record.id,
        principal.name,
        config.model_name,
        config.epochs,
        resources.queue,
    )
    response.headers["Location"] = f"/train/{record.id}"
    return view(record, workers)


@router.get(
    "",
    response_model=JobList,
    summary="List training jobs, newest first",
    description="The jobs this key submitted; an `admin` key's list holds every job (those submitted not over HTTP "
    "too), and `owner` narrows it to some keys' jobs.",
)
def list_jobs(
    state: StateDep,
    principal: TrainKey,
    owner: Annotated[
        list[KeyName] | None,
        Query(
            max_length=16,
            description="Only the jobs of the API key(s) of these names (repeat it for several): an `admin` key's "
            "filter, as any other key only ever lists its own jobs.",
        ),
    ] = None,
) -> JobList:
    keys = set(owner) if owner else None
    if not _sees_all(principal):
        keys = {principal.name} if keys is None else keys & {principal.name}  # a filter never widens the view
    if keys is None:
        jobs = state.jobs.list()
    else:
        jobs = sorted((j for k in keys for j in state.jobs.list(owner=k)), key=lambda j: j.created_at, reverse=True)
    workers = state.workers.list() if any(j.status == JobStatus.queued for j in jobs) else []
    return JobList(jobs=[view(j, workers) for j in jobs], count=len(jobs))


@router.get("/{job_id}", response_model=JobView, summary="A training job's record", responses=error_responses(404))
def get_job(job_id: JobId, state: StateDep, principal: TrainKey) -> JobView:
    record = _get(state.jobs, job_id, principal)
    return view(record, state.workers.list() if record.status == JobStatus.queued else [])


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
def cancel_job(job_id: JobId, state: StateDep, principal: TrainKey) -> JobRecord:
    store = state.jobs
    record = _get(store, job_id, principal)
    if record.status in FINISHED:
        raise APIError(
            409,
            "job_finished",
            f"Job {job_id} already finished with status {record.status.value}; there is nothing to cancel.",
            detail={"id": job_id, "status": record.status.value},
        )
    # The cancel request first: a worker picking the job up right now sees it and stops on its own.
    store.request_cancel(job_id)
    if record.status == JobStatus.queued:
        record = store.update(job_id, status=JobStatus.cancelled, finished_at=now())
    return record


# --- a job's record as server-sent events, while it runs ------------------------------------------------

# How often the record is read from the volume, and how long a quiet stream waits before a comment line
# (which keeps proxies from closing an idle connection). Module constants: the tests shorten them.
EVENTS_POLL_S = 0.5
EVENTS_HEARTBEAT_S = 15.0
SSE_SEP = "\n"  # the lines' end, as the stream has always had them


async def job_events(
    store: JobStore,
    first: JobRecord,
    is_disconnected: Callable[[], Awaitable[bool]],
    workers: Callable[[], list[WorkerInfo]] = list,
) -> AsyncIterator[ServerSentEvent]:
    """The SSE stream of a job: the record as JSON (`id:` counts the changes) whenever it changes, a comment
    every EVENTS_HEARTBEAT_S while it does not, and the end after a finished record. The volume is read off
    the event loop; the stream stops when the client goes (or the record does)."""
    record: JobRecord | None = first
    sent, changes, quiet_since = "", 0, time.monotonic()
    while record is not None:
        # As GET /train/{id} answers it: a queued job says what it waits for (the workers read off the loop).
        seen = await run_in_threadpool(workers) if record.status == JobStatus.queued else []
        data = view(record, seen).model_dump_json()
        if data != sent:
            changes, sent, quiet_since = changes + 1, data, time.monotonic()
            yield ServerSentEvent(data=data, id=str(changes), sep=SSE_SEP)
            if record.status in FINISHED:
                return
        elif time.monotonic() - quiet_since >= EVENTS_HEARTBEAT_S:
            quiet_since = time.monotonic()
            yield ServerSentEvent(comment="heartbeat", sep=SSE_SEP)
        await asyncio.sleep(EVENTS_POLL_S)
        if await is_disconnected():
            return
        try:
            record = await run_in_threadpool(store.get, record.id)
        except KeyError:
            record = None  # deleted from the volume: nothing more will come
    yield ServerSentEvent(data=json.dumps({"id": first.id}), event="gone", sep=SSE_SEP)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    summary="A training job's record as server-sent events, each time it changes, until it finishes",
    description=(
        "`text/event-stream`: one event (`data:` the job record as JSON, as GET /train/{id} returns it; `id:` "
        f"a count of changes) at once and then whenever the record changes (checked every {EVENTS_POLL_S} s), "
        f"a comment line (`: heartbeat`) after {EVENTS_HEARTBEAT_S:.0f} s without one, and the end of the "
        "stream after the event of a finished job (`succeeded`, `failed` or `cancelled`), or when the server "
        "shuts down (reconnect then). Needs the same key as GET /train/{id}, in a header: read it with fetch() "
        "streaming rather than EventSource."
    ),
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(404)},
)
async def get_job_events(job_id: JobId, request: Request, state: StateDep, principal: TrainKey) -> EventSourceResponse:
    store = state.jobs
    record = await run_in_threadpool(_get, store, job_id, principal)  # a 404 before the stream starts
    # sse-starlette's response, not Starlette's StreamingResponse: it ends the stream when uvicorn is told to stop,
    # which otherwise waits for every open stream's client to go (an open dashboard tab held the shutdown until
    # the container was killed). Its own pings are off: the stream sends its heartbeat only when quiet.
    return EventSourceResponse(
        job_events(store, record, request.is_disconnected, state.workers.list),
        headers={"Cache-Control": "no-cache"},
        ping=0,
        sep=SSE_SEP,
    )


# --- a job's metrics, curves and sample grids: readable while it runs and after it ends ---------------


def _when_evaluated(record: JobRecord) -> str:
    every = record.config.eval_every
    if every is None:
        return (
            "evaluations run on the default budget schedule (at most 10 % of the job's wall time, the last epoch "
            "normally included; set eval_every for a fixed cadence)"
        )
    return f"the first is due at epoch {every}"


PLOTS = ("losses", "fid")
SAMPLE_NAME = re.compile(r"epoch-(\d+)\.png$")


@router.get(
    "/{job_id}/metrics",
    response_model=JobMetrics,
    summary="A training job's history: losses per epoch, sample-quality metrics where measured",
    responses=error_responses(404),
)
def get_metrics(job_id: JobId, state: StateDep, principal: TrainKey) -> JobMetrics:
    record = _get(state.jobs, job_id, principal)
    extractors = list(dict.fromkeys(e.evaluation["extractor"] for e in record.history if e.evaluation))
    return JobMetrics(
        id=record.id,
        status=record.status,
        extractor=extractors[-1] if extractors else None,
        evaluation_skipped=record.evaluation_skipped,
        eval_every=record.config.eval_every,
        history=record.history,
    )


@router.get(
    "/{job_id}/plots/{plot}.png",
    response_class=Response,
    summary="A training job's curves as a PNG: `losses` (D and G per epoch) or `fid` (FID and KID)",
    responses={200: {"content": {"image/png": {}}}, **error_responses(404)},
)
def get_plot(job_id: JobId, plot: str, state: StateDep, principal: TrainKey) -> Response:
    record = _get(state.jobs, job_id, principal)
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
            else f"no evaluation has run yet; {_when_evaluated(record)}"
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
    responses={200: {"content": {"image/png": {}}}, **error_responses(404, 503)},
)
def get_samples(
    job_id: JobId,
    epoch: Annotated[int, Path(ge=1, description="An epoch with a grid: see the job's `samples`.")],
    state: StateDep,
    principal: TrainKey,
) -> Response:
    record = _get(state.jobs, job_id, principal)
    written = {int(m.group(1)): rel for rel in record.samples if (m := SAMPLE_NAME.search(rel))}
    if epoch not in written:
        raise APIError(
            404,
            "samples_not_found",
            f"Job {job_id} has no sample grid for epoch {epoch}; it writes one every "
            f"{record.config.sample_every} epoch(s) and after the last. Available: {sorted(written) or 'none yet'}.",
            detail={"epochs": sorted(written)},
        )
    png = png_blob(state.storage, written[epoch], f"The grid of epoch {epoch} of job {job_id}", "samples_missing")
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})
