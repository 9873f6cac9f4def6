"""`ganserve serve` (what `make run` runs): the whole service on one machine, without Docker.

It starts `ganserve worker` and `ganserve api` as child processes and watches them. The broker is
`GANSERVE_BROKER_URL` when it is set; otherwise the Redis at `GANSERVE_REDIS_URL` when one answers within a
second; otherwise kombu's filesystem transport, in folders under `<GANSERVE_CHECKPOINT_DIR>/broker` (enough for
one machine, nothing to install). The choice is passed to both children as `GANSERVE_BROKER_URL`, so the API
and the worker always agree.

Ctrl-C or SIGTERM stops both. If either child dies, the other is stopped and `serve` exits non-zero.
"""

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from sqlalchemy.exc import SQLAlchemyError

from core.db import DatabaseUnavailable, connect, describe
from core.keys import FIRST_KEY_NAME, KeyFileError, ensure_first_key, import_key_file, old_key_file
from core.settings import Settings

log = logging.getLogger("ganserve.serve")

EMBEDDED_BROKER_URL = "filesystem://"
STOP_GRACE_S = 10.0
POLL_S = 0.5


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


def child_command(verb: str, *args: str) -> list[str]:
    """`ganserve <verb>` in a child process, with this interpreter (no console script needed on PATH)."""
    return [sys.executable, "-m", "ganserve", verb, *args]


def announce_first_key(settings: Settings) -> str | None:
    """Make the first admin key when there is none (core/keys.py `ensure_first_key`) and show it, once. An older
    version's keys file is imported first: a first key stored before it would stop the import for good. Raises
    DatabaseUnavailable (naming GANSERVE_DATABASE_URL) when the database cannot be opened."""
    if not settings.first_key:
        return None
    db = connect(settings.effective_database_url)
    try:
        imported = import_key_file(db, old_key_file(settings.checkpoint_dir))
    except KeyFileError as e:
        log.error("%s; none of its keys is imported until it is fixed", e)
        return None  # no first key either: the operator fixes the file, whose keys would be refused otherwise
    if imported is not None:
        log.warning("%s", imported.message)
    key = ensure_first_key(settings.api_keys, db)
    if key is not None:
        print(
            "\nFirst start: there was no API key, so this admin key was made (only its SHA-256 is kept, in the "
            f"database: {describe(db.url)}).\nIt is shown this once:\n\n    {key}\n\n"
            f"Paste it into the web page's Training tab (http://{settings.host}:{settings.port}/), or "
            f"`export GANSERVE_API_KEY=<key>` for the `ganserve` CLI. Revoke it with "
            f"`ganserve keys revoke --name {FIRST_KEY_NAME}`; GANSERVE_FIRST_KEY=false turns this off.\n",
            file=sys.stderr,
            flush=True,
        )
    return key


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


def serve(settings: Settings) -> int:
    """Run the worker and the API until a signal (0) or until one of them exits (its exit code, at least 1)."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        announce_first_key(settings)
    except DatabaseUnavailable as e:
        log.error("%s", e)
        return 1
    except SQLAlchemyError as e:  # it answered the migration, then failed
        log.error("%s failed: %s", describe(settings.effective_database_url), e)
        return 1
    env = {**os.environ, "GANSERVE_BROKER_URL": choose_broker(settings)}
    log.info(
        "volume %s, data %s, API on http://%s:%d",
        settings.checkpoint_dir.resolve(),
        settings.data_root.resolve(),
        settings.host,
        settings.port,
    )

    return supervise({"worker": (child_command("worker"), env), "API": (child_command("api"), env)})


def run_workers(children: dict[str, dict[str, str]], settings: Settings) -> int:
    """`ganserve worker` on several device groups: one `ganserve worker --name <name>` child per entry, each with
    its environment (its GANSERVE_DEVICES and CUDA_VISIBLE_DEVICES), until a signal (0) or until one exits (its exit
    code, at least 1; the others are stopped: a machine with a broken worker should be looked at, not half-run)."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    return supervise(
        {
            f"worker {name}": (child_command("worker", "--name", name), {**os.environ, **env})
            for name, env in children.items()
        }
    )


def supervise(commands: dict[str, tuple[list[str], dict[str, str]]]) -> int:
    """Run each named command with its environment until a signal (0) or until one exits (its code, at least 1)."""
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, (command, env) in commands.items():
            procs[name] = subprocess.Popen(command, env=env)
        while not stopping:
            for name, proc in procs.items():
                code = proc.poll()
                if code is not None:
                    log.error("the %s exited with code %s; stopping", name, code)
                    return code or 1
            time.sleep(POLL_S)
        return 0
    finally:
        stop(procs)
