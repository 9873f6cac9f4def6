"""`Idempotency-Key` on POST /train: a retry returns the job the first request made, never a second one;
the same Idempotency-Key for another job is a 422; they are kept in the database for 24 h."""

import hashlib
import json
import threading
import time
from datetime import timedelta

from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError
from sqlalchemy import select
from svc_support import AUTH, DEFAULT_MODEL, TRAIN_KEY, FakeSender, bearer

from core import db as tables
from core.db import connect
from core.jobs import JobStore
from core.recipes import RECIPES
from core.submissions import IDEMPOTENCY_TTL

BODY = {"model_name": "my-digits", "epochs": 2, "max_samples": 256}


def jobs(client: TestClient) -> JobStore:
    return client.app.state.ganserve.jobs  # type: ignore[attr-defined]


def post(client: TestClient, idem: str, body: dict | None = None, **headers: str):
    return client.post("/train", json=body or BODY, headers={"Idempotency-Key": idem, **headers})


def test_a_retry_returns_the_same_job(client: TestClient, sender: FakeSender) -> None:
    first = post(client, "retry-1")
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    again = post(client, "retry-1")
    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"] == f"/train/{first.json()['id']}"
    assert again.headers["idempotent-replayed"] == "true"
    assert sender.sent == [first.json()["id"]]
    assert len(jobs(client).list()) == 1


def test_the_same_job_written_differently_is_the_same_request(client: TestClient, sender: FakeSender) -> None:
    first = post(client, "spacing").json()["id"]
    reordered = json.dumps(dict(reversed(list(BODY.items()))), indent=4)
    r = client.post(
        "/train", content=reordered, headers={"Idempotency-Key": "spacing", "content-type": "application/json"}
    )
    assert r.status_code == 202 and r.json()["id"] == first
    # A default spelled out is the same job too: the job is compared as validated (MNIST's default recipe,
    # mnist-dcgan-conditional, sets batch 64), and so is the default recipe named.
    assert post(client, "spacing", {**BODY, "batch_size": 64}).json()["id"] == first
    assert post(client, "spacing", {**BODY, "recipe": "mnist-dcgan-conditional"}).json()["id"] == first
    assert len(sender.sent) == 1


def test_a_recipe_spelled_out_without_its_name_is_another_request(client: TestClient, sender: FakeSender) -> None:
    """The recipe's name is part of the validated config (the record shows it), so the same fields sent without it
    are another job: the Idempotency-Key of the first is a 422 for them, as for any other job."""
    named = {**BODY, "recipe": "mnist-dcgan"}
    first = post(client, "recipe", named).json()["id"]
    spelled = {**BODY, **RECIPES["mnist-dcgan"].sets}
    r = post(client, "recipe", spelled)
    assert r.status_code == 422 and r.json()["error"] == "idempotency_key_reused"
    assert post(client, "recipe", named).json()["id"] == first
    assert sender.sent == [first]


def test_the_same_idempotency_key_for_another_job_is_422(client: TestClient, sender: FakeSender) -> None:
    first = post(client, "reused").json()["id"]
    r = post(client, "reused", {**BODY, "epochs": 3})
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "idempotency_key_reused" and body["detail"] == {"id": first}
    assert "a new Idempotency-Key" in body["message"]
    assert sender.sent == [first] and len(jobs(client).list()) == 1


def test_idempotency_keys_are_per_api_key(client: TestClient, anon: TestClient) -> None:
    mine = post(client, "shared-name").json()["id"]
    theirs = post(anon, "shared-name", {**BODY, "model_name": "their-digits"}, **bearer(TRAIN_KEY))  # a name of its own
    assert theirs.status_code == 202 and theirs.json()["id"] != mine
    assert "idempotent-replayed" not in theirs.headers


def test_without_the_header_every_post_is_a_new_job(client: TestClient) -> None:
    assert client.post("/train", json=BODY).json()["id"] != client.post("/train", json=BODY).json()["id"]


def test_a_retry_after_a_restart_returns_the_same_job(make_app, publish_model, settings) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(), headers=AUTH) as c:
        first = post(c, "restart").json()["id"]
    with TestClient(make_app(), headers=AUTH) as c:  # a new API process (and no Redis at all)
        r = post(c, "restart")
        assert r.status_code == 202 and r.json()["id"] == first
    with connect(settings.effective_database_url).begin() as conn:
        rows = conn.execute(select(tables.idempotency_keys)).all()
    assert [(r.key_name, r.job_id) for r in rows] == [("test-admin", first)]
    assert rows[0].key_sha256 == hashlib.sha256(b"restart").hexdigest()  # stored by its hash, never itself


def test_records_expire_after_24_hours(client: TestClient, monkeypatch) -> None:
    submissions = client.app.state.ganserve.submissions  # type: ignore[attr-defined]
    first = post(client, "old").json()["id"]
    real_clock = submissions.clock
    monkeypatch.setattr(submissions, "clock", lambda: real_clock() + IDEMPOTENCY_TTL - timedelta(minutes=1))
    assert post(client, "old").json()["id"] == first
    monkeypatch.setattr(submissions, "clock", lambda: real_clock() + IDEMPOTENCY_TTL + timedelta(minutes=1))
    r = post(client, "old", {**BODY, "epochs": 3})  # expired: neither replayed nor a conflict
    assert r.status_code == 202 and r.json()["id"] != first


def test_expired_records_are_deleted(client: TestClient, settings, monkeypatch) -> None:
    submissions = client.app.state.ganserve.submissions  # type: ignore[attr-defined]
    post(client, "a")

    def kept() -> list[str]:
        with submissions.db.begin() as conn:
            return [r.job_id for r in conn.execute(select(tables.idempotency_keys)).all()]

    assert len(kept()) == 1
    real_clock = submissions.clock
    monkeypatch.setattr(submissions, "clock", lambda: real_clock() + IDEMPOTENCY_TTL + timedelta(hours=2))
    newer = post(client, "b").json()["id"]  # remembering one deletes the expired ones
    assert kept() == [newer]


def test_a_submission_the_broker_refused_can_be_retried(client: TestClient, sender: FakeSender) -> None:
    sender.error = OperationalError("Error 111 connecting")
    r = post(client, "broker-down")
    assert r.status_code == 503
    failed = r.json()["detail"]["id"]
    sender.error = None
    r = post(client, "broker-down")  # the retry the 503's Retry-After asked for
    assert r.status_code == 202 and r.json()["id"] != failed and r.json()["status"] == "queued"
    assert sender.sent == [r.json()["id"]]
    assert post(client, "broker-down").json()["id"] == r.json()["id"]


def test_a_replay_does_not_count_against_the_queue_limit(make_app, publish_model) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(max_queued_per_key=1), headers=AUTH) as c:
        first = post(c, "only").json()["id"]
        r = post(c, "only")
        assert r.status_code == 202 and r.json()["id"] == first
        assert post(c, "another").status_code == 429


def test_concurrent_retries_make_one_job(client: TestClient, sender: FakeSender, monkeypatch) -> None:
    """A client that times out and retries while its first request is still sending to the broker."""
    real_call = FakeSender.__call__

    def slow(self: FakeSender, job_id: str) -> None:
        time.sleep(0.3)
        real_call(self, job_id)

    monkeypatch.setattr(FakeSender, "__call__", slow)
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(post(client, "race").json()["id"])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 4 and len(set(ids)) == 1
    assert len(sender.sent) == 1 and len(jobs(client).list()) == 1


def test_the_header_is_bounded(client: TestClient) -> None:
    r = post(client, "k" * 256)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert jobs(client).list() == []
