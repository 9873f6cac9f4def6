"""`ganserve serve|api|worker`: the service's processes. `api` and `worker` each run one part in this process
(what the Docker image and docker-compose.yml run); `serve` runs both as its children (ganserve/launcher.py)."""

import os
from typing import Annotated, Any

import typer

from core.settings import Settings
from core.tasks import QUEUE
from ganserve.cli.common import fail

APP_FACTORY = "service.main:create_app"
# asyncio's own event loop, not uvloop: saturated, uvloop answered about 1 % of requests hundreds of ms late
# (p99 600 ms where asyncio's was 54 ms, for 9 % fewer requests/s: benchmarks/README.md).
UVICORN_LOOP = "asyncio"
# One job at a time, in the process that trains: the solo pool runs each task in the worker process itself, so
# CUDA is initialised where it is used and never in a parent that forks, and a job never shares the device
# with another. Gossip and mingle are cluster chatter that one queue of long jobs does not need.
WORKER_OPTIONS = ["--pool", "solo", "--concurrency", "1", "-Q", QUEUE, "--without-gossip", "--without-mingle"]

LogLevel = Annotated[
    str | None, typer.Option("--log-level", help="Default: GANSERVE_LOG_LEVEL (info).", show_default=False)
]


def serve() -> None:
    """The whole service on this machine, without Docker: a worker and the API (what `make run` runs).

    The broker is GANSERVE_BROKER_URL, else a Redis that answers at GANSERVE_REDIS_URL, else a folder on the
    volume. On a first start with no API key anywhere, an admin key is made and printed once
    (GANSERVE_FIRST_KEY=false: never). Ctrl-C stops both; if one dies, the other is stopped (exit code ≠ 0)."""
    from ganserve.launcher import serve as run

    raise typer.Exit(run(Settings()))


def _settings(**flags: object) -> Settings:
    """The settings, with each flag given set as its GANSERVE_* variable first: the app (in every uvicorn worker
    process) and the Celery worker read their settings from the environment, and so see the same values."""
    for name, value in flags.items():
        if value is not None:
            os.environ[f"GANSERVE_{name.upper()}"] = str(value)
    return Settings()


def _open_database(settings: Settings) -> None:
    """The database migrated before the process starts serving; one red line and exit 1 when it cannot be."""
    from core.db import DatabaseUnavailable, connect

    try:
        connect(settings.effective_database_url)
    except DatabaseUnavailable as e:
        raise fail(str(e), 1) from None


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.run's arguments for the API (after its app, APP_FACTORY)."""
    return {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,  # processes; each loads its own models and starts its own render process
        "loop": UVICORN_LOOP,
        "log_level": settings.log_level.lower(),
    }


def api(
    host: Annotated[str | None, typer.Option(help="Default: GANSERVE_HOST (127.0.0.1).", show_default=False)] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Default: GANSERVE_PORT (8000).", show_default=False)
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, max=64, help="API processes; default GANSERVE_WORKERS (1).", show_default=False)
    ] = None,
    log_level: LogLevel = None,
    access_log: Annotated[bool, typer.Option(help="uvicorn's line per request.")] = True,
) -> None:
    """The API server alone (what the Docker image runs).

    uvicorn with the app factory service.main:create_app, on asyncio's event loop. Training jobs need a broker
    (GANSERVE_REDIS_URL or GANSERVE_BROKER_URL) and a worker; /generate works without either."""
    import uvicorn

    settings = _settings(host=host, port=port, workers=workers, log_level=log_level)
    _open_database(settings)
    uvicorn.run(APP_FACTORY, access_log=access_log, **uvicorn_options(settings))


def worker_argv(settings: Settings, name: str | None = None) -> list[str]:
    """`celery worker`'s arguments for ganserve's training worker."""
    return ["worker", *WORKER_OPTIONS, "-l", settings.log_level, *(["-n", name] if name else [])]


def worker(
    name: Annotated[
        str | None,
        typer.Option(help="Celery node name, e.g. gpu1@%h (default celery@<host>).", show_default=False),
    ] = None,
    log_level: LogLevel = None,
) -> None:
    """A training worker alone (what docker-compose.yml's workers run).

    Celery, one job at a time: it takes training and evaluation jobs from the broker (GANSERVE_REDIS_URL or
    GANSERVE_BROKER_URL) and writes to the volume (GANSERVE_CHECKPOINT_DIR) that the API reads."""
    from worker.app import celery_app

    settings = _settings(log_level=log_level)
    _open_database(settings)
    raise typer.Exit(celery_app.worker_main(worker_argv(settings, name)) or 0)
