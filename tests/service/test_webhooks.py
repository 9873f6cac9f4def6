"""Webhooks (service/background/webhooks.py): a finished job's URL is called, signed, through the outbox on the volume.

Every call goes to a real HTTP server of the test's own (`Receiver`: http.server in a thread on a free local
port); nothing of the HTTP call is mocked. Back-off starts at 50 ms so retries take a fraction of a second.
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
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from svc_support import AUTH, DEFAULT_MODEL, FakeSender

from core.jobs import JobStore, WebhookStatus, owe_webhook
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
    """Answers each POST with the next of `answers` (a status, or a status and headers), then 200."""

    answers: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    delay_s: float = 0.0
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
    return JobStore(hook_settings.jobs_dir)


@pytest.fixture
def deliverer(store: JobStore, hook_settings: Settings) -> Deliverer:
    return Deliverer(store, hook_settings)


def finished_job(store: JobStore, url: str, status: JobStatus = JobStatus.succeeded) -> str:
    """A job with a webhook taken through `running` to `status`, as the worker does it (JobStore.update)."""
    job = store.create(config=TrainConfig(**BODY), webhook=url)
    store.update(job.id, status=JobStatus.running, started_at=now(), attempts=1)
    store.update(job.id, status=status, finished_at=now())
    return job.id


def outbox(store: JobStore, job_id: str) -> list[str]:
    return sorted(p.name for p in store.job_dir(job_id).glob("webhook.*"))


def owed(store: JobStore) -> bool:
    return any(store.root.glob("*/webhook.pending")) or any(store.root.glob("*/webhook.sending"))


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
    assert outbox(store, job_id) == ["webhook.pending"]
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
    assert delivery.delivery == headers["x-ganserve-delivery"]
    assert outbox(store, job_id) == ["webhook.delivered"]
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
    assert outbox(store, job_id) == ["webhook.failed"]
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


# --- where it may go ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "host", "refused_because"),
    [
        ({"webhook_allowed_hosts": "localhost"}, "localhost", "a loopback address"),
        ({"webhook_allowed_hosts": "example.org"}, "127.0.0.1", "not one this server may call"),
        ({"webhook_secret": None}, "127.0.0.1", "GANSERVE_WEBHOOK_SECRET"),
    ],
    ids=["private-address", "host-no-longer-allowed", "secret-unset"],
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
    assert outbox(store, job_id) == ["webhook.failed"]


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
    scan the volume while the job ends; once delivered, the finished record is written again: still one call."""
    store: JobStore = hook_client.app.state.ganserve.jobs  # type: ignore[attr-defined]
    with scanning(Deliverer(store, hook_settings)):
        job_id = finish(hook_client, store, sender, receiver.url())
        wait_until(lambda: store.get(job_id).webhook_status == WebhookStatus.delivered)
        store.update(job_id, status=JobStatus(status), error="written again")  # no second transition
        time.sleep(10 * BACKOFF_S)  # several more scans of both
    [call] = receiver.for_job(job_id)
    assert call.job["status"] == status
    assert len(store.get(job_id).webhook_deliveries) == 1 and outbox(store, job_id) == ["webhook.delivered"]


def test_two_deliverers_scanning_at_once_never_call_twice(
    store: JobStore, hook_settings: Settings, receiver: Receiver
) -> None:
    receiver.answers, receiver.delay_s = [500, 500, 503, 500], 0.01
    jobs = [finished_job(store, receiver.url()) for _ in range(12)]
    first, second = Deliverer(store, hook_settings), Deliverer(store, hook_settings)
    threads = [threading.Thread(target=deliver_all, args=(d,)) for d in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(receiver.requests) == len(jobs) + 4  # one call each, plus the four that failed and were retried
    for job_id in jobs:
        calls, record = receiver.for_job(job_id), store.get(job_id)
        assert [c.status for c in calls][-1] == 200 and sum(c.status == 200 for c in calls) == 1
        assert [d.attempt for d in record.webhook_deliveries] == list(range(1, len(calls) + 1))
        assert record.webhook_status == WebhookStatus.delivered


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


def test_a_claim_abandoned_mid_attempt_is_owed_again(
    store: JobStore, hook_settings: Settings, receiver: Receiver
) -> None:
    job_id = finished_job(store, receiver.url())
    job_dir = store.job_dir(job_id)
    (job_dir / "webhook.pending").rename(job_dir / "webhook.sending")  # a deliverer claimed it, then was killed
    clock = [0.0]
    deliverer = Deliverer(store, hook_settings, claim_stale_s=30.0, clock=lambda: clock[0])
    assert deliverer.scan() == [] and receiver.requests == []  # first sight of that claim
    clock[0] += 29.0
    assert deliverer.scan() == [] and receiver.requests == []
    clock[0] += 1.0
    assert deliverer.scan() == [job_id]
    assert len(receiver.requests) == 1 and outbox(store, job_id) == ["webhook.delivered"]


def test_an_entry_owed_before_its_record_was_saved_waits_for_the_record(
    store: JobStore, deliverer: Deliverer, receiver: Receiver
) -> None:
    """A process killed between the outbox entry and the record's save: nothing is sent for a job that did not
    finish; when it does finish (run again), the same entry is delivered, once."""
    job = store.create(config=TrainConfig(**BODY), webhook=receiver.url())
    store.update(job.id, status=JobStatus.running, started_at=now())
    assert owe_webhook(store.job_dir(job.id))
    assert deliverer.scan() == [] and receiver.requests == []
    store.update(job.id, status=JobStatus.succeeded, finished_at=now())
    deliver_all(deliverer)
    assert len(receiver.requests) == 1 and receiver.requests[0].job["status"] == "succeeded"


def test_the_api_delivers_what_was_owed_while_it_was_down(
    make_app: Callable[..., FastAPI], publish_model: Callable[..., int], settings: Path, receiver: Receiver
) -> None:
    publish_model(DEFAULT_MODEL)
    app = make_app(**WEBHOOKS)
    job_id = finished_job(app.state.ganserve.jobs, receiver.url())  # by a worker, while no API runs
    time.sleep(0.2)
    assert receiver.requests == []
    with TestClient(app, headers=AUTH) as client:
        wait_until(lambda: client.get(f"/train/{job_id}").json()["webhook_status"] == "delivered")
        [delivery] = client.get(f"/train/{job_id}").json()["webhook_deliveries"]
    assert delivery["status_code"] == 200 and len(receiver.requests) == 1
