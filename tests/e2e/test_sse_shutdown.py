"""An open GET /train/{id}/events stream (a dashboard tab left open) does not hold the API's shutdown open: on
SIGTERM, uvicorn under `ganserve api` ends the stream and exits, instead of waiting for the client to go until
the container is killed (sse-starlette's EventSourceResponse, service/api/routes/train.py).

The conftest's stack on a Redis database of this test's own, its worker stopped first: the job stays queued, so
its stream would otherwise never end."""

import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from e2e_support import TINY, submit

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A liveness bound, not a performance figure: the stream ends within a second of the signal (sse-starlette polls
# uvicorn's exit flag every 0.5 s); without the fix uvicorn waits for the client forever.
SHUTDOWN_BOUND_S = 15.0


def test_sigterm_ends_an_open_event_stream_and_the_api_exits(start_stack, redis_url: str, tmp_path: Path) -> None:
    stack = start_stack(redis_url.removesuffix("/0") + "/7", tmp_path)  # a Redis db of this test's own
    try:
        worker = next(p for p in stack.procs if p.name == "worker")
        api = next(p for p in stack.procs if p.name == "api")
        stack.kill(worker, signal.SIGTERM)  # no worker: the job stays queued
        with stack.client() as client:
            job_id, _ = submit(client, model_name="e2e-open-stream", **TINY)
            reader = stack.client()
            reader.timeout = httpx.Timeout(10, read=SHUTDOWN_BOUND_S)
            with reader, reader.stream("GET", f"/train/{job_id}/events") as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                lines = r.iter_lines()
                assert next(line for line in lines if line.startswith("data:"))  # open: the job's first record
                try:
                    code = stack.kill(api, signal.SIGTERM, timeout_s=SHUTDOWN_BOUND_S)  # the stream still open
                except subprocess.TimeoutExpired:
                    pytest.fail(f"the API did not exit within {SHUTDOWN_BOUND_S:.0f} s of SIGTERM with a stream open")
                rest = list(lines)  # the server ended the stream: reading it finishes (a ReadTimeout otherwise)
        # uvicorn raises the signal it caught again once its shutdown is done: -SIGTERM is an orderly end too.
        assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in api.text(), stack.logs()
        assert not any(line.startswith("data:") for line in rest)  # no record after the first: the job never moved
    finally:
        stack.stop()
