"""`GET /metrics` (Prometheus) and `GET /stats` (a quick look in JSON): see service/telemetry.py.

Who may read them (docs/operations.md, Metrics): they name every tenant's jobs and models, so
- `/metrics` needs a key with scope `admin`, unless GANSERVE_METRICS_PUBLIC=true opens it on this port (then
  anonymous scrapes count against their address's GANSERVE_RATE_LIMIT_PER_IP_PER_MIN); GANSERVE_METRICS_PORT
  serves it without a key on a port of its own (service/telemetry.py `serving_metrics`), for a scraper on a
  network the operator trusts;
- `/stats` always needs `admin` (the page at / does not read it).

Both are rate-limited like every keyed route, and read the database from a snapshot taken at most once a
second (`Metrics.jobs`), so a flood of either costs the database nothing more. Each API process answers with
its own request counts.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.errors import APIError, error_responses
from service.api.schemas import RouteStats, RunningJob, Stats
from service.security.auth import Principal, api_key_scheme, bearer_scheme, require_admin
from service.security.limits import limit_rate
from service.state import StateDep, app_state
from service.telemetry import Metrics

router = APIRouter(tags=["operations"])

OPENING_SETTINGS = ["GANSERVE_METRICS_PUBLIC", "GANSERVE_METRICS_PORT"]
HOW_TO_OPEN = (
    " Without a key: the operator sets GANSERVE_METRICS_PUBLIC=true (this port, open to all) or "
    "GANSERVE_METRICS_PORT (a port of its own, for the scraper's network)."
)


async def metrics_access(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    api_key: Annotated[str | None, Security(api_key_scheme)],
) -> Principal | None:
    """An `admin` key (its rate limit applied). With GANSERVE_METRICS_PUBLIC, anyone: nobody (the caller's
    address limited) or any valid key (that key limited). A refusal says which settings would open it."""
    state = app_state(request.app)
    key = bearer.credentials if bearer is not None and bearer.credentials else api_key
    if state.settings.metrics_public:
        state.keyring.refresh()
        entry = state.keyring.lookup(key) if key else None
        if not key or entry is not None:  # an unknown key is refused below, as on every route
            who = entry.name if entry is not None else None
            await limit_rate(request, state.settings, state.rate_limiter, who)
            return Principal(entry.name, frozenset(entry.scopes)) if entry is not None else None
    try:
        return await require_admin(request, bearer, api_key)
    except APIError as e:
        if e.status_code not in (401, 403) or state.settings.metrics_public:  # open already: the key is wrong
            raise
        detail = {**e.detail, "settings": OPENING_SETTINGS} if isinstance(e.detail, dict) else e.detail
        raise APIError(e.status_code, e.error, e.message + HOW_TO_OPEN, detail, e.headers) from None


# `def`: the snapshot may read the database (at most once a second). Left out of the OpenAPI schema: its body
# is Prometheus' text format, which a JSON schema says nothing useful about.
@router.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_access)])
def metrics(state: StateDep) -> Response:
    registry = state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/stats",
    response_model=Stats,
    summary="This API process's requests, batching, models and jobs (scope `admin`)",
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 403, 429),
)
def stats(state: StateDep) -> Stats:
    m: Metrics = state.metrics
    assert m.jobs is not None  # the app's Metrics always reads the job store (service/state.py)
    snap = m.jobs.get()
    forwards, rows = m.batch_summary()
    running = [
        RunningJob(id=r.id, model_name=r.config.model_name, **(r.progress.model_dump() if r.progress else {}))
        for r in snap.running
    ]
    return Stats(
        started_at=m.started_at,
        uptime_s=round(m.uptime_s, 3),
        requests=[RouteStats(**s) for s in m.route_stats()],
        images_generated=m.images_generated(),
        forwards=forwards,
        mean_batch_rows=round(rows / forwards, 3) if forwards else None,
        models_loaded=[f"{name}:{version}" for name, version in state.registry.loaded()],
        jobs=snap.jobs,
        running_jobs=running,
        evaluations=snap.evaluations or {},
    )
