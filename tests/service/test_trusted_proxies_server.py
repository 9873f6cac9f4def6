"""GANSERVE_TRUSTED_PROXIES under a real uvicorn, started with `ganserve api`'s options (uvicorn's own proxy
headers off, the app's middleware on): real connections from 127.0.0.1, as from a load balancer on the host."""

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI
from svc_support import DEFAULT_MODEL

from ganserve.cli.processes import uvicorn_options

CACHED = {"if-none-match": "*"}  # a 304 when let through: the limit is what is tested, not the rendering
START_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """`app` under uvicorn in a thread, with the options `ganserve api` passes (no factory, one process); its URL."""
    settings = app.state.ganserve.settings
    options = {k: v for k, v in uvicorn_options(settings).items() if k in ("loop", "proxy_headers", "log_level")}
    assert options["proxy_headers"] is False
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(START_S)


def codes(url: str, forwarded_for: list[str]) -> list[int]:
    with httpx.Client(base_url=url, timeout=30) as http:
        return [
            http.get("/generate?seed=1", headers={**CACHED, "X-Forwarded-For": ip}).status_code for ip in forwarded_for
        ]


def test_a_trusted_balancer_s_clients_are_limited_each_and_an_untrusted_one_as_itself(
    make_app: Callable[..., FastAPI], publish_model: Callable[..., int]
) -> None:
    publish_model(DEFAULT_MODEL)
    with serving(make_app(trusted_proxies="127.0.0.1", rate_limit_per_ip_per_min=2)) as url:
        assert codes(url, ["198.51.100.1"] * 3) == [304, 304, 429]
        assert codes(url, ["198.51.100.2"] * 2) == [304, 304]  # another client behind the same balancer
    # Not trusted (the default): 127.0.0.1's X-Forwarded-For is ignored, though uvicorn alone would believe it.
    with serving(make_app(rate_limit_per_ip_per_min=2)) as url:
        assert codes(url, ["198.51.100.1", "198.51.100.2", "198.51.100.3"]) == [304, 304, 429]
