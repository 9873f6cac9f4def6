"""Liveness and readiness probes: public and never rate-limited (a load balancer asks often), so cheap.

/healthz does nothing. /readyz checks the render process (in memory), the broker and the default model each
time; the database and object storage are probed at most once every `PROBE_MAX_AGE_S` per API process,
however often it is asked (an outage shows within that second), and the workers' report comes from the
snapshot /metrics reads (service/telemetry.py), never a scan of the job records per request.
"""

import logging

from fastapi import APIRouter, FastAPI, Request
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from core.db import DatabaseUnavailable
from core.storage import BlobError
from service.api.errors import APIError, error_responses
from service.api.schemas import Check, Health, Readiness
from service.serving.registry import ModelNotFound
from service.serving.render_process import RendererClosed
from service.state import AppState, StateDep, app_state
from service.telemetry import Snapshot

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: the render process, the database, object storage, the broker and the default model; the "
    "live workers, reported",
    responses=error_responses(503),
)
async def readyz(request: Request, state: StateDep) -> Readiness:
    checks = {"render": await _render_check(state)}
    checks |= await run_in_threadpool(_blocking_checks, state, probes(request.app))  # perhaps a model load
    failed = [name for name, check in checks.items() if not check.ok]
    if failed:
        message = "Not ready: " + "; ".join(f"{name}: {checks[name].detail}" for name in failed)
        log.warning(message)
        raise APIError(503, "not_ready", message, detail={n: c.model_dump() for n, c in checks.items()})
    return Readiness(checks=checks)


async def _render_check(state: AppState) -> Check:
    renderer = state.renderer
    try:
        await renderer.ensure_running()  # one that died is started again here, not only by the next request
    except (OSError, RendererClosed) as e:
        return Check(ok=False, detail=f"the render process cannot be started: {e}")
    if renderer.ready:
        return Check(ok=True, detail=f"render process {renderer.pid} ready")
    return Check(ok=False, detail=f"render process {renderer.pid} is starting (loading its models)")


PROBE_MAX_AGE_S = 1.0


def probes(app: FastAPI) -> Snapshot[dict[str, Check]]:
    """This app's database and storage probes, kept `PROBE_MAX_AGE_S` (made on first use)."""
    cached = getattr(app.state, "ganserve_probes", None)
    if cached is None:
        state = app_state(app)
        cached = app.state.ganserve_probes = Snapshot(lambda: _probe_backends(state), PROBE_MAX_AGE_S)
    return cached


def expire_probes(app: FastAPI) -> None:
    """The next /readyz probes the database and storage again (tests that cut one off and ask at once)."""
    probes(app).expire()


def _blocking_checks(state: AppState, backends: Snapshot[dict[str, Check]]) -> dict[str, Check]:
    checks: dict[str, Check] = dict(backends.get())
    try:
        checks["broker"] = Check(ok=True, detail=state.tasks.check())
    except Exception as e:  # any failure of the probe means "not reachable"
        checks["broker"] = Check(ok=False, detail=f"{type(e).__name__}: {e}")
    try:
        checks["workers"] = _workers_check(state)
    except (DatabaseUnavailable, OperationalError):  # the database check says so
        checks["workers"] = Check(ok=True, detail="unknown: the database does not answer")
    try:
        model = state.registry.get_default()  # the pinned version, what a request naming no model gets
        checks["model"] = Check(ok=True, detail=f"{model.name} version {model.version} ({model.source})")
    except ModelNotFound as e:
        checks["model"] = Check(ok=False, detail=str(e))
    return checks


def _probe_backends(state: AppState) -> dict[str, Check]:
    """A database round trip and an object-storage request: what a flood of /readyz must not multiply."""
    checks: dict[str, Check] = {}
    try:
        checks["database"] = Check(ok=True, detail=f"{state.db.dialect}, at revision {state.db.revision()}")
    except DatabaseUnavailable as e:  # the details name hosts: in the log, not in this public answer
        log.error("%s", e)
        checks["database"] = Check(ok=False, detail=f"{state.db.dialect} does not answer (GANSERVE_DATABASE_URL)")
    try:
        state.storage.check()
        checks["storage"] = Check(ok=True, detail="file" if state.storage.local else "s3")
    except BlobError as e:  # like the database's: the bucket and endpoint go to the log only
        log.error("%s", e)
        checks["storage"] = Check(ok=False, detail="object storage does not answer (GANSERVE_STORAGE_URL)")
    return checks


def _workers_check(state: AppState) -> Check:
    """Reports, never fails readiness: the API serves images and queues jobs without any worker, and a load
    balancer must not take it out of rotation because a worker is down. The detail counts the live workers by
    class and says how many queued jobs no live worker can take, and what they wait for (from the snapshot
    /metrics reads: at most a second old)."""
    if state.metrics.jobs is None:
        return Check(ok=True, detail="unknown: no job store")
    snap = state.metrics.jobs.get()
    live: dict[str, int] = {}
    for w in snap.workers or []:
        if w.live:
            live[w.worker_class.value] = live.get(w.worker_class.value, 0) + 1
    counts = ", ".join(f"{n} {cls}" for cls, n in sorted(live.items())) or "none"
    detail = f"live workers: {counts}"
    if snap.waiting:
        detail += f"; {snap.without_live_worker} queued job(s) no live worker can take: " + ", ".join(
            f"{n} wait for {what}" for what, n in sorted(snap.waiting.items())
        )
    return Check(ok=True, detail=detail)
