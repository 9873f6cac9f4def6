"""The render process: a child of each API process that renders and encodes /generate's and /interpolate's
images, so that the API's event loop never runs a forward or touches a pixel (why: benchmarks/README.md).

    API event loop ──request──▶ render process: read what came → Batching (service/serving/batching.py):
    (ProcessRenderer)◀─answer──  padded forwards of batch_rows, then encoding → write the answers back

Both sides are here; the bytes between them are service/serving/wire.py, and what happens to a request in the
render process is `Batching`, which this file only feeds from the socket and drains into it.

`ProcessRenderer` (the API's side) starts the render process with the app and does not wait for it: requests
sent before it is ready are answered once it is. It loads models from the same volume through its own
`ModelRegistry` (bounded as the API's): those the API has loaded when it starts, any other on its first
request. Each request names the weights' SHA-256 the API resolved (and put in its ETag): the render process
renders with exactly those, reloading a (name, version) whose record names other weights now, or fails the
request (ModelGone: 503, retry) — never other weights under that ETag. A render process
that dies is started again by the next request; the requests it held are answered 503 with Retry-After. It
exits when its socket closes (the API closed it, or died), after answering everything it was sent.
"""

import asyncio
import contextlib
import gc
import itertools
import json
import logging
import os
import select
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast

import torch

from core.settings import Settings
from service.serving import wire
from service.serving.batching import Batching, Request, Rows
from service.serving.encoding import Form
from service.serving.registry import LoadedModel, ModelNotFound, ModelRegistry

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0  # imports and loading the preloaded models; on a slow disk, torch's import alone is seconds
STOP_TIMEOUT_S = 30.0  # a forward in progress is let finish


class RendererClosed(RuntimeError):
    """The request was not rendered, and may be sent again: the server is shutting down, or the render
    process has just died. `code` is the 503's error code."""

    code = "shutting_down"


class RendererLost(RendererClosed):
    """The render process died (or could not be started again) with the request unanswered: retry."""

    code = "render_process_restarting"


class ModelGone(RendererClosed):
    """The render process could not load the version the API resolved (removed or broken since): retry."""

    code = "model_unavailable"


class RenderFailed(RuntimeError):
    """The forward or the encoding raised in the render process (a bug, or a broken model): its message."""


@dataclass(frozen=True)
class ChildConfig:
    """What the render process needs, passed on its command line as JSON."""

    settings: dict[str, Any]  # where the API's registry finds models (REGISTRY_SETTINGS), so the child finds the same
    batch_rows: int
    max_wait_s: float
    threads: int = 1  # torch's intra-op threads
    log_level: str = "info"
    log_format: str = "text"  # or "json", as the API's (GANSERVE_LOG_FORMAT)
    preload: list[tuple[str, int]] = field(default_factory=list)  # loaded (and warmed up) before it says ready

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ChildConfig":
        return cls(**json.loads(text))  # pairs come back as lists: both are unpacked the same


REGISTRY_SETTINGS = {
    "checkpoint_dir",
    "database_url",
    "storage_url",
    "s3_endpoint_url",
    "cache_dir",
    "cache_max_bytes",
    "bundled_models_dir",
    "default_model",  # kept loaded whatever else is asked for (the registry's bound spares it)
    "default_model_version",
    "model_cache_max_models",
    "model_cache_max_bytes",
    "unknown_model_ttl_s",
}


def child_settings(settings: Settings) -> dict[str, Any]:
    """The settings the render process builds its registry from: the API's own (not the environment's)."""
    return settings.model_dump(mode="json", include=REGISTRY_SETTINGS)


# --- the API's side -----------------------------------------------------------------------------------------


class _Link(asyncio.Protocol):
    """The API's end of the socket: frames in, each resolving its request's future."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_forward: Callable[[int], None] | None):
        self.ready: asyncio.Future[int] = loop.create_future()  # the render process's pid, once it has loaded
        self.closed: asyncio.Future[None] = loop.create_future()
        self.on_forward = on_forward
        self.pending: dict[int, asyncio.Future[list[bytes]]] = {}
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.ending = False
        self.outbox: list[bytes] = []
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of asyncio's, and works

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        for body in wire.split_frames(self._buffer):
            self._handle(body)

    def send(self, frame: bytes) -> None:
        """Queue a frame; the frames of one turn of the event loop go out in one write (one system call)."""
        if self.lost or self.ending:
            raise RendererClosed("the render process is stopping")
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self.flush)
        self.outbox.append(frame)

    def flush(self) -> None:
        if self.outbox and self.transport is not None and not self.lost:
            self.transport.write(b"".join(self.outbox))
        self.outbox.clear()

    def end(self) -> None:
        """What is queued, then the end of the stream: the render process answers all it got, then exits."""
        self.flush()
        self.ending = True
        if self.transport is not None and not self.lost:
            self.transport.write_eof()

    def _handle(self, body: bytes) -> None:
        kind = body[0]
        if kind == wire.ANSWER_KIND:
            rid, blobs = wire.decode_answer(body)
            future = self.pending.pop(rid, None)
            if future is not None and not future.done():  # done: its caller went away
                future.set_result(blobs)
        elif kind == wire.FAILURE_KIND:
            failure = wire.decode_failure(body)
            future = self.pending.pop(failure.rid, None)
            if future is not None and not future.done():
                future.set_exception((ModelGone if failure.kind == "model" else RenderFailed)(failure.message))
        elif kind == wire.FORWARD_KIND:
            if self.on_forward is not None:
                self.on_forward(wire.decode_count(body))
        elif kind == wire.READY_KIND:
            if not self.ready.done():
                self.ready.set_result(wire.decode_count(body))
        else:
            raise RuntimeError(f"render process: unknown frame kind {kind!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        error = RendererLost("the render process stopped; the request was not answered")
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)
        self.pending.clear()
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: nobody need be waiting for it
        if not self.closed.done():
            self.closed.set_result(None)


class ProcessRenderer:
    """Starts the render process (`start()`, at app startup), sends it requests, restarts it if it died."""

    def __init__(
        self,
        config: ChildConfig,
        preload: Callable[[], list[tuple[str, int]]] = list,
        on_forward: Callable[[int], None] | None = None,
    ):
        self.config = config
        self.preload = preload  # asked at every start: the models the API has loaded by then
        self.on_forward = on_forward
        self.pid: int | None = None
        self._link: _Link | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock | None = None
        self._closed = False
        self._ids = itertools.count()

    @property
    def ready(self) -> bool:
        """The render process has loaded its models and takes requests (for /readyz)."""
        link = self._link
        return link is not None and not link.lost and link.ready.done()

    async def ensure_running(self) -> None:
        """Start a render process when none runs (the last one died and no request has come since): /readyz
        calls it, so that an orchestrator that holds traffic back until ready never waits forever."""
        if not self._closed and (self._link is None or self._link.lost):
            await self._ensure()

    @property
    def in_flight(self) -> int:
        """Requests sent to the render process and not answered yet (a Prometheus gauge)."""
        link = self._link
        return 0 if link is None else len(link.pending)

    async def start(self) -> None:
        """At app startup (again after a `close()`: a test client may run the lifespan more than once). Starts
        the render process without waiting for it to load its models: what is sent before, it answers after."""
        self._closed = False
        self._starting = asyncio.Lock()  # of this event loop
        await self._ensure()

    async def _ensure(self) -> None:
        assert self._starting is not None, "start() first"
        async with self._starting:
            if self._closed:
                raise RendererClosed("the server is shutting down")
            if self._link is not None and not self._link.lost:
                return
            if self._proc is not None:  # it died (its socket closed): what became of it, then another
                code = await asyncio.to_thread(_reap, self._proc, 5.0)
                log.error("the render process (pid %s) stopped (exit %s); starting another", self._proc.pid, code)
            await self._spawn()

    async def _spawn(self) -> None:
        config = replace(self.config, preload=self.preload())
        ours, theirs = socket.socketpair()
        cmd = [sys.executable, "-m", "service.serving.render_process", str(theirs.fileno()), config.to_json()]
        try:
            # Its output joins the API's (the same terminal, or the container's log).
            # OMP_NUM_THREADS as well as torch.set_num_threads: read when OpenMP starts, before any torch code.
            env = {**os.environ, "OMP_NUM_THREADS": str(config.threads)}
            proc = await asyncio.to_thread(subprocess.Popen, cmd, pass_fds=(theirs.fileno(),), env=env)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        _, link = await loop.create_unix_connection(lambda: _Link(loop, self.on_forward), sock=ours)
        self._proc, self._link, self.pid = proc, link, proc.pid
        self._watch = asyncio.ensure_future(self._watch_start(link, proc, len(config.preload)))

    async def _watch_start(self, link: _Link, proc: subprocess.Popen[bytes], preloaded: int) -> None:
        """Log when the render process is ready; stop one that is not within START_TIMEOUT_S (what it holds
        is then answered 503, and the next request starts another)."""
        try:
            await asyncio.wait_for(asyncio.shield(link.ready), START_TIMEOUT_S)
        except TimeoutError:
            log.error("the render process (pid %d) did not start within %.0f s; stopping it", proc.pid, START_TIMEOUT_S)
            proc.kill()
        except RendererClosed:
            pass  # it died while starting: the next request's _ensure logs it and starts another
        else:
            log.info("render process %d ready (%d model(s) preloaded)", proc.pid, preloaded)

    async def render(
        self,
        model: LoadedModel,
        rows: Rows,
        labels: list[int] | None,
        generators: list[int] | None,
        form: Form,
        duration_ms: int = 100,
    ) -> list[bytes] | bytes:
        """The request's answer (service/serving/encoding.py `finish`). Raises RendererClosed (a 503: retry)
        when it was not rendered, RenderFailed when rendering raised."""
        link = self._link
        if self._closed:
            raise RendererClosed("the server is shutting down")
        if link is None or link.lost:
            try:
                await self._ensure()
            except OSError as e:  # it could not be started again: this request is a 503, not a 500
                raise RendererLost(f"the render process could not be started again ({e})") from None
            link = self._link
            assert link is not None and link.transport is not None
        rid = next(self._ids)
        future: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        # The weights' SHA-256 too: the render process serves exactly the weights the API resolved (and put in
        # the ETag), or fails the request (ModelGone, a 503 to retry), never other weights under that ETag.
        request = Request(
            rid, model.name, model.version, rows, labels, generators, form, duration_ms, model.weights_sha256 or None
        )
        # Sent first (it raises if the process is stopping); the answer cannot come before the frame is flushed.
        link.send(wire.encode_request(request))
        link.pending[rid] = future
        try:
            blobs = await future
        finally:
            link.pending.pop(rid, None)
        return blobs if form == "pngs" else blobs[0]

    async def close(self) -> None:
        """Stop taking requests; the render process answers every request it was sent, then exits (one that
        has not finished starting and holds no request is stopped at once)."""
        self._closed = True
        link, proc, watch = self._link, self._proc, self._watch
        if link is not None and link.transport is not None and not link.lost:
            if not link.ready.done() and not link.pending and proc is not None:
                proc.kill()  # nothing to answer: not worth the rest of its start-up
                link.transport.close()
            else:
                link.end()
                try:
                    await asyncio.wait_for(asyncio.shield(link.closed), START_TIMEOUT_S + STOP_TIMEOUT_S)
                except TimeoutError:
                    link.transport.close()
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if proc is not None:
            await asyncio.to_thread(_reap, proc)
        self._link = self._proc = self._watch = None


def _reap(proc: subprocess.Popen[bytes], grace_s: float = STOP_TIMEOUT_S) -> int:
    try:
        return proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


# --- the render process -------------------------------------------------------------------------------------


def serve(sock: socket.socket, batching: Batching) -> None:
    """Until the API closes its end: read requests into `batching`, render when it is due, write the answers.

    One thread and no other on purpose (benchmarks/README.md): reading, rendering and writing take turns."""
    # poll, not select: the socket keeps the API process's descriptor number, which may exceed FD_SETSIZE.
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    buffer = bytearray()
    out: list[bytes] = []
    reading = True
    while reading or batching.waiting:
        if reading:
            timeout = batching.wait_s()
            if poll.poll(None if timeout is None else timeout * 1000):
                data = sock.recv(1 << 20)
                reading = bool(data)  # b"": the API has closed its end; what it sent is answered first
                buffer += data
                for body in wire.split_frames(buffer):
                    failure = batching.add(wire.decode_request(body))
                    if failure is not None:
                        out.append(wire.encode_outcome(failure))
        if batching.waiting and (not reading or batching.due()):
            rendered = batching.render()
            out += [wire.encode_forward(rows) for rows in rendered.forwards]
            out += [wire.encode_outcome(outcome) for outcome in rendered.outcomes]
        if out:
            data, out = b"".join(out), []
            with contextlib.suppress(OSError):  # the API has gone: nobody is waiting for these answers
                sock.sendall(data)


def main(argv: list[str]) -> int:
    fd, config = int(argv[0]), ChildConfig.from_json(argv[1])
    handler = logging.StreamHandler(sys.stdout)  # the API's own output: its terminal, or the container's log
    if config.log_format == "json":
        from service.telemetry import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s %(name)s [render process {os.getpid()}]: %(message)s")
        )
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
    # One thread by default: OpenMP's workers spin between forwards, on cores the API and its clients need.
    torch.set_num_threads(config.threads)
    sock = socket.socket(fileno=fd)
    # Its own bounds (the API's settings); no claims: the API decided who may be served what it sends.
    registry = ModelRegistry.from_settings(
        Settings(_env_file=None, **config.settings), batch_rows=config.batch_rows, names_store=None
    )
    batching = Batching(registry.get, config.batch_rows, config.max_wait_s)
    for name, version in config.preload:
        try:
            batching.model(name, version)
        except ModelNotFound as e:
            log.warning("could not preload %s version %d: %s", name, version, e)
    gc.collect()  # as the API does (service/main.py, settle_garbage_collector): no full scans of start-up's objects
    gc.freeze()
    sock.sendall(wire.encode_ready(os.getpid()))
    try:
        serve(sock, batching)
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
