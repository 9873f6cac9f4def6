"""The FastAPI application: `create_app(settings)` builds it, `lifespan` loads the default model.

`uvicorn --factory service.main:create_app` (what `ganserve api` runs) or `uvicorn service.main:app`;
neither loads anything at import: the model is loaded (and warmed up) when the server starts.
"""

import gc
import logging
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from core.legacy import import_volume
from core.settings import Settings, get_settings
from service.api.errors import install_error_handlers
from service.api.routes import datasets, generate, health, interpolate, models, ops, recipes, train, workers
from service.api.routes import web as web_page
from service.background import reaper, webhooks
from service.security.auth import install_security
from service.security.limits import install_proxy_headers
from service.serving.registry import ModelNotFound
from service.state import Tasks, app_state, build_state, install_state
from service.telemetry import JsonFormatter, ObserveRequests, serving_metrics

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
- `POST /datasets`: upload a dataset (an archive of images, or IDX files) for jobs to train on; `GET /datasets`.

Every error is JSON: `{"error": "<code>", "message": "<what is wrong and how to fix it>", "detail": …}`.

**Keys.** `/train` (scope `train`) and model administration such as `POST /models/{name}/evaluate` (scope
`admin`, which implies every scope) need an API key, sent as `Authorization: Bearer <key>` or `X-API-Key`;
`/generate` and `GET /models` are public unless the server sets `GANSERVE_PUBLIC_GENERATE=false`. The
server's operator makes keys with `ganserve keys create --name NAME --scopes train,generate`.
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
    state = app_state(app)
    settings, registry = state.settings, state.registry
    log.info("ganserve %s: volume %s, default model %s", __version__, settings.checkpoint_dir, settings.default_model)
    # The newest tables before the first request; DatabaseUnavailable (naming GANSERVE_DATABASE_URL) makes
    # uvicorn say the application's start-up failed and exit non-zero.
    await run_in_threadpool(state.db.upgrade)
    # The records and models of a version before the database, imported once.
    await run_in_threadpool(import_volume, state.db, settings.checkpoint_dir, state.storage)
    state.keyring.log_status()
    try:
        # Loading runs a warm-up forward; off the event loop like every other forward.
        model = await run_in_threadpool(registry.get_default)  # the pinned version
        log.info("default model %s version %d ready (%s)", model.name, model.version, model.source)
    except ModelNotFound as e:
        log.warning("default model not loaded, /generate without `model` will answer 404 until it exists: %s", e)
    # After the default model: the render process preloads what the API has loaded. Started, not waited for:
    # a request sent before it is ready is answered once it is (service/serving/render_process.py).
    await state.renderer.start()
    settle_garbage_collector()
    # The reaper re-queues jobs whose worker vanished; the deliverer calls finished jobs' webhooks from the
    # outbox on the volume (service/background/); GANSERVE_METRICS_PORT, when set, serves /metrics keyless.
    try:
        async with reaper.running(state), webhooks.running(state), serving_metrics(settings, state.metrics.registry):
            yield
    finally:
        # No request left waiting (the render process answers all it was sent), no render process left running.
        await state.renderer.close()


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


def create_app(settings: Settings | None = None, tasks: Tasks | None = None) -> FastAPI:
    """The app and its state (service/state.py); `tasks`: the broker, for tests that have none."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    app = FastAPI(
        title="ganserve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        telemetry=fastapi_telemetry(os.environ),
    )
    state = build_state(settings, tasks)
    install_state(app, state)
    install_error_handlers(app)
    install_security(app, settings)  # the body-size limit, and the OpenAPI schema's optional keys (docs/operations.md)
    # Request ids, metrics and JSON access lines; added late, so outside the rest: it sees every answer, 413s included.
    app.add_middleware(ObserveRequests, metrics=state.metrics, access_log=settings.log_format == "json")
    install_proxy_headers(app, settings)  # outermost: the real client, for everything inside (docs/operations.md)
    for module in (generate, interpolate, train, datasets, models, recipes, workers, health, ops):
        app.include_router(module.router)
    web_page.install(app)  # the page at / and its /static files (service/static)
    return app


app = create_app()
