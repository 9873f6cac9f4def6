"""A volume written by a version before the database: its jobs and evaluations are imported once, with their
owner, cancel request, attempts and webhook state, so the upgraded service still lists and runs them."""

import json
from pathlib import Path

from core.db import Database
from core.evaluations import EvaluateRequest, EvaluationRecord, EvaluationStore
from core.jobs import JobRecord, JobStore, OutboxState
from core.legacy import MARKER, import_volume
from core.records import JobStatus, now
from core.submissions import Submissions
from core.train_config import TrainConfig


def old_job(volume: Path, status: JobStatus, **files: str) -> JobRecord:
    record = JobRecord(
        id=f"job{len(list((volume / 'jobs').glob('*')))}",
        status=status,
        config=TrainConfig(model_name="x"),
        created_at=now(),
    )
    folder = volume / "jobs" / record.id
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(record.model_dump_json())
    for name, text in files.items():
        (folder / name.replace("_", ".").replace("attempt.", "attempt-")).write_text(text)
    return record


def test_the_files_of_an_older_version_are_imported_once(any_db: Database, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    (volume / "jobs").mkdir(parents=True)
    running = old_job(volume, JobStatus.running, cancel="", attempt_1="")
    owed = {"delivery": "d-1", "attempts": 2, "next_attempt_at": 123.0}
    finished = old_job(volume, JobStatus.succeeded, webhook_sending=json.dumps(owed))
    (volume / "jobs" / "broken").mkdir()
    (volume / "jobs" / "broken" / "job.json").write_text("{not json")
    (volume / "submissions" / "alice" / "jobs").mkdir(parents=True)
    (volume / "submissions" / "alice" / "jobs" / running.id).touch()
    evaluation = EvaluationRecord(
        id="ev1", status=JobStatus.succeeded, model="m", version=1, source="volume", stem="m/1/model",
        request=EvaluateRequest(), created_at=now(),
    )  # fmt: skip
    (volume / "evaluations" / "jobs").mkdir(parents=True)
    (volume / "evaluations" / "jobs" / "ev1.json").write_text(evaluation.model_dump_json())

    assert import_volume(any_db, volume) == (2, 1)
    jobs = JobStore(any_db)
    assert jobs.get(running.id) == running and jobs.cancel_requested(running.id)
    assert not jobs.claim(running.id, 1, "host:new") and jobs.claim(running.id, 2, "host:new")
    assert Submissions(any_db).jobs_of("alice") == {running.id}
    entry = jobs.webhook(finished.id)  # claimed by a deliverer of the old version: owed again
    assert entry is not None and (entry.state, entry.delivery, entry.attempts) == (OutboxState.pending, "d-1", 2)
    assert EvaluationStore(any_db, volume / "evaluations").get("ev1") == evaluation
    assert (volume / MARKER).exists()

    jobs.update(running.id, status=JobStatus.cancelled)
    assert import_volume(any_db, volume) == (0, 0)  # once: the marker
    (volume / MARKER).unlink()
    assert import_volume(any_db, volume) == (0, 0)  # and never over what the database holds
    assert jobs.get(running.id).status is JobStatus.cancelled


def test_a_volume_without_old_files_imports_nothing(sqlite_db: Database, tmp_path: Path) -> None:
    assert import_volume(sqlite_db, tmp_path / "fresh") == (0, 0)
    assert not (tmp_path / "fresh" / MARKER).exists()
