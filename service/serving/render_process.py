"""The render process: a child of each API process that runs /generate's batched forwards and encodes their
PNGs, and talks to the API's event loop over a socket pair.

Why a process. With the batcher's thread inside the API process, every step of a forward (taking requests
off its queue, the forward itself, handing rows to the encoding pool) had to win the GIL back from an event
loop that, under load, never lets it go for long: at 64 clients a 16-row forward of the bundled model took
22 ms in the server and 2 ms idle, and /generate reached 0.27 of the framework's ceiling while one of the two
cores stood half idle (benchmarks/README.md, `serve_load`). Here the event loop only writes a request's
seeds to a socket and reads its PNG back; the forward and the encoding run on another core, under another
GIL. It is the split of Triton's and TorchServe's front end and model workers, with one model process per
API process.

    API event loop ──R(seeds)──▶ render process (one thread): read what came → LoadedModel.render in padded
                   ◀──A(PNGs)──  forwards of batch_rows → encode → write the answers back
                                 (the same render and encode as in-process, and so the same bytes)

The render process loads models from the same volume through its own `ModelRegistry`: those the API has
loaded when it starts, any other on its first request. It exits when the socket closes: when the API
process closes it, or dies. A render process that dies is started again by the next request; the requests
it held are answered 503 with Retry-After.

Wire format: frames of `<u32 length><body>` both ways, the body's first byte its kind.
  API → child   R  request: id, form, version, rows, latent dim, flags, name, u64 seeds or float32 latents,
                   int64 labels, int64 generator indices
  child → API   H  ready (its pid)    A  answer: id, blobs    E  error: id, kind, message
                F  a forward ran (its real rows, for the batch-size metric)
Every number little-endian. Both ends are this file, in one version: nothing else speaks it.
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
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import cast

import torch

from service.serving.batcher import join_columns
from service.serving.registry import LoadedModel, ModelNotFound, ModelRegistry
from service.serving.rendering import Form, Output, RendererClosed, Rows, Seeds, finish, latents_of

log = logging.getLogger(__name__)

FRAME = struct.Struct("<I")
REQUEST = struct.Struct("<QBIIIBH")  # id, form, version, rows, latent dim, flags, name bytes
HAS_LABELS, HAS_GENERATORS, HAS_SEEDS = 1, 2, 4  # flags; with HAS_SEEDS the rows are seeds, not latents
ANSWER = struct.Struct("<QI")  # id, blobs
BLOB = struct.Struct("<I")
ERROR = struct.Struct("<QB")  # id, kind
FORWARD = struct.Struct("<I")
READY = struct.Struct("<I")
FORMS: tuple[Form, ...] = ("pngs", "grid", "pixels")
ERR_CLOSED, ERR_MODEL, ERR_FAILED = 0, 1, 2

START_TIMEOUT_S = 120.0  # imports and loading the preloaded models; on a slow disk, torch's import alone is seconds
STOP_TIMEOUT_S = 30.0  # a forward in progress is let finish


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

    roots: list[tuple[str, str]]  # (directory, source) searched in order, as the API's registry does
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


# --- the wire --------------------------------------------------------------------------------------------


def _frame(*parts: bytes) -> bytes:
    body = b"".join(parts)
    return FRAME.pack(len(body)) + body


def split_frames(buffer: bytearray) -> list[bytes]:
    """The bodies of the whole frames at the start of `buffer`, taken out of it (a partial one stays)."""
    bodies, at = [], 0
    while len(buffer) - at >= FRAME.size:
        (size,) = FRAME.unpack_from(buffer, at)
        if len(buffer) - at - FRAME.size < size:
            break
        bodies.append(bytes(buffer[at + FRAME.size : at + FRAME.size + size]))
        at += FRAME.size + size
    del buffer[:at]
    return bodies


def encode_request(
    rid: int,
    name: str,
    version: int,
    rows: Rows,
    latent_dim: int,
    labels: list[int] | None,
    generators: list[int] | None,
    form: Form,
) -> bytes:
    flags = (labels is not None) * HAS_LABELS | (generators is not None) * HAS_GENERATORS
    if isinstance(rows, Seeds):
        n, flags = len(rows.seeds), flags | HAS_SEEDS
        payload = struct.pack(f"<{n}Q", *rows.seeds)
    else:
        n = int(rows.shape[0])
        payload = rows.to(torch.float32).contiguous().numpy().tobytes()
    encoded = name.encode()
    parts = [b"R", REQUEST.pack(rid, FORMS.index(form), version, n, latent_dim, flags, len(encoded)), encoded, payload]
    for column in (labels, generators):
        if column is not None:
            parts.append(struct.pack(f"<{n}q", *column))
    return _frame(*parts)


@dataclass(frozen=True)
class Request:
    rid: int
    form: Form
    name: str
    version: int
    rows: Rows
    labels: list[int] | None
    generators: list[int] | None

    @property
    def n(self) -> int:
        return len(self.rows.seeds) if isinstance(self.rows, Seeds) else int(self.rows.shape[0])


def decode_request(body: bytes) -> Request:
    rid, form, version, n, dim, flags, name_len = REQUEST.unpack_from(body, 1)
    at = 1 + REQUEST.size
    name = body[at : at + name_len].decode()
    at += name_len
    rows: Rows
    if flags & HAS_SEEDS:
        rows = Seeds(list(struct.unpack_from(f"<{n}Q", body, at)))
        at += 8 * n
    else:
        # A copy: frombuffer on the frame's own bytes would share (and warn about) a read-only buffer.
        rows = torch.frombuffer(bytearray(body[at : at + 4 * n * dim]), dtype=torch.float32).reshape(n, dim)
        at += 4 * n * dim
    columns: list[list[int] | None] = []
    for flag in (HAS_LABELS, HAS_GENERATORS):
        if flags & flag:
            columns.append(list(struct.unpack_from(f"<{n}q", body, at)))
            at += 8 * n
        else:
            columns.append(None)
    return Request(rid, FORMS[form], name, version, rows, columns[0], columns[1])


def encode_answer(rid: int, output: Output) -> bytes:
    if isinstance(output, torch.Tensor):
        blobs = [output.contiguous().numpy().tobytes()]
    elif isinstance(output, bytes):
        blobs = [output]
    else:
        blobs = list(output)
    parts = [b"A", ANSWER.pack(rid, len(blobs))]
    for blob in blobs:
        parts += [BLOB.pack(len(blob)), blob]
    return _frame(*parts)


def decode_blobs(body: bytes) -> tuple[int, list[bytes]]:
    rid, count = ANSWER.unpack_from(body, 1)
    at = 1 + ANSWER.size
    blobs = []
    for _ in range(count):
        (size,) = BLOB.unpack_from(body, at)
        at += BLOB.size
        blobs.append(body[at : at + size])
        at += size
    return rid, blobs


def encode_error(rid: int, kind: int, message: str) -> bytes:
    return _frame(b"E", ERROR.pack(rid, kind), message.encode())


# --- the API's side -----------------------------------------------------------------------------------------


class _Link(asyncio.Protocol):
    """The API's end of the socket: frames in, each resolving its request's future."""

    def __init__(self, ready: "asyncio.Future[int]", on_forward: Callable[[int], None] | None):
        self.ready = ready
        self.on_forward = on_forward
        self.pending: dict[int, asyncio.Future[list[bytes]]] = {}
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.closed: asyncio.Future[None] = ready.get_loop().create_future()
        self._buffer = bytearray()
        self.outbox: list[bytes] = []
        self.ending = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of asyncio's, and works

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        for body in split_frames(self._buffer):
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
        if kind == ord("A"):
            rid, blobs = decode_blobs(body)
            future = self.pending.pop(rid, None)
            if future is not None and not future.done():  # done: its caller went away
                future.set_result(blobs)
        elif kind == ord("E"):
            rid, error = ERROR.unpack_from(body, 1)
            message = body[1 + ERROR.size :].decode()
            future = self.pending.pop(rid, None)
            if future is not None and not future.done():
                cls = {ERR_CLOSED: RendererClosed, ERR_MODEL: ModelGone}.get(error, RenderFailed)
                future.set_exception(cls(message))
        elif kind == ord("F"):
            if self.on_forward is not None:
                self.on_forward(FORWARD.unpack_from(body, 1)[0])
        elif kind == ord("H"):
            if not self.ready.done():
                self.ready.set_result(READY.unpack_from(body, 1)[0])
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
        self._starting: asyncio.Lock | None = None
        self._closed = False
        self._ids = itertools.count()

    @property
    def in_flight(self) -> int:
        """Requests sent to the render process and not answered yet (a Prometheus gauge)."""
        link = self._link
        return 0 if link is None else len(link.pending)

    async def start(self) -> None:
        """At app startup (again after a `close()`: a test client may run the lifespan more than once)."""
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
            self._proc = await asyncio.to_thread(subprocess.Popen, cmd, pass_fds=(theirs.fileno(),), env=env)
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[int] = loop.create_future()
        _, link = await loop.create_unix_connection(lambda: _Link(ready, self.on_forward), sock=ours)
        try:
            self.pid = await asyncio.wait_for(ready, START_TIMEOUT_S)
        except (TimeoutError, RendererClosed) as e:
            if link.transport is not None:
                link.transport.close()
            code = await asyncio.to_thread(_reap, self._proc, 0.0)
            raise RuntimeError(f"the render process did not start (exit {code}): {e}") from None
        self._link = link
        log.info("render process %d ready (%d model(s) preloaded)", self.pid, len(config.preload))

    async def render(
        self,
        model: LoadedModel,
        rows: Rows,
        labels: list[int] | None,
        generators: list[int] | None,
        form: Form,
    ) -> Output:
        link = self._link
        if self._closed:
            raise RendererClosed("the server is shutting down")
        if link is None or link.lost:
            try:
                await self._ensure()
            except RuntimeError as e:  # it did not start again: this request is a 503, not a 500
                if isinstance(e, RendererClosed):
                    raise
                raise RendererLost(f"the render process could not be started again ({e})") from None
            link = self._link
            assert link is not None and link.transport is not None
        rid = next(self._ids)
        future: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        # Sent first (it raises if the process is stopping); the answer cannot come before the frame is flushed.
        link.send(encode_request(rid, model.name, model.version, rows, model.latent_dim, labels, generators, form))
        link.pending[rid] = future
        try:
            blobs = await future
        finally:
            link.pending.pop(rid, None)
        if form == "pngs":
            return blobs
        if form == "grid":
            return blobs[0]
        return torch.frombuffer(bytearray(blobs[0]), dtype=torch.uint8).reshape(-1, *model.image_shape)

    async def close(self) -> None:
        """Stop taking requests; the render process answers every request it was sent, then exits."""
        self._closed = True
        link, proc = self._link, self._proc
        if link is not None and link.transport is not None and not link.lost:
            link.end()
            try:
                await asyncio.wait_for(asyncio.shield(link.closed), STOP_TIMEOUT_S)
            except TimeoutError:
                link.transport.close()
        if proc is not None:
            await asyncio.to_thread(_reap, proc)
        self._link = self._proc = None


def _reap(proc: subprocess.Popen[bytes], grace_s: float = STOP_TIMEOUT_S) -> int:
    try:
        return proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


# --- the render process -------------------------------------------------------------------------------------


@dataclass
class _Pending:
    request: Request
    model: LoadedModel


class _Server:
    """The render process's one thread: read what the API sent, batch it, render, encode, answer.

    One thread and no other on purpose: a reader thread beside a batcher thread and an encoding pool spent
    most of its time waiting for the GIL (measured: the reader alone used 79 % of a core to take 800
    requests/s). Requests are gathered until `batch_rows` rows wait or the oldest has waited `max_wait_s`
    (Triton's `max_queue_delay`); then each model's waiting rows go through `LoadedModel.render`, which runs
    them in padded forwards of exactly `batch_rows` rows, so an image never depends on its neighbours."""

    def __init__(self, sock: socket.socket, registry: ModelRegistry, batch_rows: int, max_wait_s: float):
        self.sock = sock
        self.registry = registry
        self.batch_rows = batch_rows
        self.max_wait_s = max_wait_s
        self.models: dict[tuple[str, int], LoadedModel] = {}
        self.pending: list[_Pending] = []
        self.rows = 0
        self.oldest = 0.0  # when the oldest pending request arrived
        self.out: list[bytes] = []
        self._buffer = bytearray()
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def run(self) -> None:
        open_ = True
        while open_ or self.pending:
            if open_:
                open_ = self._receive(self._timeout())
            if self.pending and (not open_ or self.rows >= self.batch_rows or self._waited()):
                self._render()
            if self.out:
                self._send()

    def _timeout(self) -> float | None:
        if not self.pending:
            return None
        if self.rows >= self.batch_rows:
            return 0.0
        return max(0.0, self.oldest + self.max_wait_s - time.monotonic())

    def _waited(self) -> bool:
        return time.monotonic() >= self.oldest + self.max_wait_s

    def _receive(self, timeout: float | None) -> bool:
        """Read and queue whatever has come within `timeout` (None: wait); False once the API closed its end."""
        # poll, not select: the socket keeps the API process's descriptor number, which may exceed FD_SETSIZE.
        if not self._poll.poll(None if timeout is None else timeout * 1000):
            return True
        data = self.sock.recv(1 << 20)
        if not data:
            return False
        self._buffer += data
        for body in split_frames(self._buffer):
            self._queue(decode_request(body))
        return True

    def _queue(self, request: Request) -> None:
        model = self._model(request)
        if model is None:
            return
        if not self.pending:
            self.oldest = time.monotonic()
        self.pending.append(_Pending(request, model))
        self.rows += request.n

    def _model(self, request: Request) -> LoadedModel | None:
        key = (request.name, request.version)
        model = self.models.get(key)
        if model is None:
            try:  # a version the API has just started serving: loaded (and warmed up) here now
                model = self.models[key] = self.registry.get(request.name, request.version)
            except ModelNotFound as e:
                self.out.append(encode_error(request.rid, ERR_MODEL, str(e)))
        return model

    def _render(self) -> None:
        by_model: dict[int, list[_Pending]] = {}
        for p in self.pending:
            by_model.setdefault(id(p.model), []).append(p)
        self.pending, self.rows = [], 0
        for group in by_model.values():
            self._render_group(group)

    def _render_group(self, group: list[_Pending]) -> None:
        model = group[0].model
        try:
            latents = torch.cat([latents_of(p.request.rows, model.latent_dim) for p in group])
            labels = join_columns([p.request.labels for p in group])
            generators = join_columns([p.request.generators for p in group])
            images = model.render(latents, labels, generators)
        except Exception as e:  # a broken model or a bug: these requests fail, the others are served
            log.exception("rendering %d request(s) of %s v%d failed", len(group), model.name, model.version)
            self.out += [encode_error(p.request.rid, ERR_FAILED, f"rendering failed: {e!r}") for p in group]
            return
        total = int(latents.shape[0])
        for start in range(0, total, model.batch_rows):  # the real rows of each forward, for the batch-size metric
            self.out.append(_frame(b"F", FORWARD.pack(min(model.batch_rows, total - start))))
        at = 0
        for p in group:
            n = p.request.n
            try:
                self.out.append(encode_answer(p.request.rid, finish(p.request.form, images[at : at + n])))
            except Exception as e:
                log.exception("encoding request %d failed", p.request.rid)
                self.out.append(encode_error(p.request.rid, ERR_FAILED, f"encoding failed: {e!r}"))
            at += n

    def _send(self) -> None:
        data, self.out = b"".join(self.out), []
        with contextlib.suppress(OSError):  # the API has gone: nobody is waiting for these answers
            self.sock.sendall(data)


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
    # One thread by default: OpenMP's workers spin between forwards, and on a host whose cores the API and
    # its clients also need, two threads made a 16-row forward slower, not faster (benchmarks/README.md).
    torch.set_num_threads(config.threads)
    sock = socket.socket(fileno=fd)
    registry = ModelRegistry([(Path(p), s) for p, s in config.roots], batch_rows=config.batch_rows)  # type: ignore[misc]
    server = _Server(sock, registry, config.batch_rows, config.max_wait_s)
    for name, version in config.preload:
        try:
            server.models[(name, version)] = registry.get(name, version)
        except ModelNotFound as e:
            log.warning("could not preload %s version %d: %s", name, version, e)
    gc.collect()  # as the API does (service/main.py, settle_garbage_collector): no full scans of start-up's objects
    gc.freeze()
    sock.sendall(_frame(b"H", READY.pack(os.getpid())))
    try:
        server.run()  # until the API closes its end; what it had sent is answered first
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
