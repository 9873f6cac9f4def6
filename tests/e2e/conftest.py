"""What a user starts, started for real: a redis-server of the tests' own (never the machine's db 0), a
Celery worker process and the API under uvicorn, on free ports, sharing a temporary volume and reading a
tiny MNIST-format dataset generated here. The processes' logs are attached to any failing test's report.

The API is given one key of its own (`E2E_KEY`, scope admin, no rate limit) when it has API keys:
`Stack.client()` sends it."""

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 256
STARTUP_TIMEOUT_S = 90.0
# What docker-compose.yml and `ganserve serve` run, each started with this interpreter.
GANSERVE = [sys.executable, "-m", "ganserve"]
E2E_KEY = "e2e-only-key-for-the-tests-own-stacks"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def security_env() -> dict[str, str]:
    """The tests' key (an admin) and no rate limit, where the service has keys and limits."""
    from core.settings import Settings

    env = {}
    if "api_keys" in Settings.model_fields:
        key = {"name": "e2e", "sha256": hashlib.sha256(E2E_KEY.encode()).hexdigest(), "scopes": ["admin"]}
        env["GANSERVE_API_KEYS"] = json.dumps([key])
    if "rate_limit_per_min" in Settings.model_fields:
        env["GANSERVE_RATE_LIMIT_PER_MIN"] = "0"
    return env


def clean_env(**overrides: str) -> dict[str, str]:
    """The test runner's environment without any GANSERVE_* of its own, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANSERVE_")}
    env.update(PYTHONUNBUFFERED="1", GANSERVE_DEVICE="cpu", GANSERVE_LOG_LEVEL="info", **security_env())
    env.update(overrides)
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    retired: bool = False  # stopped on purpose by the test: its exit is no failure

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Stack:
    """Processes under test, their logs, and where to reach them."""

    base_url: str
    volume: Path
    env: dict[str, str]
    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, cmd: list[str]) -> Proc:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as f:
            popen = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_worker(self, name: str = "worker") -> Proc:
        return self.start(name, [*GANSERVE, "worker", "--name", f"{name}@%h"])

    def start_api(self, name: str = "api") -> Proc:
        return self.start(name, [*GANSERVE, "api"])  # on GANSERVE_HOST and GANSERVE_PORT of `env`

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, timeout=30, headers={"Authorization": f"Bearer {E2E_KEY}"}, **kwargs
        )

    def kill(self, proc: Proc, sig: signal.Signals = signal.SIGKILL, timeout_s: float = 30) -> int:
        """Send `sig` to the process's whole group (a worker and anything it started) and wait for it."""
        proc.retired = True
        os.killpg(proc.popen.pid, sig)
        return proc.popen.wait(timeout=timeout_s)

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} (exit {p.popen.poll()}) =====\n{p.text()[-20000:]}" for p in self.procs)

    def wait_healthy(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for p in self.procs:
                if not p.retired and p.popen.poll() is not None:
                    raise RuntimeError(f"{p.name} exited with {p.popen.returncode} during startup\n{self.logs()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"no healthy API at {self.base_url} within {timeout_s:.0f} s\n{self.logs()}")

    def wait_for_log(self, name: str, needle: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        proc = next(p for p in reversed(self.procs) if p.name == name)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in proc.text():
                return
            if proc.popen.poll() is not None:
                break
            time.sleep(0.3)
        raise RuntimeError(f"{name} did not log {needle!r} within {timeout_s:.0f} s\n{self.logs()}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.popen.poll() is None:
                os.killpg(p.popen.pid, signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.popen.pid, signal.SIGKILL)
                p.popen.wait()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Stack):
                report.sections.append(("ganserve processes", value.logs()))


def write_idx_images(path: Path, images: np.ndarray) -> None:
    n, rows, cols = images.shape
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">IIII", 0x00000803, n, rows, cols))
        f.write(images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">II", 0x00000801, len(labels)))
        f.write(labels.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A tiny MNIST in the official file format: 256 28×28 images of bright bars on black."""
    root = tmp_path_factory.mktemp("data")
    (root / "mnist").mkdir()
    rng = np.random.default_rng(0)
    images = np.zeros((N_IMAGES, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, N_IMAGES)
    for img, label in zip(images, labels, strict=True):
        col = 4 + 2 * int(label)
        img[4:24, col : col + 3] = 255
    write_idx_images(root / "mnist" / "t10k-images-idx3-ubyte.gz", images)
    write_idx_labels(root / "mnist" / "t10k-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="session")
def bundled_models_dir(tmp_path_factory) -> Path:
    """The real bundled models when any is built; else an empty folder (the tests serve what they train)."""
    real = ROOT / "service" / "bundled"
    if any(real.glob("*/*/model.safetensors")):
        return real
    return tmp_path_factory.mktemp("bundled")


@dataclass
class RedisServer:
    """A redis-server of the tests' own on a fixed port, which a test may stop and start again. `persistent`:
    with an append-only file, as docker-compose.yml runs it, so its queue survives a restart."""

    workdir: Path
    persistent: bool = False
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed (`make test` installs it with apt)")
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *aof, "--dir", str(self.workdir)]
        with (self.workdir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        import redis

        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis.from_url(self.url(), socket_connect_timeout=1).ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM: Redis's own orderly shutdown (it flushes the append-only file)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def persistent_redis(tmp_path_factory) -> Iterator[RedisServer]:
    """A redis-server with an append-only file, as docker-compose.yml runs it, for one test module; a test may
    `stop()` and `start()` it again on the same port."""
    server = RedisServer(tmp_path_factory.mktemp("redis-aof"), persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def start_stack_(
    redis_url: str, data_root: Path, bundled_models_dir: Path, workdir: Path, **env_overrides: str
) -> Stack:
    """Start a worker and the API against `redis_url`, sharing the volume `workdir/volume`."""
    volume, logs = workdir / "volume", workdir / "logs"
    volume.mkdir(parents=True)
    logs.mkdir()
    port = free_port()
    env = clean_env(
        GANSERVE_REDIS_URL=redis_url,
        GANSERVE_CHECKPOINT_DIR=str(volume),
        GANSERVE_DATA_ROOT=str(data_root),
        GANSERVE_BUNDLED_MODELS_DIR=str(bundled_models_dir),
        GANSERVE_HOST="127.0.0.1",
        GANSERVE_PORT=str(port),
        **env_overrides,
    )
    s = Stack(base_url=f"http://127.0.0.1:{port}", volume=volume, env=env, log_dir=logs)
    try:
        s.start_worker()
        s.start_api()
        s.wait_healthy()
        s.wait_for_log("worker", "ready.")
    except BaseException:
        s.stop()
        raise
    return s


@pytest.fixture
def start_stack(data_root, bundled_models_dir):
    """`start_stack(redis_url, workdir, **env)` for a test that needs a stack of its own (it stops it)."""
    return lambda redis_url, workdir, **env: start_stack_(redis_url, data_root, bundled_models_dir, workdir, **env)


@pytest.fixture(scope="module")
def stack(redis_url, data_root, bundled_models_dir, tmp_path_factory) -> Iterator[Stack]:
    """Redis + a real Celery worker + the API under uvicorn, as `docker compose up` runs them."""
    s = start_stack_(redis_url, data_root, bundled_models_dir, tmp_path_factory.mktemp("stack"))
    try:
        yield s
    finally:
        s.stop()


def start_launcher(data_root: Path, bundled_models_dir: Path, tmp_path: Path, *, keys: bool = True) -> Stack:
    """`ganserve serve` (what `make run` runs) with no Redis listening where it is told to look; `keys=False`:
    no API key configured anywhere, as on a first `make run`."""
    port = free_port()
    env = clean_env(
        GANSERVE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        GANSERVE_CHECKPOINT_DIR=str(tmp_path / "volume"),
        GANSERVE_DATA_ROOT=str(data_root),
        GANSERVE_BUNDLED_MODELS_DIR=str(bundled_models_dir),
        GANSERVE_HOST="127.0.0.1",
        GANSERVE_PORT=str(port),
    )
    if not keys:
        env.pop("GANSERVE_API_KEYS", None)
    s = Stack(base_url=f"http://127.0.0.1:{port}", volume=tmp_path / "volume", env=env, log_dir=tmp_path)
    try:
        s.start("launcher", [*GANSERVE, "serve"])
        s.wait_healthy()
    except BaseException:
        s.stop()
        raise
    return s


@pytest.fixture
def launcher(data_root, bundled_models_dir, tmp_path) -> Iterator[Stack]:
    """`ganserve serve` with the tests' key."""
    s = start_launcher(data_root, bundled_models_dir, tmp_path)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def first_run(data_root, bundled_models_dir, tmp_path) -> Iterator[tuple[Stack, str]]:
    """`ganserve serve` exactly as a first `make run` starts it: no Redis where it looks (so the embedded
    broker), and no API key configured anywhere; returns the stack and the admin key it printed."""
    s = start_launcher(data_root, bundled_models_dir, tmp_path, keys=False)
    try:
        log = next(p.log for p in s.procs if p.name == "launcher")
        found = re.search(r"^ {4}(gsk_\S+)$", log.read_text(), re.MULTILINE)
        assert found, f"the first start printed no key\n{s.logs()}"
        yield s, found.group(1)
    finally:
        s.stop()
