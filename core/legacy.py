"""What versions before the database kept as files on the volume, imported into it once: training jobs (their
record, owner, cancel request, attempts and webhook outbox state), evaluations, and published model versions
(a row each, their files where they lie when storage is the volume, else copied into storage). So an upgraded
deployment still serves the models, and lists, follows, resumes and cancels the jobs, it had. The files are left
as they were; a marker file says the import is done. Idempotency-Keys are not imported: they last a day.

    <volume>/jobs/<id>/job.json, cancel, attempt-<n>, webhook.{pending,sending,delivered,failed}
    <volume>/submissions/<key>/jobs/<id>          (who submitted it)
    <volume>/evaluations/jobs/<id>.json
    <volume>/models/<name>/<version>/model.{safetensors,json}, samples.png
"""

import json
import logging
import re
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from core import db as tables
from core.db import Database
from core.evaluations import EvaluationRecord
from core.jobs import JobRecord, OutboxState
from core.records import now
from core.storage import Storage
from core.train_config import NAME_PATTERN

log = logging.getLogger(__name__)

MARKER = ".imported-to-database"
OUTBOX_FILES = {f"webhook.{state.value}": state for state in OutboxState}


def import_volume(db: Database, volume: Path, storage: Storage | None = None) -> tuple[int, int, int]:
    """Import the volume's file records and model versions into `db`, once (a marker file); returns the jobs,
    evaluations and model versions imported. A record or version already in the database is kept as it is there.
    A version's files stay where they are when `storage` (by default the volume itself) is the volume; else they
    are copied into it first."""
    marker = volume / MARKER
    if marker.exists() or not any((volume / d).is_dir() for d in ("jobs", "evaluations", "models")):
        return 0, 0, 0
    owners = _owners(volume / "submissions")
    try:
        with db.begin() as conn:
            jobs = sum(_job(conn, path.parent, owners) for path in sorted((volume / "jobs").glob("*/job.json")))
            found = sorted((volume / "evaluations" / "jobs").glob("*.json"))
            evaluations = sum(_evaluation(conn, path) for path in found)
            store = storage or Storage(volume.resolve().as_uri())
            models = sum(_model(conn, store, stem) for stem in sorted((volume / "models").glob("*/*/model.json")))
    except IntegrityError:  # another process (the API, a worker) imported them at the same moment
        return 0, 0, 0
    what = f"{jobs} job(s), {evaluations} evaluation(s) and {models} model version(s)"
    marker.write_text(f"imported {what} at {now().isoformat()}\n")
    if jobs or evaluations or models:
        log.warning("imported %s from the files of %s", what, volume)
    return jobs, evaluations, models


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


def _model(conn: Connection, storage: Storage, json_path: Path) -> bool:
    version_dir = json_path.parent
    name, number = version_dir.parent.name, version_dir.name
    if not number.isdigit() or not re.fullmatch(NAME_PATTERN, name):
        return False
    table = tables.model_versions
    if conn.execute(select(table.c.name).where(table.c.name == name, table.c.version == int(number))).first():
        return False
    try:
        meta = json.loads(json_path.read_bytes())
        sha = str(meta["sha256"])
    except (OSError, ValueError, KeyError) as e:
        log.warning("%s: not imported, unreadable: %s", json_path, e)
        return False
    location = f"models/{name}/{number}"
    if storage.local_path(location) != version_dir.resolve():  # remote storage: the files go there first
        location = f"models/{name}/{sha}"
        for part in ("model.safetensors", "samples.png", "model.json"):  # the JSON, the commit record, last
            if (version_dir / part).exists():
                storage.put_file(f"{location}/{part}", version_dir / part)
    row = {"owner": None, "weights_sha256": sha, "metadata": meta, "location": location}
    row |= {"has_samples": (version_dir / "samples.png").exists(), "created_at": now()}
    conn.execute(insert(table).values(name=name, version=int(number), **row))
    return True
