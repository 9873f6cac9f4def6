"""`ganserve serve|api|worker`: the service's processes. `api` and `worker` each run one part in this process
(what the Docker image and docker-compose.yml run); `serve` runs both as its children (ganserve/launcher.py)."""

import os
from typing import Annotated, Any

import typer

from core.settings import Settings
from core.tasks import worker_queues
from ganserve.cli.common import fail

APP_FACTORY = "service.main:create_app"
# asyncio's own event loop, not uvloop: saturated, uvloop answered about 1 % of requests hundreds of ms late
# (p99 600 ms where asyncio's was 54 ms, for 9 % fewer requests/s: benchmarks/README.md).
UVICORN_LOOP = "asyncio"
# One job at a time, in the process that trains: the solo pool runs each task in the worker process itself, so
# CUDA is initialised where it is used and never in a parent that forks, and a job never shares the device
# with another. Gossip and mingle are cluster chatter that a few queues of long jobs do not need. The queues (-Q)
# are the worker's class's (core/tasks.py `worker_queues`).
WORKER_OPTIONS = ["--pool", "solo", "--concurrency", "1", "--without-gossip", "--without-mingle"]

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
        # X-Forwarded-For is read by the app itself, from GANSERVE_TRUSTED_PROXIES only (service/security/limits.py
        # `install_proxy_headers`); uvicorn's own reading (which trusts 127.0.0.1, or FORWARDED_ALLOW_IPS) would
        # read the header a second time, by another rule.
        "proxy_headers": False,
    }


def metrics_port_conflict(settings: Settings) -> str | None:
    """Why these settings cannot serve the /metrics port, or None. Each API process counts its own requests and
    the port can be bound by one process only: with several, it would show one process's counts as the whole
    server's, so it is refused rather than half-served."""
    if settings.metrics_port and settings.workers > 1:
        return (
            f"GANSERVE_METRICS_PORT={settings.metrics_port} serves one API process's metrics, and GANSERVE_WORKERS="
            f"{settings.workers} starts {settings.workers}: run one API process per container or host "
            "(GANSERVE_WORKERS=1, more replicas, each scraped on its own port), or set GANSERVE_METRICS_PORT=0 and "
            "scrape GET /metrics with an admin key (docs/operations.md, Observability)"
        )
    if settings.metrics_port and settings.metrics_port == settings.port:
        return f"GANSERVE_METRICS_PORT={settings.metrics_port} is also GANSERVE_PORT: choose another port, or 0 (off)"
    return None


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
    (GANSERVE_REDIS_URL or GANSERVE_BROKER_URL) and a worker; /generate works without either. Behind a load
    balancer set GANSERVE_TRUSTED_PROXIES (the app reads X-Forwarded-For from those only); GANSERVE_METRICS_PORT
    needs one API process (GANSERVE_WORKERS=1)."""
    import uvicorn

    settings = _settings(host=host, port=port, workers=workers, log_level=log_level)
    if (conflict := metrics_port_conflict(settings)) is not None:
        raise fail(conflict, 2)
    _open_database(settings)
    uvicorn.run(APP_FACTORY, access_log=access_log, **uvicorn_options(settings))


def worker_argv(settings: Settings, name: str | None = None, devices: list[int] | None = None) -> list[str]:
    """`celery worker`'s arguments for ganserve's training worker on `devices` (none: a CPU worker)."""
    queues = ",".join(worker_queues(len(devices or [])))
    return ["worker", *WORKER_OPTIONS, "-Q", queues, "-l", settings.log_level, *(["-n", name] if name else [])]


def node_name(name: str | None, devices: list[int], several: bool) -> str:
    """The Celery node name of the worker on `devices`: `name` as given for a lone worker; with several, `name`'s
    part before the @ followed by the devices (`gpu@%h` → `gpu-0-1@%h`); by default `cpu@%h`, `gpu0@%h`, `gpu0-1@%h`."""
    if name and not several:
        return name
    ids = "-".join(map(str, devices))
    if name:
        node, _, host = name.partition("@")
        return f"{node}-{ids}@{host or '%h'}"
    return f"gpu{ids}@%h" if devices else "cpu@%h"


def worker(
    name: Annotated[
        str | None,
        typer.Option(
            help="Celery node name, e.g. gpu1@%h (default cpu@<host>, or gpu<devices>@<host>); with several device "
            "groups, each worker's is this name with its devices.",
            show_default=False,
        ),
    ] = None,
    log_level: LogLevel = None,
) -> None:
    """Training workers (what docker-compose.yml's workers run): one process per device group.

    Celery, one job at a time per process: each takes training jobs its devices can run and evaluations from the
    broker (GANSERVE_REDIS_URL or GANSERVE_BROKER_URL). GANSERVE_DEVICES=0,1,2,3 with GANSERVE_GPUS_PER_WORKER=2
    starts two processes (devices 0,1 and 2,3); no devices: one CPU worker. Each advertises itself (GET /workers)."""
    from worker.registry import DeviceError, device_groups, process_env, resolve_devices

    settings = _settings(log_level=log_level)
    try:
        groups = device_groups(resolve_devices(settings), settings.gpus_per_worker)
    except DeviceError as e:
        raise fail(str(e), 2) from None
    _open_database(settings)
    several = len(groups) > 1
    if several:
        from ganserve.launcher import run_workers

        # Each child is a worker of one group, which applies its devices itself (process_env), once.
        children = {
            node_name(name, group, several): {
                "GANSERVE_DEVICES": ",".join(map(str, group)),
                "GANSERVE_GPUS_PER_WORKER": str(len(group)),
            }
            for group in groups
        }
        raise typer.Exit(run_workers(children, settings))
    try:  # before the worker's settings are read, and before CUDA starts
        os.environ.update(process_env(groups[0], os.environ.get("CUDA_VISIBLE_DEVICES")))
    except DeviceError as e:
        raise fail(str(e), 2) from None
    from worker.app import celery_app

    argv = worker_argv(settings, node_name(name, groups[0], several), groups[0])
    raise typer.Exit(celery_app.worker_main(argv) or 0)
