"""`GET /metrics` (Prometheus) and `GET /stats` (a quick look in JSON): see service/telemetry.py.

Both are public, like /healthz, and not rate-limited: they name routes, models and job ids, never keys or
request contents. Each API process answers with its own request counts; the jobs are read from the volume.
"""

from collections import Counter
from collections.abc import Iterable

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.records import JobStatus
from service.api.schemas import RouteStats, RunningJob, Stats
from service.state import StateDep
from service.telemetry import Metrics

router = APIRouter(tags=["operations"])


# `def`: a scrape reads every job record on the volume. Left out of the OpenAPI schema: its body is
# Prometheus' text format, which a JSON schema says nothing useful about.
@router.get("/metrics", include_in_schema=False)
def metrics(state: StateDep) -> Response:
    registry = state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/stats", response_model=Stats, summary="This API process's requests, batching, models and jobs")
def stats(state: StateDep) -> Stats:
    m: Metrics = state.metrics
    records = state.jobs.list()
    forwards, rows = m.batch_summary()
    running = [
        RunningJob(id=r.id, model_name=r.config.model_name, **(r.progress.model_dump() if r.progress else {}))
        for r in records
        if r.status == JobStatus.running
    ]
    return Stats(
        started_at=m.started_at,
        uptime_s=round(m.uptime_s, 3),
        requests=[RouteStats(**s) for s in m.route_stats()],
        images_generated=m.images_generated(),
        forwards=forwards,
        mean_batch_rows=round(rows / forwards, 3) if forwards else None,
        models_loaded=[f"{name}:{version}" for name, version in state.registry.loaded()],
        jobs=_by_status(r.status for r in records),
        running_jobs=running,
        evaluations=_by_status(r.status for r in state.evaluations.list()),
    )


def _by_status(statuses: Iterable[JobStatus]) -> dict[str, int]:
    tally = Counter(statuses)
    return {s.value: tally.get(s, 0) for s in JobStatus}
