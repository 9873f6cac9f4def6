"""Webhooks (service/background/webhooks.py): a finished job's URL is called, signed, through the database's outbox.

Every call goes to a real HTTP server of the test's own (`Receiver`: http.server in a thread on a free local
port); nothing of the HTTP call is mocked. Back-off starts at 50 ms so retries take a fraction of a second. The
outbox is the volume's SQLite, as the API's settings make it; the claims that two deliverers race for also run on
PostgreSQL (`db_store`).
"""

import contextlib
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select
from svc_support import AUTH, DEFAULT_MODEL, FakeSender

from core.db import Database, connect, webhook_outbox
from core.jobs import JobStore, OutboxEntry, OutboxState, WebhookStatus
from core.records import JobStatus, now
from core.settings import Settings
from core.train_config import TrainConfig
from service.background.reaper import Reaper
from service.background.webhooks import Deliverer, host_allowed, not_public

SECRET = "whsec-test-secret"
BACKOFF_S = 0.05
WEBHOOKS: dict[str, Any] = {
    "webhook_allowed_hosts": "127.0.0.1",
    "webhook_secret": SecretStr(SECRET),
    "webhook_backoff_s": BACKOFF_S,
    "webhook_max_attempts": 4,
}
BODY = {"model_name": "hooked", "epochs": 1}
TOO_LONG_LABEL = "a" * 64  # a DNS label has at most 63 characters


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    at: float
    status: int

    @property
    def job(self) -> dict[str, Any]:
        return json.loads(self.body)["job"]


@dataclass
class Receiver:
    """Answers each POST with the next of `answers` (a status, or a status and headers), then 200. With `hold`,
    the first POST is answered only once `hold` is set (an attempt caught in flight)."""

    answers: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    delay_s: float = 0.0
    hold: threading.Event | None = None
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver, lock = self, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    answer = receiver.answers.pop(0) if receiver.answers else 200
                    status, headers = answer if isinstance(answer, tuple) else (answer, {})
                    headers_in = {k.lower(): v for k, v in self.headers.items()}
                    receiver.requests.append(Received(self.path, headers_in, body, time.monotonic(), status))
                    first = len(receiver.requests) == 1
                if first and receiver.hold is not None:
                    assert receiver.hold.wait(30), "the test never let the first call be answered"
                time.sleep(receiver.delay_s)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def for_job(self, job_id: str) -> list[Received]:
        return [r for r in self.requests if r.job["id"] == job_id]

    def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(update=WEBHOOKS)


@pytest.fixture
def store(hook_settings: Settings) -> JobStore:
    """The jobs in the database the API of `hook_settings` uses (the volume's SQLite), migrated."""
    return JobStore(connect(hook_settings.effective_database_url))


@pytest.fixture
def db_store(any_db: Database) -> JobStore:
    """The jobs in a database of the test's own: once SQLite, once PostgreSQL."""
    return JobStore(any_db)


@pytest.fixture
def deliverer(store: JobStore, hook_settings: Settings) -> Deliverer:
    return Deliverer(store, hook_settings)


def finished_job(store: JobStore, url: str, status: JobStatus = JobStatus.succeeded) -> str:
    """A job with a webhook taken through `running` to `status`, as the worker does it (JobStore.update)."""
    job = store.create(config=TrainConfig(**BODY), webhook=url)
    store.update(job.id, status=JobStatus.running, started_at=now(), attempts=1)
    store.update(job.id, status=status, finished_at=now())
    return job.id


def outbox(store: JobStore, job_id: str) -> OutboxEntry:
    entry = store.webhook(job_id)
    assert entry is not None, f"job {job_id} owes no webhook"
    return entry


def owed(store: JobStore) -> bool:
    """Some job's webhook is still owed: waiting for an attempt, or in one."""
    unsettled = select(webhook_outbox.c.job_id).where(
        webhook_outbox.c.state.in_([OutboxState.pending.value, OutboxState.sending.value])
    )
    with store.db.begin() as conn:
        return conn.execute(unsettled).first() is not None


def deliver_all(*deliverers: Deliverer, timeout_s: float = 15.0) -> None:
    """Scan until no job's webhook is owed any more."""
    deadline = time.monotonic() + timeout_s
    while owed(deliverers[0].store):
        assert time.monotonic() < deadline, "webhooks still owed"
        for d in deliverers:
            d.scan()
        time.sleep(0.01)


def wait_until(condition: Callable[[], object], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the time limit"
        time.sleep(0.02)


def expected_signature(secret: str, received: Received) -> str:
    """A receiver's own check, as docs/operations.md shows it (written here independently of the server's)."""
    signed = received.headers["x-ganserve-timestamp"].encode() + b"." + received.body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


# --- the call ----------------------------------------------------------------------------------------------


def test_the_call_is_signed_and_a_tampered_body_does_not_verify(
    store: JobStore, deliverer: Deliverer, receiver: Receiver
) -> None:
    job_id = finished_job(store, receiver.url("/hook?team=gan"))
    owing = outbox(store, job_id)
    assert (owing.state, owing.attempts) == (OutboxState.pending, 0)
    assert store.get(job_id).webhook_status == WebhookStatus.pending

    deliver_all(deliverer)
    [call] = receiver.requests
    assert call.path == "/hook?team=gan"
    headers = call.headers
    assert headers["content-type"] == "application/json" and headers["x-ganserve-event"] == "job.finished"
    uuid.UUID(headers["x-ganserve-delivery"])
    assert abs(int(headers["x-ganserve-timestamp"]) - time.time()) < 60
    assert headers["x-ganserve-signature"] == expected_signature(SECRET, call)
    tampered = Received(call.path, headers, call.body.replace(b'"succeeded"', b'"failed"'), call.at, call.status)
    assert tampered.body != call.body and headers["x-ganserve-signature"] != expected_signature(SECRET, tampered)
    assert headers["x-ganserve-signature"] != expected_signature("another-secret", call)

    sent = json.loads(call.body)
    assert sent["event"] == "job.finished"
    assert sent["job"]["id"] == job_id and sent["job"]["status"] == "succeeded"
    assert "webhook_deliveries" not in sent["job"] and "webhook" not in sent["job"]["config"]

    record = store.get(job_id)
    assert record.webhook_status == WebhookStatus.delivered
    [delivery] = record.webhook_deliveries
    assert (delivery.attempt, delivery.status_code, delivery.error) == (1, 200, None)
    assert delivery.delivery == headers["x-ganserve-delivery"] == owing.delivery
    settled = outbox(store, job_id)
    assert (settled.state, settled.attempts, settled.claimed_at) == (OutboxState.delivered, 1, None)
    deliverer.scan()
    assert len(receiver.requests) == 1


def test_retries_back_off_until_the_receiver_answers_2xx(
    store: JobStore, deliverer: Deliverer, receiver: Receiver
) -> None:
    receiver.answers = [500, 503]
    job_id = finished_job(store, receiver.url(), JobStatus.failed)
    deliver_all(deliverer)

    calls = receiver.requests
    assert [c.status for c in calls] == [500, 503, 200]
    assert len({c.headers["x-ganserve-delivery"] for c in calls}) == 1  # one delivery, retried
    assert all(c.headers["x-ganserve-signature"] == expected_signature(SECRET, c) for c in calls)
    assert calls[1].at - calls[0].at >= BACKOFF_S and calls[2].at - calls[1].at >= 2 * BACKOFF_S
    record = store.get(job_id)
    assert record.webhook_status == WebhookStatus.delivered
    assert [(d.attempt, d.status_code, d.error) for d in record.webhook_deliveries] == [
        (1, 500, "HTTP 500"),
        (2, 503, "HTTP 503"),
        (3, 200, None),
    ]
    assert (outbox(store, job_id).state, outbox(store, job_id).attempts) == (OutboxState.delivered, 3)


def test_a_failed_attempt_is_due_again_after_the_back_off_doubled(
    store: JobStore, hook_settings: Settings, receiver: Receiver
) -> None:
    """The outbox holds each retry's time in Unix seconds of the deliverer's clock: base, then twice that."""
    receiver.answers = [500, 500]
    job_id = finished_job(store, receiver.url())
    clock = [1_000_000.0]
    deliverer = Deliverer(store, hook_settings.model_copy(update={"webhook_backoff_s": 10.0}), wall=lambda: clock[0])
    assert deliverer.scan() == [job_id]
    assert (outbox(store, job_id).state, outbox(store, job_id).next_attempt_at) == (OutboxState.pending, 1_000_010.0)
    clock[0] = 1_000_009.9
    assert deliverer.scan() == [] and len(receiver.requests) == 1  # not due yet
    clock[0] = 1_000_010.0
    assert deliverer.scan() == [job_id]
    assert outbox(store, job_id).next_attempt_at == 1_000_030.0  # 20 s after the second attempt
    assert [r.headers["x-ganserve-timestamp"] for r in receiver.requests] == ["1000000", "1000010"]


def test_after_the_last_attempt_it_is_given_up_and_marked_failed(
    store: JobStore, deliverer: Deliverer, receiver: Receiver
) -> None:
    receiver.answers = [500] * 10
    job_id = finished_job(store, receiver.url(), JobStatus.cancelled)
    deliver_all(deliverer)

    assert len(receiver.requests) == WEBHOOKS["webhook_max_attempts"]
    record = store.get(job_id)
    assert record.webhook_status == WebhookStatus.failed
    assert [d.attempt for d in record.webhook_deliveries] == [1, 2, 3, 4]
    assert (outbox(store, job_id).state, outbox(store, job_id).attempts) == (OutboxState.failed, 4)
    time.sleep(4 * BACKOFF_S)
    deliverer.scan()
    assert len(receiver.requests) == 4


def test_a_redirect_is_not_followed(store: JobStore, hook_settings: Settings, receiver: Receiver) -> None:
    receiver.answers = [(302, {"Location": receiver.url("/elsewhere")})] * 2
    job_id = finished_job(store, receiver.url())
    deliver_all(Deliverer(store, hook_settings.model_copy(update={"webhook_max_attempts": 2})))

    assert [c.path for c in receiver.requests] == ["/hook", "/hook"]
    record = store.get(job_id)
    assert record.webhook_status == WebhookStatus.failed
    assert all(
        d.status_code == 302 and "redirects are not followed" in (d.error or "") for d in record.webhook_deliveries
    )


def test_an_answer_past_the_deadline_is_a_failed_attempt(
    store: JobStore, hook_settings: Settings, receiver: Receiver
) -> None:
    receiver.delay_s = 2.0
    job_id = finished_job(store, receiver.url())
    deliverer = Deliverer(store, hook_settings, timeout_s=0.2)
    t = time.monotonic()
    assert deliverer.scan() == [job_id]
    assert time.monotonic() - t < 1.5
    [delivery] = store.get(job_id).webhook_deliveries
    assert delivery.status_code is None and "no answer within 0.2 s" in (delivery.error or "")
    assert store.get(job_id).webhook_status == WebhookStatus.pending  # it is retried
    assert (outbox(store, job_id).state, outbox(store, job_id).attempts) == (OutboxState.pending, 1)


# --- where it may go ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "host", "refused_because"),
    [
        ({"webhook_allowed_hosts": "localhost"}, "localhost", "a loopback address"),
        ({"webhook_allowed_hosts": "example.org"}, "127.0.0.1", "not one this server may call"),
        ({"webhook_secret": None}, "127.0.0.1", "GANSERVE_WEBHOOK_SECRET"),
        ({"webhook_allowed_hosts": "*.example.com"}, f"{TOO_LONG_LABEL}.example.com", "not a DNS name"),
    ],
    ids=["private-address", "host-no-longer-allowed", "secret-unset", "not-a-dns-name"],
)
def test_a_call_refused_at_delivery_is_failed_at_once(
    store: JobStore,
    hook_settings: Settings,
    receiver: Receiver,
    overrides: dict[str, Any],
    host: str,
    refused_because: str,
) -> None:
    """Checked again when the call is due: what the name resolves to then, and the settings of then."""
    job_id = finished_job(store, receiver.url(host=host))
    deliver_all(Deliverer(store, hook_settings.model_copy(update=overrides)))

    assert receiver.requests == []
    record = store.get(job_id)
    assert record.webhook_status == WebhookStatus.failed
    [delivery] = record.webhook_deliveries
    assert delivery.status_code is None and refused_because in (delivery.error or "")
    assert (outbox(store, job_id).state, outbox(store, job_id).attempts) == (OutboxState.failed, 1)


def test_a_private_address_is_called_when_allowed(store: JobStore, hook_settings: Settings, receiver: Receiver):
    """`GANSERVE_WEBHOOK_ALLOW_PRIVATE=true` lets an allowed name resolve to the internal network (here: loopback);
    an IP the allow-list names needs no such setting (every other test here)."""
    job_id = finished_job(store, receiver.url(host="localhost"))
    allow = {"webhook_allowed_hosts": "localhost", "webhook_allow_private": True}
    deliver_all(Deliverer(store, hook_settings.model_copy(update=allow)))
    assert len(receiver.requests) == 1 and store.get(job_id).webhook_status == WebhookStatus.delivered


@pytest.mark.parametrize(
    ("host", "allowed", "ok"),
    [
        ("hooks.example.com", ["hooks.example.com"], True),
        ("HOOKS.example.com.", ["hooks.example.com"], True),
        ("a.hooks.example.com", ["*.example.com"], True),
        ("example.com", ["*.example.com"], False),
        ("evilexample.com", ["*.example.com"], False),
        ("example.com.evil.net", ["example.com"], False),
        ("10.0.0.5", ["10.0.0.5"], True),
        ("10.0.0.5", ["10.0.0.6", "*.0.0.5"], False),
        ("::1", ["0:0:0:0:0:0:0:1"], True),
        ("hooks.example.com", [], False),
    ],
)
def test_the_allow_list(host: str, allowed: list[str], ok: bool) -> None:
    assert host_allowed(host, allowed) is ok


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("93.184.215.14", None),
        ("2606:4700::1111", None),
    ],
)
def test_non_public_addresses(address: str, kind: str | None) -> None:
    assert not_public(ip_address(address)) == kind


# --- POST /train -------------------------------------------------------------------------------------------


@pytest.fixture
def hook_client(make_app: Callable[..., FastAPI], publish_model: Callable[..., int]) -> Iterator[TestClient]:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(**WEBHOOKS), headers=AUTH) as c:
        yield c


@pytest.mark.parametrize(
    ("overrides", "webhook", "says"),
    [
        ({}, "http://evil.example.com/hook", "GANSERVE_WEBHOOK_ALLOWED_HOSTS"),
        ({}, "http://10.0.0.1/hook", "GANSERVE_WEBHOOK_ALLOWED_HOSTS"),
        ({}, "http://127.0.0.1.evil.example.com/hook", "GANSERVE_WEBHOOK_ALLOWED_HOSTS"),
        ({"webhook_allowed_hosts": ""}, "http://127.0.0.1/hook", "GANSERVE_WEBHOOK_ALLOWED_HOSTS"),
        ({"webhook_secret": None}, "http://127.0.0.1/hook", "GANSERVE_WEBHOOK_SECRET"),
        ({}, "ftp://127.0.0.1/hook", "http:// or https://"),
        ({}, "file:///etc/passwd", "http:// or https://"),
        ({}, "gopher://127.0.0.1:6379/_FLUSHALL", "http:// or https://"),
        ({}, "http://user:pw@127.0.0.1/hook", "credentials"),
        ({}, "http://127.0.0.1:99999/hook", "not a valid URL"),
        ({}, "http:///hook", "no host"),
        ({}, "http://127.0.0.1/a b", "spaces"),
        ({}, "http://127.0.0.1/" + "a" * 2000, "at most 2000"),
        ({"webhook_allowed_hosts": "*.example.com"}, f"http://{TOO_LONG_LABEL}.example.com/", "not a DNS name"),
        ({"webhook_allowed_hosts": "*.example.com"}, "http://hooks..example.com/", "not a DNS name"),
    ],
)
def test_a_webhook_the_server_will_not_call_is_refused_at_submission(
    make_app: Callable[..., FastAPI],
    publish_model: Callable[..., int],
    sender: FakeSender,
    overrides: dict[str, Any],
    webhook: str,
    says: str,
) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(**{**WEBHOOKS, **overrides}), headers=AUTH) as client:
        r = client.post("/train", json={**BODY, "webhook": webhook})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "webhook"] and says in r.json()["message"]
        assert client.get("/train").json()["count"] == 0 and sender.sent == []


def test_the_webhook_is_the_jobs_not_the_configs(hook_client: TestClient, receiver: Receiver) -> None:
    url = receiver.url()
    r = hook_client.post("/train", json={**BODY, "webhook": url})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["webhook"] == url and "webhook" not in job["config"]
    assert (job["webhook_status"], job["webhook_deliveries"]) == (None, [])
    assert hook_client.post("/train", json=BODY).json()["webhook"] is None  # still optional
    # The same Idempotency-Key with another webhook is another request.
    first = hook_client.post("/train", json={**BODY, "webhook": url}, headers={"Idempotency-Key": "k"})
    other = hook_client.post("/train", json={**BODY, "webhook": url + "2"}, headers={"Idempotency-Key": "k"})
    assert first.status_code == 202 and other.status_code == 422


# --- exactly one delivery per finished job -----------------------------------------------------------------


@contextlib.contextmanager
def scanning(deliverer: Deliverer) -> Iterator[None]:
    """`deliverer` scans in a thread of its own, as a second API process would, for the duration of the block."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            deliverer.scan()
            time.sleep(0.005)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _worker_succeeds(client: TestClient, store: JobStore, sender: FakeSender, url: str) -> str:
    job_id = client.post("/train", json={**BODY, "webhook": url}).json()["id"]
    store.update(job_id, status=JobStatus.running, started_at=now(), attempts=1)
    store.update(job_id, status=JobStatus.succeeded, finished_at=now())
    return job_id


def _cancel_queued(client: TestClient, store: JobStore, sender: FakeSender, url: str) -> str:
    job_id = client.post("/train", json={**BODY, "webhook": url}).json()["id"]
    assert client.delete(f"/train/{job_id}").json()["status"] == "cancelled"
    return job_id


def _broker_down(client: TestClient, store: JobStore, sender: FakeSender, url: str) -> str:
    sender.error = ConnectionError("no broker")
    r = client.post("/train", json={**BODY, "webhook": url})
    assert r.status_code == 503
    return r.json()["detail"]["id"]


def _reaper_fails(client: TestClient, store: JobStore, sender: FakeSender, url: str) -> str:
    job_id = client.post("/train", json={**BODY, "webhook": url}).json()["id"]
    store.update(job_id, status=JobStatus.running, started_at=now(), attempts=3, heartbeat_at=now() - timedelta(1))
    clock = [0.0]
    reaper = Reaper(store, sender, stale_after_s=1.0, max_attempts=3, clock=lambda: clock[0])
    assert reaper.scan() == []
    clock[0] += 1.0
    assert reaper.scan() == [job_id]
    return job_id


@pytest.mark.parametrize(
    ("finish", "status"),
    [
        (_worker_succeeds, "succeeded"),
        (_cancel_queued, "cancelled"),
        (_broker_down, "failed"),
        (_reaper_fails, "failed"),
    ],
    ids=["worker-success", "cancel-queued", "broker-down", "reaper"],
)
def test_each_way_a_job_ends_owes_exactly_one_delivery(
    hook_client: TestClient,
    hook_settings: Settings,
    sender: FakeSender,
    receiver: Receiver,
    finish: Callable[..., str],
    status: str,
) -> None:
    """The app's own deliverer (its lifespan's) and a second one, as another API process would run, both
    scan the outbox while the job ends; once delivered, the finished record is written again: still one call."""
    store: JobStore = hook_client.app.state.ganserve.jobs  # type: ignore[attr-defined]
    with scanning(Deliverer(store, hook_settings)):
        job_id = finish(hook_client, store, sender, receiver.url())
        wait_until(lambda: store.get(job_id).webhook_status == WebhookStatus.delivered)
        store.update(job_id, status=JobStatus(status), error="written again")  # no second transition
        time.sleep(10 * BACKOFF_S)  # several more scans of both
    [call] = receiver.for_job(job_id)
    assert call.job["status"] == status
    assert len(store.get(job_id).webhook_deliveries) == 1 and outbox(store, job_id).state == OutboxState.delivered
    shown = hook_client.get(f"/train/{job_id}").json()
    assert shown["webhook_status"] == "delivered" and len(shown["webhook_deliveries"]) == 1


def test_a_job_that_finishes_twice_owes_one_call(store: JobStore, deliverer: Deliverer, receiver: Receiver) -> None:
    """Nothing is owed before a job finishes. A job cancelled while queued that a worker starts all the same
    (it read the record just before) and finishes: its status is written, and its webhook was owed once."""
    job = store.create(config=TrainConfig(**BODY), webhook=receiver.url())
    store.update(job.id, status=JobStatus.running, started_at=now())
    assert store.webhook(job.id) is None and deliverer.scan() == [] and receiver.requests == []
    store.update(job.id, status=JobStatus.cancelled, finished_at=now())
    deliver_all(deliverer)
    store.update(job.id, status=JobStatus.running, started_at=now())
    assert store.update(job.id, status=JobStatus.succeeded, finished_at=now()).status == JobStatus.succeeded
    assert store.get(job.id).webhook_status == WebhookStatus.delivered  # what the outbox says, not owed again
    deliverer.scan()
    assert [r.job["status"] for r in receiver.requests] == ["cancelled"]
    assert (outbox(store, job.id).state, outbox(store, job.id).attempts) == (OutboxState.delivered, 1)


def test_two_deliverers_scanning_at_once_never_call_twice(
    db_store: JobStore, hook_settings: Settings, receiver: Receiver
) -> None:
    receiver.answers, receiver.delay_s = [500, 500, 503, 500], 0.01
    jobs = [finished_job(db_store, receiver.url()) for _ in range(12)]
    first, second = Deliverer(db_store, hook_settings), Deliverer(db_store, hook_settings)
    threads = [threading.Thread(target=deliver_all, args=(d,)) for d in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not owed(db_store)
    assert len(receiver.requests) == len(jobs) + 4  # one call each, plus the four that failed and were retried
    for job_id in jobs:
        calls, record = receiver.for_job(job_id), db_store.get(job_id)
        assert [c.status for c in calls][-1] == 200 and sum(c.status == 200 for c in calls) == 1
        assert [d.attempt for d in record.webhook_deliveries] == list(range(1, len(calls) + 1))
        assert record.webhook_status == WebhookStatus.delivered
        assert outbox(db_store, job_id).attempts == len(calls)


def test_two_deliverers_scanning_the_same_due_entries_make_one_attempt_each(
    db_store: JobStore, hook_settings: Settings, receiver: Receiver
) -> None:
    """Both list the same due entries at the same moment and race for each claim: every entry is called once,
    by one of them."""
    receiver.delay_s = 0.005
    jobs = [finished_job(db_store, receiver.url()) for _ in range(16)]
    deliverers = [Deliverer(db_store, hook_settings) for _ in range(2)]
    start, called = threading.Barrier(2), [[], []]

    def scan(i: int) -> None:
        start.wait()
        called[i] = deliverers[i].scan()

    threads = [threading.Thread(target=scan, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(called[0] + called[1]) == sorted(jobs)  # each by exactly one of the two
    assert sorted(r.job["id"] for r in receiver.requests) == sorted(jobs)
    for job_id in jobs:
        assert [d.attempt for d in db_store.get(job_id).webhook_deliveries] == [1]
        assert (outbox(db_store, job_id).state, outbox(db_store, job_id).attempts) == (OutboxState.delivered, 1)


# --- the outbox outlives its deliverer ---------------------------------------------------------------------


def test_a_new_deliverer_continues_where_the_last_one_stopped(
    store: JobStore, hook_settings: Settings, receiver: Receiver
) -> None:
    receiver.answers = [500]
    job_id = finished_job(store, receiver.url())
    assert Deliverer(store, hook_settings).scan() == [job_id]  # attempt 1 fails; that process then stops
    time.sleep(BACKOFF_S)
    deliver_all(Deliverer(store, hook_settings))  # a restarted API
    calls = receiver.requests
    assert [c.status for c in calls] == [500, 200]
    assert calls[0].headers["x-ganserve-delivery"] == calls[1].headers["x-ganserve-delivery"]
    assert [d.attempt for d in store.get(job_id).webhook_deliveries] == [1, 2]


def test_a_deliverer_told_to_stop_ends_its_scan_after_the_attempt_in_flight(
    store: JobStore, hook_settings: Settings, receiver: Receiver
) -> None:
    """What it did not reach stays owed, unclaimed, for the next deliverer: nothing is lost by stopping."""
    receiver.hold = threading.Event()
    jobs = [finished_job(store, receiver.url()) for _ in range(3)]
    stopping = Deliverer(store, hook_settings)
    called: list[str] = []
    thread = threading.Thread(target=lambda: called.extend(stopping.scan()))
    thread.start()
    wait_until(lambda: len(receiver.requests) == 1)  # its first attempt is in flight
    stopping.stopping.set()
    receiver.hold.set()
    thread.join()

    [first] = called
    assert [r.job["id"] for r in receiver.requests] == [first]
    assert outbox(store, first).state == OutboxState.delivered
    rest = [j for j in jobs if j != first]
    assert all((outbox(store, j).state, outbox(store, j).attempts) == (OutboxState.pending, 0) for j in rest)
    assert sorted(Deliverer(store, hook_settings).scan()) == sorted(rest)
    assert len(receiver.requests) == 3


def test_a_claim_abandoned_mid_attempt_is_owed_again(
    db_store: JobStore, hook_settings: Settings, receiver: Receiver
) -> None:
    job_id = finished_job(db_store, receiver.url())
    t0 = time.time()
    assert db_store.claim_webhook(job_id, wall=t0) is not None  # a deliverer claimed it, then was killed
    clock = [t0]
    deliverer = Deliverer(db_store, hook_settings, claim_stale_s=30.0, wall=lambda: clock[0])
    assert deliverer.scan() == [] and receiver.requests == []
    clock[0] = t0 + 30.0
    assert deliverer.scan() == [] and receiver.requests == []  # not older than 30 s yet
    clock[0] = t0 + 30.5
    assert deliverer.scan() == [job_id]
    assert len(receiver.requests) == 1
    assert (outbox(db_store, job_id).state, outbox(db_store, job_id).attempts) == (OutboxState.delivered, 1)
    assert [d.attempt for d in db_store.get(job_id).webhook_deliveries] == [1]


def test_an_attempt_that_outlives_its_claim_changes_nothing_its_successor_settled(
    db_store: JobStore, hook_settings: Settings, receiver: Receiver
) -> None:
    """A deliverer whose clock lags the others' by more than the stale claim (30 s) has its claim taken over
    mid-attempt: the receiver gets the delivery twice (the same X-Ganserve-Delivery, as at-least-once allows),
    and the late attempt's failure is logged but neither reopens the entry nor overwrites its status."""
    receiver.answers, receiver.hold = [500], threading.Event()
    job_id = finished_job(db_store, receiver.url())
    lagging = Deliverer(db_store, hook_settings, wall=lambda: time.time() - 40.0)
    called: list[str] = []
    thread = threading.Thread(target=lambda: called.extend(lagging.scan()))
    thread.start()
    wait_until(lambda: len(receiver.requests) == 1)  # its attempt is in flight; its claim looks 40 s old
    assert Deliverer(db_store, hook_settings).scan() == [job_id]  # given back as abandoned, claimed, delivered
    receiver.hold.set()
    thread.join()

    assert called == [job_id]
    assert [r.status for r in receiver.requests] == [500, 200]
    assert len({r.headers["x-ganserve-delivery"] for r in receiver.requests}) == 1
    record = db_store.get(job_id)
    assert [(d.attempt, d.status_code) for d in record.webhook_deliveries] == [(1, 200), (1, 500)]
    assert record.webhook_status == WebhookStatus.delivered
    assert (outbox(db_store, job_id).state, outbox(db_store, job_id).attempts) == (OutboxState.delivered, 1)
    time.sleep(2 * BACKOFF_S)
    assert Deliverer(db_store, hook_settings).scan() == [] and len(receiver.requests) == 2


def test_the_api_delivers_what_was_owed_while_it_was_down(
    make_app: Callable[..., FastAPI], publish_model: Callable[..., int], store: JobStore, receiver: Receiver
) -> None:
    publish_model(DEFAULT_MODEL)
    job_id = finished_job(store, receiver.url())  # by a worker, while no API runs
    time.sleep(0.2)
    assert receiver.requests == []
    with TestClient(make_app(**WEBHOOKS), headers=AUTH) as client:
        wait_until(lambda: client.get(f"/train/{job_id}").json()["webhook_status"] == "delivered")
        [delivery] = client.get(f"/train/{job_id}").json()["webhook_deliveries"]
    assert delivery["status_code"] == 200 and len(receiver.requests) == 1
