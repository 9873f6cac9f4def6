"""`python -m service` (what `make run` calls): the whole service on one machine, without Docker.

It starts two processes and watches them:

- a Celery worker (`--pool solo --concurrency 1`: one training at a time, in the process that trains, so
  CUDA is never initialised in a parent that forks), and
- the API under uvicorn (`GANSERVE_WORKERS` processes, each with its own models and batchers).

The broker: `GANSERVE_BROKER_URL` when it is set; otherwise the Redis at `GANSERVE_REDIS_URL` when one
answers within a second; otherwise kombu's filesystem transport, in folders under
`<GANSERVE_CHECKPOINT_DIR>/broker` (enough for one machine, nothing to install). The decision is passed to
both children as `GANSERVE_BROKER_URL`, so API and worker always agree.

Ctrl-C or SIGTERM stops both. If either child dies, the other is stopped and this exits non-zero.

`python -m service keys create|list|revoke …` manages the API keys instead (core/keys.py).
"""

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from core.settings import Settings

log = logging.getLogger("ganserve.run")

EMBEDDED_BROKER_URL = "filesystem://"
STOP_GRACE_S = 10.0


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def choose_broker(settings: Settings) -> str:
    if settings.broker_url:
        log.info("broker: %s (from GANSERVE_BROKER_URL)", settings.broker_url)
        return settings.broker_url
    if redis_answers(settings.redis_url):
        log.info("broker: Redis at %s", settings.redis_url)
        return settings.redis_url
    log.warning(
        "no Redis at %s; using the embedded filesystem broker in %s (one machine only; "
        "start Redis or set GANSERVE_BROKER_URL to change this)",
        settings.redis_url,
        settings.broker_dir.resolve(),
    )
    return EMBEDDED_BROKER_URL


def worker_command(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.app:celery_app",
        "worker",
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "-Q",
        "training",
        "--without-gossip",
        "--without-mingle",
        "-l",
        settings.log_level,
    ]


UVICORN_LOOP = "asyncio"  # also in the Dockerfile and docker-compose.yml (tests/test_deploy_files.py)


def api_command(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "service.main:create_app",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--workers",
        str(settings.workers),  # processes; each loads its own models and starts its own render process
        # asyncio's own event loop, not uvloop: saturated, uvloop answered about 1 % of requests hundreds of ms
        # late (p99 600 ms where asyncio's was 54 ms, for 9 % fewer requests/s: benchmarks/README.md).
        "--loop",
        UVICORN_LOOP,
        "--log-level",
        settings.log_level,
    ]


def stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for name, proc in procs.items():
        if proc.poll() is None:
            log.info("stopping the %s (pid %d)", name, proc.pid)
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("the %s did not stop within %.0f s; killing it", name, STOP_GRACE_S)
            proc.kill()
            proc.wait()


def announce_first_key(settings: Settings) -> str | None:
    """Make the first admin key when there is none (core/keys.py `ensure_first_key`) and show it, once."""
    from core.keys import FIRST_KEY_NAME, ensure_first_key

    if not settings.first_key:
        return None
    path = settings.effective_api_keys_file
    key = ensure_first_key(settings.api_keys, path)
    if key is not None:
        print(
            f"\nFirst start: there was no API key, so this admin key was made (only its SHA-256 is kept, in {path}).\n"
            f"It is shown this once:\n\n    {key}\n\n"
            f"Paste it into the web page's Training tab (http://{settings.host}:{settings.port}/), or "
            f"`export GANSERVE_API_KEY=<key>` for the `ganserve` CLI. Revoke it with "
            f"`python -m service keys revoke --name {FIRST_KEY_NAME}`; GANSERVE_FIRST_KEY=false turns this off.\n",
            file=sys.stderr,
            flush=True,
        )
    return key


def main() -> int:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    announce_first_key(settings)
    broker = choose_broker(settings)
    env = {**os.environ, "GANSERVE_BROKER_URL": broker}
    log.info(
        "volume %s, data %s, API on http://%s:%d",
        settings.checkpoint_dir.resolve(),
        settings.data_root.resolve(),
        settings.host,
        settings.port,
    )

    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["worker"] = subprocess.Popen(worker_command(settings), env=env)
        procs["API"] = subprocess.Popen(api_command(settings), env=env)
        while not stopping:
            for name, proc in procs.items():
                code = proc.poll()
                if code is not None:
                    log.error("the %s exited with code %s; stopping", name, code)
                    return code or 1
            time.sleep(0.5)
        return 0
    finally:
        stop(procs)


USAGE = """usage: python -m service                  start the worker and the API (what `make run` runs)
       python -m service keys create --name NAME --scopes train,generate [--file PATH]
       python -m service keys list|revoke …    (python -m service keys --help)"""


def cli(argv: list[str]) -> int:
    if argv[:1] == ["keys"]:
        from core.keys import main as keys_main

        return keys_main(argv[1:])
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if argv:
        print(f"{USAGE}\nerror: unknown arguments {' '.join(argv)!r}", file=sys.stderr)
        return 2
    return main()


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
