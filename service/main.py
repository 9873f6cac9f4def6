"""The FastAPI application: `create_app(settings)` builds it, `lifespan` loads the default model.

`uvicorn --factory service.main:create_app` (what `python -m service` runs) or `uvicorn service.main:app`;
neither loads anything at import: the model is loaded (and warmed up) when the server starts.
"""

import gc
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from core.evaluations import EvaluationStore
from core.jobs import JobStore
from core.settings import Settings, get_settings
from service.api.caching import AnswerCache
from service.api.errors import install_error_handlers
from service.api.routes import generate, health, interpolate, models, ops, train
from service.api.routes import web as web_page
from service.background import reaper, webhooks
from service.security.auth import install_security
from service.serving.cpu_pool import CpuPool
from service.serving.registry import ModelNotFound, ModelRegistry
from service.serving.render_process import ChildConfig, ProcessRenderer
from service.serving.rendering import InProcessRenderer, Renderer
from service.telemetry import JsonFormatter, Metrics, ObserveRequests

log = logging.getLogger(__name__)

try:
    __version__ = version("ganserve")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

DESCRIPTION = """
Train GANs over HTTP and serve their generators as PNGs.

- `GET|POST /generate`: images from a model (`seed` → latent is documented on the route).
- `GET /interpolate`: the walk from one seed's image to another's, as a PNG strip, an APNG or a GIF.
- `POST /train`: start a training job; `GET /train/{id}` follows it; `DELETE /train/{id}` cancels it.
- `GET /models`: the models that can be served (trained ones and the bundled default).

Every error is JSON: `{"error": "<code>", "message": "<what is wrong and how to fix it>", "detail": …}`.

**Keys.** `/train` (scope `train`) and model administration such as `POST /models/{name}/evaluate` (scope
`admin`, which implies every scope) need an API key, sent as `Authorization: Bearer <key>` or `X-API-Key`;
`/generate` and `GET /models` are public unless the server sets `GANSERVE_PUBLIC_GENERATE=false`. The
server's operator makes keys with `python -m service keys create --name NAME --scopes train,generate`.
"""


def configure_logging(level: str, fmt: str = "text") -> None:
    """Our loggers to stdout, once (uvicorn configures only its own loggers); `fmt` `json`: one JSON object a
    line (service/telemetry.py). A later call (another app in the same process) sets the level and format again."""
    logger = logging.getLogger("service")
    logger.setLevel(level.upper())
    handler = next((h for h in logger.handlers if getattr(h, "_ganserve", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stdout)
        handler._ganserve = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    registry: ModelRegistry = app.state.registry
    log.info("ganserve %s: volume %s, default model %s", __version__, settings.checkpoint_dir, settings.default_model)
    app.state.keyring.log_status()
    try:
        # Loading runs a warm-up forward; off the event loop like every other forward.
        model = await run_in_threadpool(registry.get, settings.default_model)
        log.info("default model %s version %d ready (%s)", model.name, model.version, model.source)
    except ModelNotFound as e:
        log.warning("default model not loaded, /generate without `model` will answer 404 until it exists: %s", e)
    # After the default model: the render process preloads what the API has loaded (service/serving/render_process.py).
    await app.state.renderer.start()
    settle_garbage_collector()
    # The reaper re-queues jobs whose worker vanished (service/background/reaper.py); the deliverer calls finished jobs'
    # webhooks from the outbox on the volume (service/background/webhooks.py).
    try:
        async with reaper.running(app), webhooks.running(app):
            yield
    finally:
        # No request left waiting (the render process answers all it was sent; the in-process batcher fails
        # what it still queues with a 503), no thread or render process left running.
        await app.state.renderer.close()
        await run_in_threadpool(app.state.cpu_pool.close)


def settle_garbage_collector() -> None:
    """Take what start-up made (torch, FastAPI, pydantic, the models: about a million objects) out of the
    collector's sight. A full collection scans every tracked object; under /generate load one ran about once a
    second and paused the event loop for up to 237 ms each time, which was the whole p99 of /generate
    (benchmarks/README.md). Frozen, those objects are never scanned again, and never freed: none of them is
    garbage, which is why the collection comes first."""
    gc.collect()
    gc.freeze()


def fastapi_telemetry(environ: Mapping[str, str]) -> dict[str, bool]:
    """FastAPI's own OpenTelemetry hooks, only where OpenTelemetry is configured (an `OTEL_*` variable):
    otherwise they would look up the global providers, which read the environment, on every request (4 % of
    the API process's time under /generate load). ganserve's own metrics are Prometheus (GET /metrics)."""
    on = any(name.startswith("OTEL_") for name in environ)
    return {"tracing": on, "metrics": on, "logs": on}


def make_renderer(
    settings: Settings, registry: ModelRegistry, cpu_pool: CpuPool, on_forward: Callable[[int], None]
) -> Renderer:
    """Where /generate's forwards run (service/serving/rendering.py): a render process, or the API's own threads."""
    max_wait_s = settings.batch_wait_ms / 1000
    if not settings.render_process:
        return InProcessRenderer(cpu_pool, max_wait_s, on_forward=on_forward)
    roots = [(str(root), source) for root, source in registry.roots]
    config = ChildConfig(
        roots, settings.batch_max, max_wait_s, settings.render_threads, settings.log_level, settings.log_format
    )
    return ProcessRenderer(config, preload=registry.loaded, on_forward=on_forward)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    app = FastAPI(
        title="ganserve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        telemetry=fastapi_telemetry(os.environ),
    )
    app.state.settings = settings
    app.state.registry = ModelRegistry.from_settings(settings)
    app.state.cpu_pool = CpuPool()  # the API's own CPU work off the loop (large seed lists, /interpolate's GIFs)
    app.state.answers = AnswerCache(settings.png_cache_size)
    app.state.jobs = JobStore(settings.jobs_dir)
    app.state.evaluations = EvaluationStore(settings.evaluations_dir)
    app.state.metrics = Metrics(app.state.jobs, app.state.evaluations)  # GET /metrics and /stats (service/telemetry.py)
    app.state.renderer = make_renderer(
        settings, app.state.registry, app.state.cpu_pool, app.state.metrics.batch_rows.observe
    )
    if isinstance(app.state.renderer, ProcessRenderer):
        app.state.metrics.watch_renderer(lambda: app.state.renderer.in_flight)
    app.state.tasks = None  # built on the first POST /train (see service.deps)
    install_error_handlers(app)
    install_security(app)  # API keys, rate limits, the body-size limit (README "Security")
    # Request ids, metrics and JSON access lines; added last, so outermost: it sees every answer, 413s included.
    app.add_middleware(ObserveRequests, metrics=app.state.metrics, access_log=settings.log_format == "json")
    for module in (generate, interpolate, train, models, health, ops):
        app.include_router(module.router)
    web_page.install(app)  # the page at / and its /static files (service/static)
    return app


app = create_app()
