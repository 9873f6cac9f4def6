"""Periodic work in the API process (the reaper, the webhook deliverer): a blocking `scan` run in the thread
pool every few seconds for as long as the app lives, and never cut off mid-scan when it stops."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)


async def _loop(name: str, scan: Callable[[], object], every_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await run_in_threadpool(scan)  # file I/O, sends, HTTP calls: off the event loop
        except Exception:
            log.exception("%s: scan failed; trying again in %.1f s", name, every_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


@contextlib.asynccontextmanager
async def periodic(name: str, scan: Callable[[], object], every_s: float) -> AsyncIterator[None]:
    """Run `scan` every `every_s` seconds for the duration of the block; on exit, let a scan in progress end
    (a job the reaper marked `queued` must also be sent before the API exits)."""
    stop = asyncio.Event()
    task = asyncio.create_task(_loop(name, scan, every_s, stop), name=f"ganserve-{name}")
    try:
        yield
    finally:
        stop.set()
        await task
