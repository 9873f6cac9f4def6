"""Webhooks: a job may name a URL that is called (POST, HMAC-signed JSON) once it finishes.

A finished job's call is owed through the database's outbox (core/jobs.py); the API's `Deliverer`, a
background task of its lifespan, claims each due entry by a conditional update (so two API processes never
make the same attempt), makes one call, records it, and retries with back-off: delivery is at least once,
and receivers dedupe on `X-Ganserve-Delivery`. Outbound calls are the SSRF surface, so only allow-listed
hosts, resolved at delivery to public addresses (unless allowed), connected to by the address checked, never
redirected (docs/operations.md, "Webhooks").
"""

import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from core.jobs import JobRecord, JobStore, OutboxState, WebhookDelivery
from core.records import now
from core.settings import Settings
from service.background.periodic import periodic

if TYPE_CHECKING:
    from service.state import AppState

log = logging.getLogger(__name__)

EVENT = "job.finished"
MAX_URL_LENGTH = 2000
TIMEOUT_S = 5.0
MAX_BACKOFF_S = 3600.0
USER_AGENT = "ganserve-webhooks"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# --- what may be called --------------------------------------------------------------------------------------


def url_problem(url: str) -> str | None:
    """What is wrong with `url` as a webhook, whatever the server's settings; None when nothing is."""
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        return "must be ASCII without spaces or control characters (write an international name as xn--…)"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in 0…65535
    except ValueError as e:
        return f"is not a valid URL ({e})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if "@" in parts.netloc:
        return "must not carry credentials (user:password@); the call is signed instead"
    if not parts.hostname:
        return "has no host"
    try:
        parts.hostname.encode("idna")  # as the resolver will, which raises UnicodeError (not OSError) for a bad one
    except UnicodeError:
        return "has a host name that is not a DNS name (labels of 1 to 63 characters, separated by single dots)"
    return None


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def host_allowed(host: str, allowed: list[str]) -> bool:
    """`host` (a name or an IP) matches an entry of the allow-list: the same name, a name under a `*.suffix`
    entry, or the same IP address."""
    host = host.lower().rstrip(".")
    ip = _ip(host)
    for entry in allowed:
        entry = entry.lower().rstrip(".")
        if ip is not None:
            if _ip(entry) == ip:
                return True
        elif entry.startswith("*."):
            if host.endswith(entry[1:]) and len(host) > len(entry) - 1:
                return True
        elif host == entry:
            return True
    return False


def refusal(url: str, settings: Settings) -> str | None:
    """Why this server will not call `url` (its settings, then the URL); None when it will."""
    if settings.webhook_secret is None or not settings.webhook_secret.get_secret_value():
        return "this server accepts no webhooks: its operator has not set GANSERVE_WEBHOOK_SECRET"
    allowed = settings.webhook_allowed_host_list
    if not allowed:
        return "this server accepts no webhooks: its operator has not set GANSERVE_WEBHOOK_ALLOWED_HOSTS"
    if problem := url_problem(url):
        return f"the webhook {problem}"
    host = urlsplit(url).hostname or ""
    if not host_allowed(host, allowed):
        return (
            f"host {host!r} is not one this server may call; its operator lists those in GANSERVE_WEBHOOK_ALLOWED_HOSTS"
        )
    return None


def not_public(address: IPAddress) -> str | None:
    """The kind of a non-public address (`loopback`, `private` …); None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "non-public"


# --- the call ------------------------------------------------------------------------------------------------


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """`X-Ganserve-Signature`: HMAC-SHA256 of `<timestamp>.<body>`, hex, prefixed `sha256=`."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def payload(record: JobRecord) -> bytes:
    """The body: the event and the job's record as GET /train/{id} shows it, less the webhook's own log."""
    job = record.model_dump(mode="json", exclude={"webhook_status", "webhook_deliveries"})
    return json.dumps({"event": EVENT, "job": job}, separators=(",", ":")).encode()


def backoff_s(base_s: float, attempt: int) -> float:
    """The wait after failed attempt `attempt` (1, 2, …): base, 2·base, 4·base …, at most an hour."""
    return min(MAX_BACKOFF_S, base_s * 2 ** (attempt - 1))


class _Pinned:
    """Connects to the addresses that were checked, never to what the name resolves to a moment later, and can
    be aborted from another thread (the deadline)."""

    sock: socket.socket | None
    port: int
    timeout: float

    def _setup(self, addresses: list[str], deadline: float) -> None:
        self._addresses, self._deadline, self.aborted = addresses, deadline, False

    def _open(self) -> socket.socket:
        error: OSError = OSError("no address to connect to")
        for address in self._addresses:
            left = self._deadline - time.monotonic()
            if left <= 0 or self.aborted:
                raise TimeoutError("timed out")
            try:
                return socket.create_connection((address, self.port), min(self.timeout, left))
            except OSError as e:
                error = e
        raise error

    def abort(self) -> None:
        self.aborted = True
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)


class _PinnedHTTP(_Pinned, http.client.HTTPConnection):
    def __init__(self, host: str, port: int, addresses: list[str], timeout: float, deadline: float):
        http.client.HTTPConnection.__init__(self, host, port, timeout=timeout)
        self._setup(addresses, deadline)

    def connect(self) -> None:
        self.sock = self._open()


class _PinnedHTTPS(_Pinned, http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, addresses: list[str], timeout: float, deadline: float):
        self._tls = ssl.create_default_context()  # the system's CAs; the certificate must name `host`
        http.client.HTTPSConnection.__init__(self, host, port, timeout=timeout, context=self._tls)
        self._setup(addresses, deadline)

    def connect(self) -> None:
        self.sock = self._tls.wrap_socket(self._open(), server_hostname=self.host)


def post(url: str, addresses: list[str], body: bytes, headers: dict[str, str], timeout_s: float) -> tuple[int, str]:
    """POST `body` to `url` through one of `addresses`; (status, Location) of the answer, which is not followed
    when it is a redirect. Raises OSError or http.client.HTTPException (TimeoutError past `timeout_s`)."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")  # a #fragment is never sent
    connection_type = _PinnedHTTPS if https else _PinnedHTTP
    conn = connection_type(parts.hostname or "", port, addresses, timeout_s, time.monotonic() + timeout_s)
    timer = threading.Timer(timeout_s, conn.abort)
    timer.daemon = True
    timer.start()
    try:
        conn.request("POST", target, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("Location") or ""
    except (OSError, http.client.HTTPException) as e:
        if conn.aborted or isinstance(e, TimeoutError):  # the deadline, or a socket's own timeout just before it
            raise TimeoutError(f"no answer within {timeout_s:g} s") from None
        raise
    finally:
        timer.cancel()
        conn.close()


@dataclass
class Outcome:
    status_code: int | None = None
    error: str | None = None
    final: bool = False  # refused: no retry can help

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


# --- the deliverer -------------------------------------------------------------------------------------------


def scan_every_s(backoff_s: float) -> float:
    """How often to look: every second, or as often as the back-off is short (tests), at most 20 times a second."""
    return max(0.05, min(1.0, backoff_s))


@dataclass
class Deliverer:
    store: JobStore
    settings: Settings
    timeout_s: float = TIMEOUT_S
    # A claim this old (by the database's records, in Unix time) was left by a deliverer that vanished
    # mid-attempt: hosts' clocks must agree to within a fraction of it.
    claim_stale_s: float = 30.0
    wall: Callable[[], float] = time.time  # claims, back-off deadlines and the signed timestamps
    stopping: threading.Event = field(default_factory=threading.Event)

    def scan(self) -> list[str]:
        """One pass: give back claims abandoned by a deliverer that vanished, then make every attempt that is due.
        Returns the ids of the jobs whose webhook it called."""
        for job_id in self.store.release_abandoned_webhooks(self.wall(), self.claim_stale_s):
            log.warning("webhook of job %s: its deliverer vanished mid-attempt; it is owed again", job_id)
        called = []
        for job_id in self.store.webhooks_due(self.wall()):
            if self.stopping.is_set():
                break
            try:
                if self._claim_and_call(job_id):
                    called.append(job_id)
            except Exception:  # one job's trouble must not stop the others'
                log.exception("webhook of job %s: attempt failed; trying again later", job_id)
        return called

    def _claim_and_call(self, job_id: str) -> bool:
        entry = self.store.claim_webhook(job_id, self.wall())
        if entry is None:
            return False  # another deliverer took it first, or it is not due any more
        record = self.store.get(job_id)
        attempt = entry.attempts + 1
        outcome = self.call(record, entry.delivery)
        final = outcome.ok or outcome.final or attempt >= self.settings.webhook_max_attempts
        delivery = WebhookDelivery(
            delivery=entry.delivery, attempt=attempt, at=now(), status_code=outcome.status_code, error=outcome.error
        )
        wait_s = backoff_s(self.settings.webhook_backoff_s, attempt)
        state = OutboxState.delivered if outcome.ok else OutboxState.failed if final else OutboxState.pending
        next_at = 0.0 if final else self.wall() + wait_s
        host = urlsplit(record.webhook or "").hostname
        # The attempt (in the record) and the entry's next state in one transaction, and only while the claim holds.
        if not self.store.settle_webhook(job_id, state, attempt, next_at, claim=entry, delivery=delivery):
            log.warning(
                "job %s: webhook to %s, attempt %d outlived its claim (%.0f s); whoever claimed it since settles it",
                job_id,
                host,
                attempt,
                self.claim_stale_s,
            )
        elif outcome.ok:
            log.info(
                "job %s: webhook to %s delivered (attempt %d, HTTP %d)", job_id, host, attempt, outcome.status_code
            )
        elif final:
            log.error("job %s: webhook to %s given up after attempt %d: %s", job_id, host, attempt, outcome.error)
        else:
            log.warning(
                "job %s: webhook to %s, attempt %d: %s; next in %.1f s", job_id, host, attempt, outcome.error, wait_s
            )
        return True

    def call(self, record: JobRecord, delivery: str) -> Outcome:
        """One attempt: check the URL against the settings of now, resolve it, check the addresses, POST."""
        url = record.webhook
        if not url:
            return Outcome(error="refused: the job has no webhook", final=True)
        if problem := refusal(url, self.settings):
            return Outcome(error=f"refused: {problem}", final=True)
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except OSError as e:
            return Outcome(error=f"cannot resolve {host}: {e}")
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        listed_ip = _ip(host) is not None  # an IP the allow-list names (refusal() checked it is there)
        if not (self.settings.webhook_allow_private or listed_ip):
            for address in addresses:
                if kind := not_public(ipaddress.ip_address(address)):
                    return Outcome(
                        error=f"refused: {host} resolves to {address}, a {kind} address; this server calls only "
                        "public addresses unless GANSERVE_WEBHOOK_ALLOW_PRIVATE=true (or the URL names an IP that "
                        "GANSERVE_WEBHOOK_ALLOWED_HOSTS lists)",
                        final=True,
                    )
        assert self.settings.webhook_secret is not None  # refusal() said so
        secret = self.settings.webhook_secret.get_secret_value().encode()
        body = payload(record)
        timestamp = str(int(self.wall()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Ganserve-Event": EVENT,
            "X-Ganserve-Delivery": delivery,
            "X-Ganserve-Timestamp": timestamp,
            "X-Ganserve-Signature": signature(secret, timestamp, body),
        }
        try:
            status, location = post(url, addresses, body, headers, self.timeout_s)
        except (OSError, http.client.HTTPException) as e:
            return Outcome(error=f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        if 200 <= status < 300:
            return Outcome(status)
        if 300 <= status < 400:
            return Outcome(status, f"HTTP {status}: redirects are not followed (Location: {location[:200]!r})")
        return Outcome(status, f"HTTP {status}")


@contextlib.asynccontextmanager
async def running(state: "AppState") -> AsyncIterator[Deliverer]:
    """Run the app's webhook deliverer for the duration of the block (the API's lifespan)."""
    settings = state.settings
    deliverer = Deliverer(state.jobs, settings)
    every = scan_every_s(settings.webhook_backoff_s)
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    unset = [
        name for name, value in (("SECRET", secret), ("ALLOWED_HOSTS", settings.webhook_allowed_host_list)) if not value
    ]
    if unset:
        log.info("webhooks: none accepted (%s unset)", " and ".join(f"GANSERVE_WEBHOOK_{name}" for name in unset))
    else:
        log.info(
            "webhooks: to %s, up to %d attempts (checked every %.2f s)",
            ", ".join(settings.webhook_allowed_host_list),
            settings.webhook_max_attempts,
            every,
        )
    async with periodic("webhooks", deliverer.scan, every):
        try:
            yield deliverer
        finally:
            deliverer.stopping.set()  # a scan in progress ends after its current attempt (at most `timeout_s`)
