"""Dynamic batching of /generate's forwards: one worker thread per loaded model version gathers the rows of
concurrent requests into forwards of up to `max_rows` rows (like Triton's `max_queue_delay`).

A request is a handful of rows (latents, with their labels and MAD-GAN generator indices) and a
`concurrent.futures.Future` for its output rows. The worker takes the oldest request, waits until `max_rows`
rows are queued or the oldest queued row has waited `max_wait_s`, runs one forward, and hands every request
its rows. A request larger than `max_rows` is split across forwards. A forward that raises fails the requests
that had rows in it, and no others; the worker carries on.

Batching never changes an image: `LoadedModel.sample` pads every forward to the same number of rows, and for
one shape a row's output depends on that row only.

Stopping: `close()` fails every request not yet in a forward with `BatcherClosed` (none hangs) and waits for
the thread to end; `close(drain=True)` finishes them first (a model version that has been replaced).
"""

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from service.serving.registry import LoadedModel

log = logging.getLogger(__name__)

Run = Callable[[torch.Tensor, list[int] | None, list[int] | None], torch.Tensor]
"""`run(latents, labels, generators)`: N rows in, N output rows out (`LoadedModel.render`)."""

Finish = Callable[[torch.Tensor], Any]
"""A request's own work on its output rows (encoding its PNGs), run off the event loop by the dispatcher."""

Dispatch = Callable[[Callable[[], None]], None]
"""Runs a finishing task somewhere (the CPU pool); by default, on the batcher's own thread."""

JOIN_TIMEOUT_S = 30.0  # a forward in progress is let finish; a hung one must not hang the server's exit


class BatcherClosed(RuntimeError):
    """The batcher is stopping (the server is shutting down): the request was not, and will not be, run."""


@dataclass(eq=False)
class _Request:
    latents: torch.Tensor
    labels: list[int] | None
    generators: list[int] | None
    future: Future[Any]
    submitted_at: float
    finish: Finish | None = None
    done: int = 0  # rows already run
    outputs: list[torch.Tensor] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return int(self.latents.shape[0])

    @property
    def left(self) -> int:
        return self.rows - self.done


_STOP = object()  # queued by close(): everything submitted before it has been queued before it


class Batcher:
    def __init__(
        self,
        run: Run,
        max_rows: int,
        max_wait_s: float,
        name: str = "batcher",
        clock: Callable[[], float] = time.monotonic,
        dispatch: Dispatch | None = None,
        on_forward: Callable[[int], None] | None = None,
    ):
        if max_rows < 1 or max_wait_s < 0:
            raise ValueError(f"max_rows {max_rows} must be ≥ 1 and max_wait_s {max_wait_s} ≥ 0")
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.forwards = 0  # forwards run so far (read by tests and logs)
        self._run = run
        self._clock = clock
        self._dispatch: Dispatch = dispatch or (lambda task: task())
        self._on_forward = on_forward  # told the real rows of each forward (service/telemetry.py)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._abandon = threading.Event()  # close() without drain: fail what is left instead of running it
        self._pending: deque[_Request] = deque()  # taken off the queue, rows not all run yet (worker's own)
        self._thread = threading.Thread(target=self._work, name=f"ganserve-batcher {name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(
        self,
        latents: torch.Tensor,
        labels: list[int] | None = None,
        generators: list[int] | None = None,
        finish: Finish | None = None,
    ) -> Future[Any]:
        """Queue N rows; the future resolves to their N output rows, in order (or to the forward's error), or
        with `finish`, to `finish(rows)` run by the dispatcher: so a caller on the event loop is woken once,
        with its answer ready, instead of once per stage."""
        n = int(latents.shape[0])
        if n == 0:
            raise ValueError("a request needs at least one row")
        if (labels is not None and len(labels) != n) or (generators is not None and len(generators) != n):
            raise ValueError(f"{n} latents need as many labels / generator indices")
        request = _Request(latents, labels, generators, Future(), self._clock(), finish)
        with self._lock:
            if self._closed:
                raise BatcherClosed("the batcher has stopped")
            self._queue.put(request)
        return request.future

    def close(self, drain: bool = False, wait: bool = True) -> None:
        """Stop taking requests; fail those not yet run (`drain`: run them first). `wait`: until the thread ends."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if not drain:
                    self._abandon.set()
                self._queue.put(_STOP)
        if wait:
            self.join()

    def join(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s did not stop within %.0f s (a forward still running)", self._thread.name, timeout)

    # --- the worker thread ----------------------------------------------------------------------------

    def _work(self) -> None:
        stopped = False  # _STOP seen: nothing more will be queued
        while True:
            if not self._pending:
                if stopped:
                    return
                stopped = self._take(self._queue.get())
                continue
            if not self._abandon.is_set():
                stopped = self._gather(stopped)
            if self._abandon.is_set():
                self._fail_all()
                return
            batch = self._next_batch()
            try:
                self._forward(batch)
            except Exception as e:  # a bug here, not in the model: fail the batch, keep serving the others
                log.exception("%s: batching failed", self._thread.name)
                self._fail({r for r, _, _ in batch}, e)

    def _take(self, item: object) -> bool:
        """Add a queued item to the pending requests; True for the stop marker."""
        if item is _STOP:
            return True
        assert isinstance(item, _Request)
        if item.future.set_running_or_notify_cancel():  # False: its caller gave up (e.g. disconnected)
            self._pending.append(item)
        return False

    def _gather(self, stopped: bool) -> bool:
        """Take queued requests until `max_rows` rows are pending or the oldest pending row's wait is over."""
        while not stopped and sum(r.left for r in self._pending) < self.max_rows:
            remaining = self._pending[0].submitted_at + self.max_wait_s - self._clock()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            stopped = self._take(item)
        return stopped

    def _next_batch(self) -> list[tuple[_Request, int, int]]:
        """(request, first row, end row) for each slice of the next forward, oldest requests first."""
        batch, room = [], self.max_rows
        for r in self._pending:
            if room == 0:
                break
            take = min(room, r.left)
            batch.append((r, r.done, r.done + take))
            room -= take
        return batch

    def _forward(self, batch: list[tuple[_Request, int, int]]) -> None:
        try:
            latents = torch.cat([r.latents[a:b] for r, a, b in batch])
            labels = join_columns([None if r.labels is None else r.labels[a:b] for r, a, b in batch])
            generators = join_columns([None if r.generators is None else r.generators[a:b] for r, a, b in batch])
            self.forwards += 1
            if self._on_forward is not None:
                self._on_forward(int(latents.shape[0]))
            out = self._run(latents, labels, generators)
            if out.shape[0] != latents.shape[0]:
                raise RuntimeError(f"the forward returned {out.shape[0]} rows for {latents.shape[0]}")
        except Exception as e:
            self._fail({r for r, _, _ in batch}, e)
            return
        offset = 0
        for r, a, b in batch:
            r.outputs.append(out[offset : offset + b - a])
            offset += b - a
            r.done = b
            if r.left == 0:
                self._pending.remove(r)
                rows = r.outputs[0] if len(r.outputs) == 1 else torch.cat(r.outputs)
                if r.finish is None:
                    r.future.set_result(rows)
                else:
                    self._dispatch(_finishing(r, r.finish, rows))

    def _fail(self, requests: set[_Request], error: BaseException) -> None:
        for r in requests:
            if r in self._pending:
                self._pending.remove(r)
            if not r.future.done():
                r.future.set_exception(error)

    def _fail_all(self) -> None:
        error = BatcherClosed("the server is shutting down; the request was not run")
        while True:
            try:
                self._take(self._queue.get_nowait())
            except queue.Empty:
                break
        self._fail(set(self._pending), error)


class Batchers:
    """One `Batcher` per loaded model version, started on its first request.

    Publishing a new version swaps atomically: new requests resolve to the new `LoadedModel` and so to its
    batcher, while those already queued on the old one finish there. A version the registry reloads (another
    object for the same name and version) gets a new batcher; the old one drains and stops. `close()` stops
    them all (app shutdown); the next request would start afresh."""

    def __init__(
        self, max_wait_s: float, dispatch: Dispatch | None = None, on_forward: Callable[[int], None] | None = None
    ):
        self.max_wait_s = max_wait_s
        self.dispatch = dispatch
        self.on_forward = on_forward
        self._lock = threading.Lock()
        self._by_version: dict[tuple[str, int], tuple[LoadedModel, Batcher]] = {}
        self._retired: list[Batcher] = []

    def submit(
        self,
        model: LoadedModel,
        latents: torch.Tensor,
        labels: list[int] | None,
        generators: list[int] | None,
        finish: Finish | None = None,
    ) -> Future[Any]:
        # Look-up and submit under one lock: a batcher being retired never receives a request after it stops.
        with self._lock:
            return self._batcher(model).submit(latents, labels, generators, finish)

    def get(self, model: LoadedModel) -> Batcher:
        with self._lock:
            return self._batcher(model)

    def _batcher(self, model: LoadedModel) -> Batcher:
        key = (model.name, model.version)
        entry = self._by_version.get(key)
        if entry is not None and entry[0] is model:
            return entry[1]
        if entry is not None:
            entry[1].close(drain=True, wait=False)
            self._retired = [b for b in self._retired if b.alive] + [entry[1]]
        batcher = Batcher(
            model.render,
            model.batch_rows,
            self.max_wait_s,
            name=f"{model.name}:{model.version}",
            dispatch=self.dispatch,
            on_forward=self.on_forward,
        )
        self._by_version[key] = (model, batcher)
        return batcher

    def close(self) -> None:
        with self._lock:
            batchers = [b for _, b in self._by_version.values()] + self._retired
            self._by_version.clear()
            self._retired = []
        for b in batchers:  # all told first, so that they stop together
            b.close(wait=False)
        for b in batchers:
            b.join()


def _finishing(request: _Request, finish: Finish, rows: torch.Tensor) -> Callable[[], None]:
    def task() -> None:
        try:
            request.future.set_result(finish(rows))
        except Exception as e:
            request.future.set_exception(e)

    return task


def join_columns(parts: list[list[int] | None]) -> list[int] | None:
    """The labels (or generator indices) of a forward's requests: all present, or all absent."""
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts):
        raise ValueError("requests with and without labels / generator indices cannot share a forward")
    return [v for p in parts if p is not None for v in p]
