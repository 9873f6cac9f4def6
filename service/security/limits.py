"""Limits that keep one client from taking the service from the others, each a clear 4xx:

- **request body size** (`GANSERVE_MAX_BODY_BYTES`; a dataset upload's, GANSERVE_DATASET_MAX_BYTES): an ASGI
  middleware answers 413 before anything parses the body: at once when `Content-Length` says it is too large,
  and as soon as a streamed (chunked) body passes the limit;
- **request rate**: per API key (`GANSERVE_RATE_LIMIT_PER_MIN`), and per client IP for anonymous callers
  (`GANSERVE_RATE_LIMIT_PER_IP_PER_MIN`), two separate counts: a key's requests never use its address's
  budget, nor the reverse. A fixed one-minute window, 429 with `Retry-After`. Counted in Redis when the broker
  is Redis, so every API process shares one count; in the process otherwise (the embedded filesystem broker).
  When Redis stops answering the limiter falls back to the in-process count (each API process then counts
  on its own) and tries Redis again after `REDIS_RETRY_S`: requests are still limited and never fail
  because the limiter's store did;
- **the client's address behind a load balancer** (`GANSERVE_TRUSTED_PROXIES`): uvicorn's
  ProxyHeadersMiddleware, in the app itself, takes the client from `X-Forwarded-For` only when the
  connection comes from one of those addresses or networks; from any other peer the header is ignored, so a
  client cannot choose the address it is limited as.

The queue length per key is checked where jobs are created (service/api/routes/train.py, core/submissions.py).
"""

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from core.settings import Settings
from service.api.errors import APIError, error_response

log = logging.getLogger(__name__)

WINDOW_S = 60
REDIS_TIMEOUT_S = 0.25  # a limiter must not make a request wait on a dead Redis
REDIS_RETRY_S = 30.0
REDIS_PREFIX = "ganserve:ratelimit:"


# --- request body size -------------------------------------------------------------------------------


BODY_SETTING = "GANSERVE_MAX_BODY_BYTES"


@dataclass(frozen=True)
class BodyLimit:
    """The most bytes a request body may have, and the setting it follows from (named in the 413)."""

    max_bytes: int
    setting: str = BODY_SETTING
    what: str = "The request body"
    allowance: str = ""  # how `max_bytes` follows from the setting, when it is not the setting's value itself

    def message(self, declared: int | None = None) -> str:
        size = f" ({declared} bytes)" if declared is not None else ""
        return (
            f"{self.what}{size} is larger than this server accepts: at most {self.max_bytes} bytes "
            f"({self.setting}{self.allowance}). Send a smaller one."
        )

    def response(self, declared: int | None = None) -> Response:
        detail = None if self.setting == BODY_SETTING else {"limit": self.max_bytes, "setting": self.setting}
        return error_response(413, "payload_too_large", self.message(declared), detail)


FORM_OVERHEAD_BYTES = 64 * 1024  # a dataset upload's multipart framing and small fields, beside its archive


def dataset_upload_limit(settings: Settings) -> BodyLimit:
    """POST /datasets: the archive's limit and room for the form around it (the route checks the archive's own
    size exactly)."""
    return BodyLimit(
        settings.dataset_max_bytes + FORM_OVERHEAD_BYTES,
        "GANSERVE_DATASET_MAX_BYTES",
        "The dataset upload",
        f": {settings.dataset_max_bytes} for the archive, {FORM_OVERHEAD_BYTES} for the form around it",
    )


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive`; a Starlette HTTPException so that FastAPI passes it on while reading the body
    (rather than turning it into a 400) and the app's handler renders the usual JSON error."""

    def __init__(self, limit: BodyLimit):
        super().__init__(413, limit.message())
        self.limit = limit


class BodySizeLimit:
    """Pure ASGI middleware: nothing reads more than `max_bytes` of a request body, or the limit of its route
    (`routes`: (method, path) → BodyLimit; POST /datasets takes archives far larger than any JSON body)."""

    def __init__(self, app: ASGIApp, max_bytes: int, routes: Mapping[tuple[str, str], BodyLimit] | None = None):
        self.app = app
        self.default = BodyLimit(max_bytes)
        self.routes = dict(routes or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.routes.get((scope["method"], scope["path"]), self.default)
        declared = _content_length(scope)
        if declared is not None and declared > limit.max_bytes:
            await limit.response(declared)(scope, receive, send)
            return

        if declared is not None or not _chunked(scope):
            # The server reads exactly Content-Length bytes (checked above), and a request with neither header
            # has no body: only a chunked body can grow past the limit, so only it is counted as it arrives.
            await self.app(scope, receive, send)
            return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as e:  # read outside FastAPI's handling (a middleware, a raw route)
            if started:
                raise
            await e.limit.response()(scope, receive, send)


def _chunked(scope: Scope) -> bool:
    return any(name == b"transfer-encoding" and b"chunked" in value.lower() for name, value in scope.get("headers", ()))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server itself refuses a malformed length
    return None


# --- request rate ------------------------------------------------------------------------------------


class RateLimiter(Protocol):
    def hit(self, identity: str, limit: int) -> float | None:
        """Count one request of `identity`; None when within `limit` this window, else seconds to wait."""


def _window(now: float) -> tuple[int, float]:
    """The current window's number, and the seconds until the next one."""
    return int(now // WINDOW_S), WINDOW_S - now % WINDOW_S


class MemoryRateLimiter:
    """Fixed one-minute windows counted in this process."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self._lock = threading.Lock()
        self._window = -1
        self._counts: dict[str, int] = {}

    def hit(self, identity: str, limit: int) -> float | None:
        window, remaining = _window(self.clock())
        with self._lock:
            if window != self._window:  # a new minute: every count starts again (and memory stays bounded)
                self._window, self._counts = window, {}
            count = self._counts[identity] = self._counts.get(identity, 0) + 1
        return remaining if count > limit else None


class RedisRateLimiter:
    """Fixed one-minute windows in Redis (INCR + EXPIRE), shared by every API process; the in-process
    limiter while Redis does not answer."""

    blocking = True  # a network round trip: callers on the event loop run `hit` in a thread

    def __init__(self, url: str, fallback: MemoryRateLimiter | None = None, clock=time.time):
        import redis

        self.url = url
        self.clock = clock
        self.fallback = fallback or MemoryRateLimiter(clock)
        self.client = redis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S)
        self._errors = (redis.RedisError, OSError)
        self._down_until = 0.0

    def hit(self, identity: str, limit: int) -> float | None:
        if time.monotonic() < self._down_until:
            return self.fallback.hit(identity, limit)
        window, remaining = _window(self.clock())
        key = f"{REDIS_PREFIX}{identity}:{window}"
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, 2 * WINDOW_S)
                count = int(pipe.execute()[0])
        except self._errors as e:
            if self._down_until == 0.0 or time.monotonic() >= self._down_until:
                log.warning(
                    "rate limiter: Redis does not answer (%s: %s); counting in this process, retrying Redis in %.0f s",
                    type(e).__name__,
                    e,
                    REDIS_RETRY_S,
                )
            self._down_until = time.monotonic() + REDIS_RETRY_S
            return self.fallback.hit(identity, limit)
        if self._down_until:
            log.info("rate limiter: Redis answers again")
            self._down_until = 0.0
        return remaining if count > limit else None


def make_rate_limiter(settings: Settings) -> RateLimiter:
    url = settings.effective_broker_url
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisRateLimiter(url)
    return MemoryRateLimiter()


KEY_RATE_SETTING = "GANSERVE_RATE_LIMIT_PER_MIN"
IP_RATE_SETTING = "GANSERVE_RATE_LIMIT_PER_IP_PER_MIN"


def per_minute(settings: Settings, key_name: str | None) -> int:
    """The requests a minute allowed to the key named `key_name`, or (None) to one anonymous client IP."""
    return settings.rate_limit_per_min if key_name is not None else settings.rate_limit_per_ip_per_min


def enforce_rate_limit(request: Request, limiter: RateLimiter, limit: int, key_name: str | None) -> None:
    """Count this request against its key (or, anonymous, its client IP); 429 beyond `limit` a minute."""
    if limit == 0:
        return
    if key_name is not None:
        identity, who, setting = f"key:{key_name}", f"API key {key_name!r}", KEY_RATE_SETTING
        advice = "ask the operator to raise it, or spread the work over several keys"
    else:
        # The peer, or the client a trusted proxy named (GANSERVE_TRUSTED_PROXIES, `install_proxy_headers`).
        host = request.client.host if request.client else "unknown"
        identity, who, setting = f"ip:{host}", f"Anonymous requests from {host}", IP_RATE_SETTING
        advice = (
            "send an API key (its own budget, GANSERVE_RATE_LIMIT_PER_MIN); behind a load balancer the operator "
            "sets GANSERVE_TRUSTED_PROXIES so that each client is counted, not the balancer"
        )
    wait = limiter.hit(identity, limit)
    if wait is not None:
        retry_after = max(1, math.ceil(wait))
        raise APIError(
            429,
            "rate_limited",
            f"{who} made more than {limit} requests this minute ({setting}); retry after {retry_after} s, or {advice}.",
            detail={"limit_per_minute": limit, "retry_after_s": retry_after, "setting": setting},
            headers={"Retry-After": str(retry_after)},
        )


async def limit_rate(request: Request, settings: Settings, limiter: RateLimiter, key_name: str | None) -> None:
    """`enforce_rate_limit` with this caller's limit, off the event loop when the limiter's store is remote."""
    limit = per_minute(settings, key_name)
    if limit > 0 and getattr(limiter, "blocking", False):
        await run_in_threadpool(enforce_rate_limit, request, limiter, limit, key_name)
    else:
        enforce_rate_limit(request, limiter, limit, key_name)


def trusted_proxy_list(settings: Settings) -> list[str]:
    """GANSERVE_TRUSTED_PROXIES as the addresses and networks it names (each checked: a typo is a start-up
    error naming the setting, not a proxy silently untrusted)."""
    entries = [e.strip() for e in settings.trusted_proxies.split(",") if e.strip()]
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if entry != "*":
                raise ValueError(
                    f"GANSERVE_TRUSTED_PROXIES: {entry!r} is not an IP address or a CIDR network "
                    "(e.g. 10.0.0.0/8, 192.0.2.10); list the load balancers' addresses, comma-separated"
                ) from None
    return entries


def install_proxy_headers(app: FastAPI, settings: Settings) -> None:
    """With GANSERVE_TRUSTED_PROXIES set: the client of a request that comes from one of them is the one its
    `X-Forwarded-For` names (and the scheme its `X-Forwarded-Proto`'s), so the per-IP limit counts clients,
    not the load balancer. In the app rather than only in `ganserve api`'s uvicorn, so that every server
    (and the tests) applies the same rule; `ganserve api` turns uvicorn's own off so headers are read once."""
    trusted = trusted_proxy_list(settings)
    if trusted:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted)


def install_body_limit(app: FastAPI, max_bytes: int, routes: Mapping[tuple[str, str], BodyLimit] | None = None) -> None:
    app.add_middleware(BodySizeLimit, max_bytes=max_bytes, routes=routes)
