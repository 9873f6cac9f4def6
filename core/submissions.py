"""What each API key submitted, on the volume: which jobs (for `GANSERVE_MAX_QUEUED_PER_KEY` and to know who
asked for what) and its `Idempotency-Key`s (so a retried POST /train never makes a second job).

    <checkpoint_dir>/submissions/<key name>/jobs/<job id>           every job the key submitted (empty file)
    <checkpoint_dir>/submissions/<key name>/active/<job id>         those not yet seen finished
    <checkpoint_dir>/submissions/<key name>/idempotency/<sha256>.json  {job_id, request_sha256, created_at}
    <checkpoint_dir>/submissions/<key name>/.lock                   flock: one submission of a key at a time

Files on the volume, like the job records they point to, so they outlive a Redis or API restart and work
with the embedded broker. Keyed by the key's name, never by the key.
"""

import contextlib
import fcntl
import hashlib
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, ValidationError

from core.files import atomic_write_json
from core.jobs import JobStore
from core.records import FINISHED
from core.train_config import NAME_PATTERN

log = logging.getLogger(__name__)

IDEMPOTENCY_TTL = timedelta(hours=24)
PRUNE_EVERY = timedelta(hours=1)


class IdempotencyRecord(BaseModel):
    job_id: str
    request_sha256: str
    created_at: datetime

    def expired(self, now: datetime) -> bool:
        return now - self.created_at > IDEMPOTENCY_TTL


def _now() -> datetime:
    return datetime.now(UTC)


class Submissions:
    def __init__(self, root: Path, clock=_now):
        self.root = root
        self.clock = clock
        self._last_prune: dict[str, datetime] = {}

    def _dir(self, key_name: str) -> Path:
        if not re.fullmatch(NAME_PATTERN, key_name):  # validated when the key was loaded; a directory name
            raise ValueError(f"not a key name: {key_name!r}")
        return self.root / key_name

    @contextlib.contextmanager
    def lock(self, key_name: str) -> Iterator[None]:
        """One submission of a key at a time, across threads and API processes sharing the volume."""
        path = self._dir(key_name) / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # --- jobs ------------------------------------------------------------------------------------------

    def add_job(self, key_name: str, job_id: str) -> None:
        for sub in ("jobs", "active"):
            folder = self._dir(key_name) / sub
            folder.mkdir(parents=True, exist_ok=True)
            (folder / job_id).touch()

    def jobs_of(self, key_name: str) -> set[str]:
        folder = self._dir(key_name) / "jobs"
        return {p.name for p in folder.iterdir()} if folder.is_dir() else set()

    def active_jobs(self, key_name: str, store: JobStore) -> list[str]:
        """The key's jobs still queued or running; finished (or vanished) ones leave the active list."""
        folder = self._dir(key_name) / "active"
        active = []
        for path in sorted(folder.iterdir()) if folder.is_dir() else ():
            try:
                finished = store.get(path.name).status in FINISHED
            except KeyError:
                finished = True
            if finished:
                path.unlink(missing_ok=True)
            else:
                active.append(path.name)
        return active

    # --- Idempotency-Key -------------------------------------------------------------------------------

    def _idempotency_path(self, key_name: str, idempotency_key: str) -> Path:
        digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()
        return self._dir(key_name) / "idempotency" / f"{digest}.json"

    def recall(self, key_name: str, idempotency_key: str) -> IdempotencyRecord | None:
        """The job this key submitted under `idempotency_key` in the last 24 h, if any."""
        path = self._idempotency_path(key_name, idempotency_key)
        try:
            record = IdempotencyRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as e:
            log.warning("unreadable idempotency record %s (%s); treating it as absent", path, type(e).__name__)
            return None
        if record.expired(self.clock()):
            path.unlink(missing_ok=True)
            return None
        return record

    def remember(self, key_name: str, idempotency_key: str, job_id: str, request_sha256: str) -> None:
        record = IdempotencyRecord(job_id=job_id, request_sha256=request_sha256, created_at=self.clock())
        atomic_write_json(self._idempotency_path(key_name, idempotency_key), record.model_dump(mode="json"))
        self._prune(key_name)

    def forget(self, key_name: str, idempotency_key: str) -> None:
        self._idempotency_path(key_name, idempotency_key).unlink(missing_ok=True)

    def _prune(self, key_name: str) -> None:
        """Delete the key's expired records, at most once an hour per process."""
        now = self.clock()
        last = self._last_prune.get(key_name)
        if last is not None and now - last < PRUNE_EVERY:
            return
        self._last_prune[key_name] = now
        for path in (self._dir(key_name) / "idempotency").glob("*.json"):
            try:
                if IdempotencyRecord.model_validate_json(path.read_bytes()).expired(now):
                    path.unlink(missing_ok=True)
            except (OSError, ValidationError):
                continue
