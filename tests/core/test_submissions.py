"""What each key submitted (core/submissions.py), on SQLite and on PostgreSQL: one submission of a key at a
time, its active jobs, and its Idempotency-Keys for 24 hours."""

import threading
import time
from datetime import UTC, datetime, timedelta

from core.db import Database
from core.jobs import JobStore
from core.records import JobStatus
from core.submissions import IDEMPOTENCY_TTL, Submissions
from core.train_config import TrainConfig


def test_submissions_of_one_key_take_turns(any_db: Database) -> None:
    """Two submissions of one key that each check the queue and then add a job: the second sees the first's."""
    submissions, jobs = Submissions(any_db), JobStore(any_db)
    seen: list[int] = []
    inside = threading.Event()

    def submit() -> None:
        with submissions.lock("alice") as conn:
            seen.append(len(submissions.active_jobs(conn, "alice")))
            inside.set()
            time.sleep(0.2)  # the other submission arrives meanwhile, and must wait
            jobs.create(owner="alice", conn=conn, config=TrainConfig(model_name="x"))

    first = threading.Thread(target=submit)
    first.start()
    inside.wait(5)
    submit()
    first.join()
    assert seen == [0, 1]
    assert len(submissions.jobs_of("alice")) == 2


def test_active_jobs_are_the_key_s_queued_and_running_ones(any_db: Database) -> None:
    submissions, jobs = Submissions(any_db), JobStore(any_db)
    running = jobs.create(owner="alice", config=TrainConfig(model_name="a"))
    done = jobs.create(owner="alice", config=TrainConfig(model_name="b"))
    other = jobs.create(owner="bob", config=TrainConfig(model_name="c"))
    jobs.update(running.id, status=JobStatus.running)
    jobs.update(done.id, status=JobStatus.succeeded)
    with submissions.lock("alice") as conn:
        assert submissions.active_jobs(conn, "alice") == [running.id]
    assert submissions.jobs_of("alice") == {running.id, done.id} and submissions.jobs_of("bob") == {other.id}


def test_an_idempotency_key_is_remembered_for_a_day(any_db: Database) -> None:
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    submissions = Submissions(any_db, clock=lambda: clock[0])
    jobs = JobStore(any_db)
    job = jobs.create(owner="alice", config=TrainConfig(model_name="x"))
    with submissions.lock("alice") as conn:
        assert submissions.recall(conn, "alice", "retry-1") is None
        submissions.remember(conn, "alice", "retry-1", job.id, "f" * 64)
    with submissions.lock("alice") as conn:
        prior = submissions.recall(conn, "alice", "retry-1")
        assert prior is not None and prior.job_id == job.id and prior.request_sha256 == "f" * 64
        assert submissions.recall(conn, "bob", "retry-1") is None  # another key's are its own
    clock[0] += IDEMPOTENCY_TTL + timedelta(seconds=1)
    with submissions.lock("alice") as conn:
        assert submissions.recall(conn, "alice", "retry-1") is None


def test_a_forgotten_idempotency_key_may_be_used_again(any_db: Database) -> None:
    submissions, jobs = Submissions(any_db), JobStore(any_db)
    job = jobs.create(owner="alice", config=TrainConfig(model_name="x"))
    with submissions.lock("alice") as conn:
        submissions.remember(conn, "alice", "k", job.id, "a" * 64)
    submissions.forget("alice", "k")
    with submissions.lock("alice") as conn:
        assert submissions.recall(conn, "alice", "k") is None
        submissions.remember(conn, "alice", "k", job.id, "b" * 64)  # no conflict with the forgotten one
