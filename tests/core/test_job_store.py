"""The records of truth in the database (core/records.py, core/jobs.py, core/evaluations.py), on SQLite and on
PostgreSQL: what is stored reads back, unreadable records are unknown, updates from two processes never lose
each other's changes, and exactly one caller wins a claim."""

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from core import db as tables
from core.db import Database
from core.evaluations import EvaluateRequest, EvaluationStore
from core.jobs import JobStore, OutboxState, Progress, WebhookStatus
from core.records import JobStatus, now
from core.train_config import TrainConfig

WEBHOOK = "https://hooks.example.com/done"


@pytest.fixture
def store(any_db: Database) -> JobStore:
    return JobStore(any_db)


def test_non_finite_numbers_are_stored_as_null(store: JobStore) -> None:
    record = store.create(config=TrainConfig(model_name="x"))
    progress = Progress(epochs=1, total_steps=10, eta_seconds=math.inf, images_per_sec=math.nan)
    store.update(record.id, metrics={"d_loss": math.nan, "g_loss": 0.5}, progress=progress)
    with store.db.begin() as conn:  # strict JSON in the column: no NaN literal
        raw = conn.execute(select(tables.jobs.c.record).where(tables.jobs.c.id == record.id)).scalar_one()
    assert raw["metrics"] == {"d_loss": None, "g_loss": 0.5} and raw["progress"]["eta_seconds"] is None
    again = store.get(record.id)
    assert again.metrics == {"d_loss": None, "g_loss": 0.5} and again.status is JobStatus.queued


def test_malformed_and_unknown_ids_are_unknown(store: JobStore) -> None:
    for bad in ("../etc", "", ".hidden", "A" * 65, "0" * 32):
        with pytest.raises(KeyError):
            store.get(bad)
        with pytest.raises(KeyError):
            store.update(bad, status=JobStatus.failed)


def test_list_is_newest_first_by_status_and_owner(store: JobStore) -> None:
    first = store.create(owner="alice", config=TrainConfig(model_name="a"))
    second = store.create(owner="bob", config=TrainConfig(model_name="b"))
    store.update(first.id, status=JobStatus.running)
    assert [r.id for r in store.list()] == [second.id, first.id]
    assert [r.id for r in store.list(status=JobStatus.running)] == [first.id]
    assert [r.id for r in store.list(owner="bob")] == [second.id]
    assert store.count({JobStatus.queued, JobStatus.running}) == 2
    assert store.count({JobStatus.queued}, owner="alice") == 0


def test_a_record_this_version_cannot_read_is_unknown(store: JobStore) -> None:
    record = store.create(config=TrainConfig(model_name="x"))
    with store.db.begin() as conn:
        raw = conn.execute(select(tables.jobs.c.record).where(tables.jobs.c.id == record.id)).scalar_one()
        raw["config"]["no_such_field"] = 1  # e.g. written by a newer ganserve
        conn.execute(update(tables.jobs).where(tables.jobs.c.id == record.id).values(record=raw))
    with pytest.raises(KeyError):
        store.get(record.id)
    assert store.list() == []


def test_the_cancel_request_is_apart_from_the_record(store: JobStore) -> None:
    record = store.create(config=TrainConfig(model_name="x"))
    assert not store.cancel_requested(record.id)
    store.request_cancel(record.id)
    assert store.cancel_requested(record.id)
    assert store.get(record.id).status is JobStatus.queued  # the record itself is the worker's to change


def test_concurrent_updates_lose_nothing(store: JobStore) -> None:
    """Two writers (a worker's progress, the API's webhook log) each append to the record 25 times at once: with
    the row locked for each read-modify-write, all 50 appends are there."""
    record = store.create(config=TrainConfig(model_name="x"))

    def append(tag: str) -> None:
        for i in range(25):
            store.update(record.id, apply=lambda r, i=i: {"samples": [*r.samples, f"{tag}{i}"]})

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(append, ["a", "b"]))
    assert sorted(store.get(record.id).samples) == sorted([f"{t}{i}" for t in "ab" for i in range(25)])


def test_each_attempt_is_claimed_once(store: JobStore) -> None:
    record = store.create(config=TrainConfig(model_name="x"))
    barrier = threading.Barrier(4)

    def claim(worker: int) -> bool:
        barrier.wait()
        return store.claim(record.id, 1, f"host:{worker}")

    with ThreadPoolExecutor(4) as pool:
        won = list(pool.map(claim, range(4)))
    assert won.count(True) == 1
    assert store.claim(record.id, 2, "host:9")  # the next attempt is a new claim


def test_finishing_a_job_with_a_webhook_owes_its_call_once(store: JobStore) -> None:
    record = store.create(config=TrainConfig(model_name="x"), webhook=WEBHOOK)
    assert store.webhook(record.id) is None
    store.update(record.id, status=JobStatus.running)
    assert store.webhook(record.id) is None  # not finished: nothing owed yet
    done = store.update(record.id, status=JobStatus.succeeded, finished_at=now())
    entry = store.webhook(record.id)
    assert done.webhook_status is WebhookStatus.pending
    assert entry is not None and entry.state is OutboxState.pending and entry.attempts == 0
    store.update(record.id, error=None)  # later changes to a finished job owe nothing more
    assert store.webhook(record.id) == entry
    plain = store.create(config=TrainConfig(model_name="y"))
    store.update(plain.id, status=JobStatus.cancelled, finished_at=now())
    assert store.webhook(plain.id) is None  # no webhook, no outbox entry


def test_one_deliverer_claims_each_due_webhook(store: JobStore) -> None:
    record = store.create(config=TrainConfig(model_name="x"), webhook=WEBHOOK)
    store.update(record.id, status=JobStatus.failed, finished_at=now())
    assert store.webhooks_due(wall=1000.0) == [record.id]
    barrier = threading.Barrier(4)

    def claim(_: int) -> bool:
        barrier.wait()
        return store.claim_webhook(record.id, wall=1000.0) is not None

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(claim, range(4))).count(True) == 1
    assert store.webhooks_due(wall=1000.0) == []
    store.settle_webhook(record.id, OutboxState.pending, attempts=1, next_attempt_at=1010.0)
    assert store.webhooks_due(wall=1005.0) == [] and store.webhooks_due(wall=1010.0) == [record.id]


def test_an_abandoned_claim_is_owed_again(store: JobStore) -> None:
    record = store.create(config=TrainConfig(model_name="x"), webhook=WEBHOOK)
    store.update(record.id, status=JobStatus.succeeded, finished_at=now())
    assert store.claim_webhook(record.id, wall=1000.0) is not None  # and its deliverer vanishes
    assert store.release_abandoned_webhooks(wall=1020.0, stale_s=30.0) == []
    assert store.release_abandoned_webhooks(wall=1031.0, stale_s=30.0) == [record.id]
    entry = store.webhook(record.id)
    assert entry is not None and entry.state is OutboxState.pending and entry.attempts == 0


def test_evaluation_results_are_shown_under_the_weights_they_measured(any_db: Database, tmp_path) -> None:
    evaluations = EvaluationStore(any_db, tmp_path)

    def finished(sha: str, fid: float) -> str:
        record = evaluations.create(
            model="m", version=1, source="volume", stem="m/1/model", weights_sha256=sha, request=EvaluateRequest()
        )
        evaluations.update(record.id, status=JobStatus.succeeded, result={"fid": fid}, finished_at=now())
        return record.id

    old = finished("a" * 64, 50.0)
    new = finished("b" * 64, 40.0)
    queued = evaluations.create(model="m", version=1, source="volume", stem="s", request=EvaluateRequest())
    shown = evaluations.results("m", 1, "b" * 64)
    assert [r["evaluation_id"] for r in shown] == [new] and shown[0]["fid"] == 40.0 and shown[0]["n"] == 10_000
    assert [r["evaluation_id"] for r in evaluations.results("m", 1, "a" * 64)] == [old]
    assert evaluations.results("m", 2, "b" * 64) == []
    assert queued.id not in {r["evaluation_id"] for r in evaluations.results("m", 1, None)}
    assert evaluations.nn_png(new) == tmp_path / "jobs" / f"{new}-nearest.png"
    assert timedelta(0) <= now() - evaluations.get(new).created_at < timedelta(minutes=1)
