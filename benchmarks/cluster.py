"""A ganserve deployment spread over hosts, started on this one machine: a PostgreSQL database of its own, an S3
server (moto's) with a bucket of its own, a redis-server of its own, and any number of API processes
(`ganserve api`) and workers (`ganserve worker`), each with a private home folder (its GANSERVE_CHECKPOINT_DIR and
GANSERVE_CACHE_DIR, and its working directory) and no folder shared with another. The one exception a caller may
ask for is a read-only data root of the built-in datasets (GANSERVE_DATA_ROOT), as a fleet would mount one;
without it, each host's data root is an empty folder of its own (uploaded datasets come from storage).

Used by tests/e2e/test_multi_host.py and benchmarks/multi_host.py (one harness: the test keeps it working).

    with cluster(workdir, data_root, apis=2, workers=2) as c:
        with c.client(c.apis[0]) as api: ...
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

# The PostgreSQL server the cluster's database is made on (and dropped from); the tests' variable.
POSTGRES_SERVER = os.environ.get("GANSERVE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "ganserve-cluster",
    "AWS_SECRET_ACCESS_KEY": "ganserve-cluster-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
T = TypeVar("T")
GANSERVE = [sys.executable, "-m", "ganserve"]
STARTUP_TIMEOUT_S = 90.0


class Unavailable(RuntimeError):
    """Something the cluster needs is not on this machine (redis-server, a PostgreSQL server)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    ready: Callable[[], T], timeout_s: float, what: str, proc: subprocess.Popen | None = None, every_s: float = 0.25
) -> T:
    """Poll `ready()` until it returns something true, and return that; raises RuntimeError naming `what` after
    `timeout_s`, or when `proc` exits."""
    deadline = time.monotonic() + timeout_s
    while not (value := ready()):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(every_s)
    return value


def _answers(check) -> bool:
    try:
        check()
    except Exception:
        return False
    return True


def _ready(host: "Host") -> bool:
    if host.role == "worker":
        return "ready." in host.text()
    try:
        return httpx.get(f"{host.url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(popen: subprocess.Popen, timeout_s: float = 15) -> None:
    """SIGTERM to the process's group, then SIGKILL if it has not gone within `timeout_s`."""
    if popen.poll() is None:
        os.killpg(popen.pid, signal.SIGTERM)
    try:
        popen.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()


def _spawn(cmd: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


# --- the shared services --------------------------------------------------------------------------------------


@contextmanager
def postgres_database(server: str) -> Iterator[str]:
    """A new database on the PostgreSQL server at `server`, dropped at the end; its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    name = f"ganserve_cluster_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as e:
        admin.dispose()
        raise Unavailable(f"no PostgreSQL server at {server} (GANSERVE_TEST_POSTGRES): {e.orig}") from None
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            conn.execute(text(f'DROP DATABASE "{name}"'))
        admin.dispose()


@contextmanager
def s3_server(workdir: Path) -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1, a process of its own; its endpoint URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = _spawn(cmd, workdir / "s3.log", workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(lambda: httpx.get(url, timeout=1)), 30, f"moto's S3 server on {url}", proc)
        yield url
    finally:
        _stop(proc)


def make_bucket(endpoint: str) -> str:
    """A new bucket on the S3 server; the storage URL of a prefix in it."""
    import s3fs

    bucket = f"ganserve-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(
        endpoint_url=endpoint,
        key=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        skip_instance_cache=True,
    )
    fs.mkdir(bucket)
    return f"s3://{bucket}/ganserve"


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A redis-server of the cluster's own on a free port (no persistence); its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise Unavailable("redis-server is not installed (`make test-tools` installs it with apt)")
    import redis

    port = free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = _spawn(cmd, workdir / "redis.log", workdir)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        ping = lambda: redis.Redis.from_url(url, socket_connect_timeout=1).ping()  # noqa: E731
        wait_until(lambda: _answers(ping), 15, f"redis-server on port {port}", proc)
        yield url
    finally:
        _stop(proc)


# --- the ganserve processes -----------------------------------------------------------------------------------


@dataclass
class Host:
    """One ganserve process and its private folder, as if on a host of its own."""

    name: str
    role: str  # "api" or "worker"
    home: Path  # its working directory, GANSERVE_CHECKPOINT_DIR (home/volume), GANSERVE_CACHE_DIR (home/cache)
    popen: subprocess.Popen[bytes]
    log: Path
    url: str | None = None  # an API's base URL
    killed: bool = False  # stopped on purpose: its exit is no failure

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Cluster:
    """The shared services' addresses, the configuration every host is given, and the hosts started."""

    workdir: Path
    env: dict[str, str]  # what every ganserve process gets (without its private folders)
    key: str  # an admin key, made with `ganserve keys create` in the database
    hosts: list[Host] = field(default_factory=list)

    @property
    def apis(self) -> list[Host]:
        return [h for h in self.hosts if h.role == "api" and not h.killed]

    @property
    def workers(self) -> list[Host]:
        return [h for h in self.hosts if h.role == "worker" and not h.killed]

    def _home(self, name: str) -> tuple[Path, dict[str, str]]:
        home = self.workdir / name
        (home / "volume").mkdir(parents=True)
        (home / "data").mkdir()
        env = {
            "GANSERVE_DATA_ROOT": str(home / "data"),  # unless the cluster has a shared one
            **self.env,
            "GANSERVE_CHECKPOINT_DIR": str(home / "volume"),
            "GANSERVE_CACHE_DIR": str(home / "cache"),
        }
        return home, env

    def start_api(self, name: str, wait: bool = True) -> Host:
        """`ganserve api` on a free port; `wait`: until its /readyz answers 200."""
        home, env = self._home(name)
        port = free_port()
        env.update(GANSERVE_HOST="127.0.0.1", GANSERVE_PORT=str(port))
        cmd = [*GANSERVE, "api", "--no-access-log"]  # the tests' and benchmarks' polling would fill the log
        host = Host(name, "api", home, _spawn(cmd, home / "log", home, env), home / "log")
        host.url = f"http://127.0.0.1:{port}"
        self.hosts.append(host)
        if wait:
            self.wait_ready(host)
        return host

    def start_worker(self, name: str, wait: bool = True) -> Host:
        """`ganserve worker` named `name@<host>`; `wait`: until Celery says it is ready."""
        home, env = self._home(name)
        cmd = [*GANSERVE, "worker", "--name", f"{name}@%h"]
        host = Host(name, "worker", home, _spawn(cmd, home / "log", home, env), home / "log")
        self.hosts.append(host)
        if wait:
            self.wait_ready(host)
        return host

    def wait_ready(self, *hosts: Host) -> None:
        """Until every one of `hosts` is ready: an API answers /readyz with 200, a worker has logged `ready.`."""
        for host in hosts:
            try:
                wait_until(lambda h=host: _ready(h), STARTUP_TIMEOUT_S, f"{host.name} ready", host.popen)
            except RuntimeError as e:
                raise RuntimeError(f"{e}\n{self.logs()}") from None

    def client(self, api: Host, **kwargs) -> httpx.Client:
        assert api.url is not None
        return httpx.Client(base_url=api.url, timeout=30, headers={"Authorization": f"Bearer {self.key}"}, **kwargs)

    def running(self, job: dict) -> Host:
        """The worker a job's record says runs it (`host:pid`)."""
        pid = int(str(job["worker"]).rsplit(":", 1)[1])
        return next(h for h in self.hosts if h.popen.pid == pid)

    def kill(self, host: Host, sig: signal.Signals = signal.SIGKILL) -> int:
        """`sig` to the host's process group (the process and anything it started); its exit status."""
        host.killed = True
        os.killpg(host.popen.pid, sig)
        return host.popen.wait(timeout=30)

    def logs(self) -> str:
        return "\n".join(f"===== {h.name} (exit {h.popen.poll()}) =====\n{h.text()[-20000:]}" for h in self.hosts)

    def stop(self) -> None:
        for host in reversed(self.hosts):
            if host.popen.poll() is None:
                os.killpg(host.popen.pid, signal.SIGTERM)
        for host in reversed(self.hosts):
            _stop(host.popen)


def base_env(
    database_url: str, storage_url: str, s3_endpoint: str, redis_url: str, data_root: Path | None, threads: int
) -> dict[str, str]:
    """The configuration every host gets: the caller's environment without any GANSERVE_* or AWS_* of its own,
    the shared services, the shared data root if any, and `threads` for torch (OMP_NUM_THREADS: the training loop
    keeps it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GANSERVE_", "AWS_"))}
    env.update(
        S3_CREDENTIALS,
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS=str(threads),
        GANSERVE_DATABASE_URL=database_url,
        GANSERVE_STORAGE_URL=storage_url,
        GANSERVE_S3_ENDPOINT_URL=s3_endpoint,
        GANSERVE_REDIS_URL=redis_url,
        GANSERVE_DEVICE="cpu",
        GANSERVE_LOG_LEVEL="info",
        GANSERVE_RENDER_THREADS=str(threads),
        GANSERVE_FIRST_KEY="false",
        GANSERVE_RATE_LIMIT_PER_MIN="0",  # every client here is one address
        GANSERVE_MAX_QUEUED_PER_KEY="1000",
    )
    if data_root is not None:
        env["GANSERVE_DATA_ROOT"] = str(Path(data_root).resolve())
    return env


def admin_key(env: dict[str, str], workdir: Path) -> str:
    """`ganserve keys create` against the cluster's database (which it migrates): a new admin key."""
    home = workdir / "admin"
    home.mkdir()
    env = {**env, "GANSERVE_CHECKPOINT_DIR": str(home / "volume")}
    cmd = [*GANSERVE, "keys", "create", "--name", "cluster-admin", "--scopes", "admin"]
    done = subprocess.run(cmd, cwd=home, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"`ganserve keys create` failed ({done.returncode}): {done.stderr}")
    return done.stdout.strip()


@contextmanager
def cluster(
    workdir: Path,
    data_root: Path | None = None,
    *,
    apis: int = 2,
    workers: int = 2,
    threads: int = 1,
    postgres_server: str = POSTGRES_SERVER,
    s3_endpoint: str | None = None,
    **settings: str,
) -> Iterator[Cluster]:
    """Start the shared services and `apis` API processes and `workers` workers (`api1`…, `worker1`…), each with
    a private folder under `workdir`; `data_root`: a data root all of them read (else each has an empty one of its
    own); `settings`: more GANSERVE_* variables for every host. The database is made
    on `postgres_server` (an admin URL), the bucket on the S3 server at `s3_endpoint` (one is started when None).
    Everything started is stopped, and the database dropped, at the end. Raises Unavailable when redis-server or
    the PostgreSQL server is missing."""
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        database_url = stack.enter_context(postgres_database(postgres_server))
        redis_url = stack.enter_context(redis_server(workdir))
        endpoint = s3_endpoint or stack.enter_context(s3_server(workdir))
        env = {**base_env(database_url, make_bucket(endpoint), endpoint, redis_url, data_root, threads), **settings}
        c = Cluster(workdir, env, admin_key(env, workdir))
        stack.callback(c.stop)
        started = [c.start_worker(f"worker{i}", wait=False) for i in range(1, workers + 1)]
        started += [c.start_api(f"api{i}", wait=False) for i in range(1, apis + 1)]
        c.wait_ready(*started)
        yield c
