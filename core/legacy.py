"""What versions before the database kept as files on the volume, imported into it once: training jobs (their
record, owner, cancel request, attempts and webhook outbox state) and evaluations. So an upgraded deployment
still lists, follows, resumes and cancels the jobs it had. The files are left as they were; a marker file says
the import is done. Idempotency-Keys are not imported: they last a day.

    <volume>/jobs/<id>/job.json, cancel, attempt-<n>, webhook.{pending,sending,delivered,failed}
    <volume>/submissions/<key>/jobs/<id>          (who submitted it)
    <volume>/evaluations/jobs/<id>.json
"""

import json
import logging
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from core import db as tables
from core.db import Database
from core.evaluations import EvaluationRecord
from core.jobs import JobRecord, OutboxState
from core.records import now

log = logging.getLogger(__name__)

MARKER = ".imported-to-database"
OUTBOX_FILES = {f"webhook.{state.value}": state for state in OutboxState}


def import_volume(db: Database, volume: Path) -> tuple[int, int]:
    """Import the volume's file records into `db`, once (a marker file); returns (jobs, evaluations) imported.
    A record already in the database is kept as it is there."""
    marker = volume / MARKER
    if marker.exists() or not ((volume / "jobs").is_dir() or (volume / "evaluations").is_dir()):
        return 0, 0
    owners = _owners(volume / "submissions")
    try:
        with db.begin() as conn:
            jobs = sum(_job(conn, path.parent, owners) for path in sorted((volume / "jobs").glob("*/job.json")))
            found = sorted((volume / "evaluations" / "jobs").glob("*.json"))
            evaluations = sum(_evaluation(conn, path) for path in found)
    except IntegrityError:  # another process (the API, a worker) imported them at the same moment
        return 0, 0
    marker.write_text(f"imported {jobs} job(s) and {evaluations} evaluation(s) at {now().isoformat()}\n")
    if jobs or evaluations:
        log.warning("imported %d job(s) and %d evaluation(s) from the files of %s", jobs, evaluations, volume)
    return jobs, evaluations


def _owners(submissions: Path) -> dict[str, str]:
    return {job.name: job.parent.parent.name for job in submissions.glob("*/jobs/*")}


def _absent(conn: Connection, table: tables.Table, record_id: str) -> bool:
    return conn.execute(select(table.c.id).where(table.c.id == record_id)).first() is None


def _job(conn: Connection, folder: Path, owners: dict[str, str]) -> bool:
    try:
        record = JobRecord.model_validate_json((folder / "job.json").read_bytes())
    except (OSError, ValidationError) as e:
        log.warning("%s: not imported, unreadable: %s", folder / "job.json", e)
        return False
    if not _absent(conn, tables.jobs, record.id):
        return False
    row = {"status": record.status.value, "owner": owners.get(record.id), "created_at": record.created_at}
    row |= {"cancel_requested": (folder / "cancel").exists(), "record": record.model_dump(mode="json")}
    conn.execute(insert(tables.jobs).values(id=record.id, **row))
    for attempt in folder.glob("attempt-*"):
        number = attempt.name.removeprefix("attempt-")
        if number.isdigit():
            claim = {"job_id": record.id, "attempt": int(number), "worker": "imported", "claimed_at": now()}
            conn.execute(insert(tables.job_attempts).values(**claim))
    for name, state in OUTBOX_FILES.items():
        entry = folder / name
        if entry.exists():
            _outbox(conn, record.id, entry, state)
            break
    return True


def _outbox(conn: Connection, job_id: str, entry: Path, state: OutboxState) -> None:
    try:
        saved = json.loads(entry.read_bytes())
        delivery, attempts, due = str(saved["delivery"]), int(saved["attempts"]), float(saved["next_attempt_at"])
    except (OSError, ValueError, KeyError, TypeError):
        delivery, attempts, due = job_id, 0, 0.0  # a damaged entry starts afresh, as the file deliverer did
    if state is OutboxState.sending:  # its deliverer is gone with the old version: owed again
        state = OutboxState.pending
    row = {"job_id": job_id, "delivery": delivery, "state": state.value, "attempts": attempts}
    conn.execute(insert(tables.webhook_outbox).values(next_attempt_at=due, **row))


def _evaluation(conn: Connection, path: Path) -> bool:
    try:
        record = EvaluationRecord.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as e:
        log.warning("%s: not imported, unreadable: %s", path, e)
        return False
    if not _absent(conn, tables.evaluations, record.id):
        return False
    row = {"status": record.status.value, "created_at": record.created_at, "model": record.model}
    row |= {"version": record.version, "record": record.model_dump(mode="json")}
    conn.execute(insert(tables.evaluations).values(id=record.id, **row))
    return True
