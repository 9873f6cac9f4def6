"""The API's state: one typed object, `AppState`, made once by `build_state(settings)` when the app is created,
and reached by every route through one dependency, `StateDep` (vLLM's `app.state` behind a small accessor,
typed as full-stack-fastapi-template's `Annotated` dependencies are).

Everything with a side effect outside the process — the broker — sits behind `AppState.tasks`, which tests
replace with a fake (`create_app(settings, tasks=…)`); nothing else is faked."""

from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import Depends, FastAPI, Request

from core.db import Database, database
from core.evaluations import EvaluationStore
from core.jobs import JobStore
from core.keys import old_key_file
from core.settings import Settings
from core.storage import Storage, open_storage
from core.submissions import Submissions
from core.tasks import TaskQueue
from core.workers import WorkerStore
from service.api.caching import AnswerCache
from service.security.keyring import KeyRing
from service.security.limits import RateLimiter, make_rate_limiter
from service.serving.registry import ModelRegistry
from service.serving.render_process import ChildConfig, ProcessRenderer, child_settings
from service.telemetry import Metrics


class Tasks(Protocol):
    """What the API needs of the broker (core/tasks.py `TaskQueue`)."""

    def send(self, task: str, record_id: str, queue: str | None = None) -> None: ...

    def check(self) -> str: ...


@dataclass
class AppState:
    settings: Settings
    db: Database  # the records of truth (core/db.py)
    registry: ModelRegistry  # the models that can be served, loaded on first use (service/serving/registry.py)
    renderer: ProcessRenderer  # the render process: /generate's and /interpolate's forwards and encoding
    answers: AnswerCache  # encoded /generate answers of explicit seeds (service/api/caching.py)
    jobs: JobStore  # training jobs' records (core/jobs.py)
    evaluations: EvaluationStore
    submissions: Submissions  # what each key submitted: queue limits, Idempotency-Key
    keyring: KeyRing  # the API keys (service/security/auth.py)
    rate_limiter: RateLimiter
    metrics: Metrics  # GET /metrics and /stats (service/telemetry.py)
    tasks: Tasks  # the broker: sends training and evaluation tasks (core/tasks.py)
    storage: Storage  # blobs: jobs' sample grids, evaluations' images (core/storage.py)
    workers: WorkerStore  # the workers as they advertise themselves: routing, GET /workers (core/workers.py)


def build_state(settings: Settings, tasks: Tasks | None = None) -> AppState:
    """The app's state from its settings; nothing is loaded or connected yet (the lifespan starts what runs)."""
    db = database(settings.effective_database_url)  # migrated by the lifespan, before the first request
    jobs = JobStore(db)
    evaluations = EvaluationStore(db, settings.evaluations_dir)
    registry = ModelRegistry.from_settings(settings, evaluations=evaluations)
    workers = WorkerStore(db, settings.worker_heartbeat_s)
    metrics = Metrics(jobs, evaluations, workers)
    renderer = _renderer(settings, registry, metrics)
    return AppState(
        settings=settings,
        db=db,
        registry=registry,
        renderer=renderer,
        answers=AnswerCache(settings.png_cache_size),
        jobs=jobs,
        evaluations=evaluations,
        submissions=Submissions(db),
        keyring=KeyRing(settings.api_keys, db, old_key_file=old_key_file(settings.checkpoint_dir)),
        rate_limiter=make_rate_limiter(settings),
        metrics=metrics,
        tasks=tasks if tasks is not None else TaskQueue(settings),
        storage=open_storage(settings.effective_storage_url, settings.s3_endpoint_url),
        workers=workers,
    )


def _renderer(settings: Settings, registry: ModelRegistry, metrics: Metrics) -> ProcessRenderer:
    """The render process's side in the API (service/serving/render_process.py), started by the lifespan."""
    max_wait_s = settings.batch_wait_ms / 1000
    config = ChildConfig(
        child_settings(settings),
        settings.batch_max,
        max_wait_s,
        settings.render_threads,
        settings.log_level,
        settings.log_format,
    )
    renderer = ProcessRenderer(config, preload=registry.loaded, on_forward=metrics.batch_rows.observe)
    metrics.watch_renderer(lambda: renderer.in_flight)
    return renderer


def install_state(app: FastAPI, state: AppState) -> None:
    app.state.ganserve = state


def app_state(app: FastAPI) -> AppState:
    """The state of `app` (outside a request: the lifespan, tests)."""
    return app.state.ganserve


# `async`: FastAPI runs a plain `def` dependency in its thread pool, a hop that costs /generate more than its
# forward does.
async def get_state(request: Request) -> AppState:
    return request.app.state.ganserve


StateDep = Annotated[AppState, Depends(get_state)]
