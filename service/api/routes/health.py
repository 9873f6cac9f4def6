"""Liveness and readiness probes."""

import logging

from fastapi import APIRouter

from service.api.errors import APIError, error_responses
from service.api.schemas import Check, Health, Readiness
from service.serving.registry import ModelNotFound
from service.state import StateDep

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


# `def`: both checks block (a Redis ping, perhaps a model load).
@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: the broker answers and the default model loads",
    responses=error_responses(503),
)
def readyz(state: StateDep) -> Readiness:
    checks: dict[str, Check] = {}
    try:
        checks["broker"] = Check(ok=True, detail=state.tasks.check())
    except Exception as e:  # any failure of the probe means "not reachable"
        checks["broker"] = Check(ok=False, detail=f"{type(e).__name__}: {e}")
    try:
        model = state.registry.get(state.settings.default_model)
        checks["model"] = Check(ok=True, detail=f"{model.name} version {model.version} ({model.source})")
    except ModelNotFound as e:
        checks["model"] = Check(ok=False, detail=str(e))
    failed = [name for name, check in checks.items() if not check.ok]
    if failed:
        message = "Not ready: " + "; ".join(f"{name}: {checks[name].detail}" for name in failed)
        log.warning(message)
        raise APIError(503, "not_ready", message, detail={n: c.model_dump() for n, c in checks.items()})
    return Readiness(checks=checks)
