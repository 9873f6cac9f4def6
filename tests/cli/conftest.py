"""Fixtures for the client and CLI tests: the real app in-process on a tmp volume with a tiny published model
and fake broker dependencies (no Redis, no worker), built as tests/service builds it, from its svc_support
helpers; the ganserve `Client` wraps FastAPI's TestClient (an httpx.Client) so the same code that talks to a
real server talks to it. Jobs and evaluations never run on it: tests move their records on the volume
themselves. Local training reads a tiny fake MNIST (`tiny_data_root`). Uploads are also sent over a real
socket to `receiver`, an HTTP server that keeps each body on disk as it arrives."""

import gzip
import json
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "service"))  # svc_support, not a package

from svc_support import (
    ADMIN_KEY,
    DEFAULT_MODEL,
    TEST_KEYS,
    FakeSender,
    FakeTasks,
    publish_tiny_model,
)

from core.settings import Settings
from ganserve.cli import common
from ganserve.client import Client
from service.main import create_app


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local CLI reads its settings from GANSERVE_* like the server: point them at the test volume, and
    keep a developer's own server URL or key out of the tests."""
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    monkeypatch.setenv("GANSERVE_CHECKPOINT_DIR", str(tmp_path / "volume"))
    monkeypatch.setenv("GANSERVE_BUNDLED_MODELS_DIR", str(bundled))
    monkeypatch.setenv("GANSERVE_DEFAULT_MODEL", DEFAULT_MODEL)
    for name in ("GANSERVE_SERVER", "GANSERVE_API_KEY", "GANSERVE_BATCH_MAX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables wide enough to show whole ids
    monkeypatch.chdir(tmp_path)  # a local training run writes runs/<name> here


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        checkpoint_dir=tmp_path / "volume",
        bundled_models_dir=tmp_path / "bundled",
        default_model=DEFAULT_MODEL,
        broker_url="filesystem://",  # the rate limiter counts in the process
        api_keys=TEST_KEYS,
    )


@pytest.fixture
def sender() -> FakeSender:
    return FakeSender()


@pytest.fixture
def app(settings: Settings, sender: FakeSender) -> FastAPI:
    publish_tiny_model(settings, DEFAULT_MODEL)
    return create_app(settings, FakeTasks(sender))


@pytest.fixture
def http(app: FastAPI) -> Iterator[TestClient]:
    """Raw HTTP to the app, no key: what the client's answers are compared with."""
    with TestClient(app) as c:  # `with`: runs the lifespan
        yield c


@pytest.fixture
def api(http: TestClient) -> Client:
    """The ganserve client on the in-process app, with the admin key."""
    return Client(api_key=ADMIN_KEY, http=http)


@pytest.fixture
def use_api(api: Client, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[tuple[str | None, str | None]]]:
    """Route the CLI's server commands to `api`; returns the (server, api_key) each `connect` was given."""
    calls: list[tuple[str | None, str | None]] = []

    def connect(server: str | None, api_key: str | None) -> Client:
        calls.append((server, api_key))
        return api

    monkeypatch.setattr(common, "connect", connect)
    return lambda: calls


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mnist/` with 64 t10k images in the official IDX format: bright bars at varying columns, on black."""
    root = tmp_path_factory.mktemp("data")
    (root / "mnist").mkdir()
    images = np.zeros((64, 28, 28), dtype=np.uint8)
    for i, col in enumerate(np.random.default_rng(0).integers(4, 22, size=64)):
        images[i, 4:24, col : col + 3] = 255
    header = struct.pack(">IIII", 0x00000803, *images.shape)
    (root / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
    # with labels, as MNIST comes: its default recipe is class-conditional
    labels = (np.arange(64) % 10).astype(np.uint8)
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">II", 0x801, 64) + labels.tobytes())
    )
    return root


@dataclass
class Received:
    """One request `receiver` took: its path, headers and the file its body was written to."""

    path: str
    headers: dict[str, str]
    body: Path


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that writes every POST's body to disk in chunks, as it arrives, and answers
    201 with `answer`; a body longer than `limit` is refused with a 413 before it is read."""

    url: str
    folder: Path
    answer: dict[str, object] = field(default_factory=lambda: {"id": "ds-000000000000"})
    limit: int | None = None
    received: list[Received] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        receiver = self.server.receiver  # type: ignore[attr-defined]
        length = int(self.headers["Content-Length"])
        if receiver.limit is not None and length > receiver.limit:
            message = f"the body has {length} bytes, over the limit of {receiver.limit}"
            self._answer(413, {"error": "dataset_too_large", "message": message, "detail": {"limit": receiver.limit}})
            return
        body = receiver.folder / f"body-{len(receiver.received)}"
        with body.open("wb") as out:
            left = length
            while left > 0:
                chunk = self.rfile.read(min(64 * 1024, left))
                if not chunk:
                    break
                out.write(chunk)
                left -= len(chunk)
        receiver.received.append(Received(self.path, dict(self.headers.items()), body))
        self._answer(201, receiver.answer)

    def _answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet tests


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    folder = tmp_path / "received"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    found = Receiver(f"http://127.0.0.1:{server.server_address[1]}", folder)
    server.receiver = found  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()
    thread.join()
