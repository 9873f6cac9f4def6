"""Limits (service/security/limits.py, the /train checks): body size 413, training bounds 422, jobs per key 429,
requests per minute 429 with Retry-After, in the process and in a real Redis (db 14, flushed), and what
happens when that Redis is gone."""

import re
import time
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from svc_support import AUTH, DEFAULT_MODEL, GENERATE_KEY, LATENT_DIM, TRAIN_KEY, FakeSender, bearer, client_on

from core.jobs import JobStore
from core.records import JobStatus, now
from service.security.limits import REDIS_PREFIX, WINDOW_S, MemoryRateLimiter, RedisRateLimiter

TEST_REDIS_URL = "redis://127.0.0.1:6379/14"  # never db 0: the machine's own Redis may be in use
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"
TRAIN_BODY = {"model_name": "my-digits", "epochs": 1, "max_samples": 256}


def jobs(client: TestClient) -> JobStore:
    return client.app.state.ganserve.jobs  # type: ignore[attr-defined]


# --- body size ----------------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_before_it_is_parsed(make_app, publish_model, sender: FakeSender) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(max_body_bytes=2048), headers=AUTH) as c:
        # Not even JSON: a parser would say 422; the size is checked first.
        r = c.post("/train", content=b"x" * 4096, headers={"content-type": "application/json"})
        assert r.status_code == 413
        body = r.json()
        assert body["error"] == "payload_too_large"
        assert "(4096 bytes)" in body["message"] and "at most 2048 bytes (GANSERVE_MAX_BODY_BYTES)" in body["message"]
        r = c.post("/generate", json={"latent": [0.123456789] * 1000})  # ~14 kB of latent
        assert r.status_code == 413
        assert c.post("/train", json=TRAIN_BODY).status_code == 202  # small bodies pass
    assert len(sender.sent) == 1


def test_a_streamed_body_is_cut_off_at_the_limit(make_app, publish_model, sender: FakeSender) -> None:
    publish_model(DEFAULT_MODEL)

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer, counted as it arrives
        for _ in range(100):
            yield b" " * 1000

    with TestClient(make_app(max_body_bytes=2048), headers=AUTH) as c:
        r = c.post("/train", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
        # No declared size to quote: this is the count of bytes received, not the Content-Length check.
        assert r.json()["message"].startswith("The request body is larger than this server accepts: at most 2048")
    assert sender.sent == []


def test_the_default_limit_is_one_mebibyte(client: TestClient) -> None:
    assert client.app.state.ganserve.settings.max_body_bytes == 1024 * 1024  # type: ignore[attr-defined]
    r = client.post("/generate", content=b"{" + b" " * (1024 * 1024), headers={"content-type": "application/json"})
    assert r.status_code == 413


# --- what a request may ask for ---------------------------------------------------------------------


def test_count_and_latent_length_are_bounded(client: TestClient) -> None:
    r = client.get("/generate?seed=1&count=65")  # max_count 64 in the tests' settings
    assert r.status_code == 422 and "less than or equal to 64" in r.json()["message"]
    r = client.post("/generate", json={"latent": [0.0] * (LATENT_DIM + 1)})
    assert r.status_code == 422 and f"exactly {LATENT_DIM} numbers" in r.json()["message"]


@pytest.mark.parametrize(
    "field, value, setting",
    [
        ("epochs", 6, "GANSERVE_MAX_EPOCHS"),
        ("steps", 101, "GANSERVE_MAX_STEPS"),
        ("max_runtime_s", 61, "GANSERVE_MAX_RUNTIME_S"),
    ],
)
def test_training_length_is_capped_by_the_settings(
    make_app, publish_model, sender: FakeSender, field: str, value: int, setting: str
) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(max_epochs=5, max_steps=100, max_runtime_s=60), headers=AUTH) as c:
        r = c.post("/train", json={**TRAIN_BODY, field: value})
        assert r.status_code == 422
        body = r.json()
        assert body["detail"][0]["loc"] == ["body", field] and setting in body["message"]
        assert c.post("/train", json={**TRAIN_BODY, field: value - 1}).status_code == 202
    assert len(sender.sent) == 1


# --- jobs queued or running per key ------------------------------------------------------------------


def test_a_key_may_have_only_so_many_jobs_queued_or_running(make_app, publish_model, sender: FakeSender) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(max_queued_per_key=2)) as c:
        train = bearer(TRAIN_KEY)
        first, second = (c.post("/train", json=TRAIN_BODY, headers=train).json()["id"] for _ in range(2))
        jobs(c).update(second, status=JobStatus.running, started_at=now())
        r = c.post("/train", json=TRAIN_BODY, headers=train)
        assert r.status_code == 429
        body = r.json()
        assert body["error"] == "too_many_jobs" and "GANSERVE_MAX_QUEUED_PER_KEY=2" in body["message"]
        assert sorted(body["detail"]["active"]) == sorted([first, second])
        assert len(jobs(c).list()) == 2  # no record was made for the refused job
        # Another key has its own allowance.
        assert c.post("/train", json=TRAIN_BODY, headers=AUTH).status_code == 202
        # A job that ends frees its place: cancelling the queued one here.
        assert c.delete(f"/train/{first}", headers=train).status_code == 202
        assert c.post("/train", json=TRAIN_BODY, headers=train).status_code == 202
        jobs(c).update(second, status=JobStatus.succeeded, finished_at=now())
        assert c.post("/train", json=TRAIN_BODY, headers=train).status_code == 202
        assert c.post("/train", json=TRAIN_BODY, headers=train).status_code == 429


def test_the_queue_count_survives_a_restart(make_app, publish_model) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(max_queued_per_key=1), headers=AUTH) as c:
        assert c.post("/train", json=TRAIN_BODY).status_code == 202
    with TestClient(make_app(max_queued_per_key=1), headers=AUTH) as c:  # a new process, the same volume
        assert c.post("/train", json=TRAIN_BODY).status_code == 429


def test_the_submitting_key_is_recorded_by_name(client: TestClient, anon: TestClient) -> None:
    job = client.post("/train", json=TRAIN_BODY).json()["id"]
    theirs = {**TRAIN_BODY, "model_name": "their-digits"}  # a model name is its first trainer's
    other = anon.post("/train", json=theirs, headers=bearer(TRAIN_KEY)).json()["id"]
    submissions = client.app.state.ganserve.submissions  # type: ignore[attr-defined]
    assert submissions.jobs_of("test-admin") == {job}
    assert submissions.jobs_of("test-train") == {other}


# --- requests per minute -----------------------------------------------------------------------------


def test_memory_limiter_counts_per_identity_per_minute() -> None:
    clock = [1000 * WINDOW_S + 10.0]
    limiter = MemoryRateLimiter(clock=lambda: clock[0])
    assert [limiter.hit("a", 2) for _ in range(2)] == [None, None]
    assert limiter.hit("a", 2) == pytest.approx(WINDOW_S - 10)
    assert limiter.hit("b", 2) is None  # another identity, its own count
    clock[0] += WINDOW_S - 10  # the next minute
    assert limiter.hit("a", 2) is None


def test_requests_over_the_rate_are_429_with_retry_after(make_app, publish_model) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(rate_limit_per_min=3)) as c:
        for _ in range(3):
            assert c.get("/train", headers=bearer(TRAIN_KEY)).status_code == 200
        r = c.get("/train", headers=bearer(TRAIN_KEY))
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= WINDOW_S
        body = r.json()
        assert body["error"] == "rate_limited" and "'test-train'" in body["message"]
        assert "GANSERVE_RATE_LIMIT_PER_MIN" in body["message"] and body["detail"]["limit_per_minute"] == 3
        # Per key: another key is not slowed by this one; all routes of a key share its count.
        assert c.get("/train", headers=AUTH).status_code == 200
        assert c.get("/generate?seed=1", headers=bearer(TRAIN_KEY)).status_code == 429


def test_a_request_counts_once(make_app, publish_model) -> None:
    """POST /train names the `train` requirement twice (router and handler): FastAPI must run it once."""
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(rate_limit_per_min=2), headers=AUTH) as c:
        assert [c.post("/train", json=TRAIN_BODY).status_code for _ in range(3)] == [202, 202, 429]


CACHED = {"if-none-match": "*"}  # a 304 when let through: the limit is what is tested, not the rendering


def test_anonymous_generate_is_limited_per_client_ip(make_app, publish_model) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(rate_limit_per_ip_per_min=2), client=("203.0.113.7", 5000)) as a:
        b = client_on(a, client=("203.0.113.8", 5000))
        assert [a.get("/generate?seed=1", headers=CACHED).status_code for _ in range(3)] == [304, 304, 429]
        r = a.post("/generate", json={"seed": 1})
        assert r.status_code == 429 and "203.0.113.7" in r.json()["message"] and r.headers["retry-after"]
        assert r.json()["detail"]["setting"] == "GANSERVE_RATE_LIMIT_PER_IP_PER_MIN"
        assert "GANSERVE_TRUSTED_PROXIES" in r.json()["message"]  # how a deployment behind a balancer fixes it
        assert b.get("/generate?seed=1", headers=CACHED).status_code == 304  # another address
        key = {**CACHED, **bearer(GENERATE_KEY)}
        assert a.get("/generate?seed=1", headers=key).status_code == 304  # a key: its own count
        assert a.get("/healthz").status_code == 200  # probes are never limited
        assert a.get("/readyz").status_code in (200, 503)  # nor is readiness (503 while the renderer loads)


def test_per_key_and_per_ip_limits_are_independent(make_app, publish_model) -> None:
    """GANSERVE_RATE_LIMIT_PER_MIN counts each key, GANSERVE_RATE_LIMIT_PER_IP_PER_MIN each anonymous address:
    a key spent does not stop its address's anonymous requests, nor the reverse."""
    publish_model(DEFAULT_MODEL)
    key = {**CACHED, **bearer(GENERATE_KEY)}
    with TestClient(make_app(rate_limit_per_min=2, rate_limit_per_ip_per_min=3), client=("203.0.113.9", 1)) as c:
        assert [c.get("/generate?seed=1", headers=key).status_code for _ in range(3)] == [304, 304, 429]
        r = c.get("/generate?seed=1", headers=key)
        assert r.json()["detail"]["setting"] == "GANSERVE_RATE_LIMIT_PER_MIN" and "'test-generate'" in r.text
        # The same address, anonymous: its own budget of 3, untouched by the key's 4 requests.
        assert [c.get("/generate?seed=1", headers=CACHED).status_code for _ in range(4)] == [304, 304, 304, 429]
        # And another key from that address is not slowed by either.
        assert c.get("/train", headers=bearer(TRAIN_KEY)).status_code == 200


TRUSTED_PEER = ("10.1.2.3", 40000)  # the load balancer: inside GANSERVE_TRUSTED_PROXIES' 10.0.0.0/8


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget(make_app, publish_model) -> None:
    """The app factory itself applies GANSERVE_TRUSTED_PROXIES (uvicorn's ProxyHeadersMiddleware): from a trusted
    peer, X-Forwarded-For names the client that is limited; from any other peer the header is ignored."""
    publish_model(DEFAULT_MODEL)
    app = make_app(rate_limit_per_ip_per_min=2, trusted_proxies="10.0.0.0/8, 192.0.2.1")
    with TestClient(app, client=TRUSTED_PEER) as balancer:

        def via_balancer(client_ip: str) -> int:
            headers = {**CACHED, "X-Forwarded-For": client_ip}
            return balancer.get("/generate?seed=1", headers=headers).status_code

        # Two clients behind one balancer: each gets 2, though the balancer sent all 6.
        assert [via_balancer("198.51.100.1") for _ in range(3)] == [304, 304, 429]
        assert [via_balancer("198.51.100.2") for _ in range(3)] == [304, 304, 429]
        # The 429 names the forwarded client, not the balancer.
        r = balancer.get("/generate?seed=1", headers={**CACHED, "X-Forwarded-For": "198.51.100.1"})
        assert "198.51.100.1" in r.json()["message"] and "10.1.2.3" not in r.json()["message"]
        # A spoofed hop before the real client is not believed: the rightmost untrusted address counts.
        assert via_balancer("6.6.6.6, 198.51.100.3") == 304

        # An untrusted peer's X-Forwarded-For is ignored: it is limited as itself, whatever it claims.
        direct = client_on(balancer, client=("203.0.113.50", 1))
        claims = [f"198.51.100.{n}" for n in range(10, 13)]
        codes = [direct.get("/generate?seed=1", headers={**CACHED, "X-Forwarded-For": ip}).status_code for ip in claims]
        assert codes == [304, 304, 429]


def test_without_trusted_proxies_forwarded_for_is_ignored(make_app, publish_model) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(rate_limit_per_ip_per_min=1), client=("127.0.0.1", 1)) as c:
        codes = [
            c.get("/generate?seed=1", headers={**CACHED, "X-Forwarded-For": f"198.51.100.{n}"}).status_code
            for n in range(2)
        ]
        assert codes == [304, 429]  # even from 127.0.0.1 (uvicorn's own default trusts it; ganserve does not)


def test_a_trusted_proxies_typo_is_a_start_up_error_naming_the_setting(make_app) -> None:
    with pytest.raises(ValueError, match=re.escape("GANSERVE_TRUSTED_PROXIES: '10.0.0.0/33'")):
        make_app(trusted_proxies="10.0.0.1,10.0.0.0/33")


def test_a_rate_of_zero_turns_the_limiter_off(make_app, publish_model) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(rate_limit_per_min=0), headers=AUTH) as c:
        assert all(c.get("/train").status_code == 200 for _ in range(20))


def test_the_embedded_broker_means_an_in_process_limiter(client: TestClient) -> None:
    assert isinstance(client.app.state.ganserve.rate_limiter, MemoryRateLimiter)  # type: ignore[attr-defined]


@pytest.fixture
def test_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {TEST_REDIS_URL}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_with_redis_every_api_process_shares_one_count(make_app, publish_model, test_redis: redis.Redis) -> None:
    publish_model(DEFAULT_MODEL)
    settings = {"broker_url": None, "redis_url": TEST_REDIS_URL, "rate_limit_per_min": 3}
    first, second = make_app(**settings), make_app(**settings)
    assert isinstance(first.state.ganserve.rate_limiter, RedisRateLimiter)
    with TestClient(first, headers=AUTH) as a, TestClient(second, headers=AUTH) as b:
        assert [a.get("/train").status_code, b.get("/train").status_code, a.get("/train").status_code] == [200] * 3
        r = b.get("/train")
        assert r.status_code == 429 and r.headers["retry-after"]
    [key] = test_redis.keys(f"{REDIS_PREFIX}*")
    assert key.decode().startswith(f"{REDIS_PREFIX}key:test-admin:")  # the key's name, never the key
    assert int(test_redis.get(key)) == 4
    assert 0 < test_redis.ttl(key) <= 2 * WINDOW_S


def test_when_redis_is_gone_requests_are_still_answered_and_limited(make_app, publish_model, caplog) -> None:
    publish_model(DEFAULT_MODEL)
    app = make_app(broker_url=None, redis_url=DEAD_REDIS_URL, rate_limit_per_min=3)
    with TestClient(app, headers=AUTH) as c:
        started = time.monotonic()
        codes = [c.get("/train").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]  # no 500: the in-process count takes over
        assert time.monotonic() - started < 3  # and Redis is not tried again on every request
    assert caplog.text.count("rate limiter: Redis does not answer") == 1


def test_the_redis_limiter_goes_back_to_redis_when_it_answers(test_redis: redis.Redis, monkeypatch) -> None:
    limiter = RedisRateLimiter(TEST_REDIS_URL)
    dead = redis.Redis.from_url(DEAD_REDIS_URL, socket_connect_timeout=0.2)
    live, limiter.client = limiter.client, dead
    assert limiter.hit("x", 5) is None  # counted in the process
    assert test_redis.keys(f"{REDIS_PREFIX}*") == []
    limiter.client = live
    monkeypatch.setattr("service.security.limits.REDIS_RETRY_S", 0.0)
    limiter._down_until = time.monotonic()  # the retry delay has passed
    assert limiter.hit("x", 5) is None
    [key] = test_redis.keys(f"{REDIS_PREFIX}x:*")
    assert int(test_redis.get(key)) == 1
