"""The thread pool for /generate's CPU work around the forward (seed → latent, PNG encoding), so that the
event loop only awaits. One per API process, as many threads as the process may use cores.

torchvision's `encode_png` releases the GIL: a pure-Python loop on the main thread kept running at about two
thirds of its idle speed while another thread encoded one 3×1024×1024 image at level 9 (180 ms); an encoder
holding the GIL would have stopped it. On small images the per-call Python around the encoder dominates, so two threads
encode only a little faster than one (2 shared EPYC cores, torch 2.14.1, level 6: 28×28 7.1k → 8.7k/s,
3×64×64 1.9k → 2.1k/s); more threads than cores would gain nothing.
"""

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class CpuPool:
    """Started on first use; `close()` (app shutdown) waits for the running and queued tasks: each queued one
    answers a request."""

    def __init__(self, threads: int | None = None):
        self.threads = threads or usable_cores()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._get(), fn, *args)

    def dispatch(self, task: Callable[[], None]) -> None:
        """Run `task` on the pool, not waiting for it (the batchers' finishing work: it reports through its
        own future). After `close()`, on the caller's thread: shutdown never drops a request mid-answer."""
        with self._lock:  # submitted under the lock: never to an executor `close()` has begun to shut down
            if not self._closed:
                self._get_locked().submit(task)
                return
        task()

    def _get(self) -> ThreadPoolExecutor:
        with self._lock:
            return self._get_locked()

    def _get_locked(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="ganserve-cpu")
        return self._executor

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
            self._closed = True
        if executor is not None:
            executor.shutdown(wait=True)
