"""A job's run files between this worker's run folder and object storage (core/storage.py).

The training loop writes a run into `<GANSERVE_CHECKPOINT_DIR>/jobs/<id>/`, this worker's own scratch. Storage
holds the run under the same key, `jobs/<id>/<path in the run folder>`: `RunFiles.files_fn` copies each file
the loop writes as soon as it is complete (a checkpoint's JSON, its commit record, after its weights) and
deletes there what the loop pruned (checkpoint retention: training/run_state.py), and `RunFiles.stored_bytes`
counts what the run holds there for its owner's quota; `RunFiles.bring_back`, before a job (re)starts, fetches
the run's newest intact checkpoint from storage (checked against the SHA-256 its JSON records) and the sample
grid it names, so a worker on any host resumes where the last one stopped. With storage on the volume itself
(the default), the run folder *is* the blobs: neither copies anything.
"""

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.files import atomic_write_bytes
from core.quota import stored_bytes
from core.settings import Settings
from core.storage import BlobError, Storage, open_storage, sha256_of

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"  # training/run_state.py's CHECKPOINTS_DIR (torch-free here: the worker starts fast)
CHECKPOINT_JSON = re.compile(r"epoch-(\d+)\.json$")


def storage_of(settings: Settings) -> Storage:
    return open_storage(settings.effective_storage_url, settings.s3_endpoint_url)


def key_of(path: Path, volume: Path) -> str:
    """A local file's storage key: its path relative to GANSERVE_CHECKPOINT_DIR (with the default storage, the
    very same file)."""
    return Path(path).resolve().relative_to(Path(volume).resolve()).as_posix()


def in_place(storage: Storage, path: Path, volume: Path) -> bool:
    """Whether storage keeps `path`'s blob in `path` itself (local storage on this volume): nothing to copy."""
    local = storage.local_path(key_of(path, volume))
    return local is not None and local.resolve() == Path(path).resolve()


def store_file(settings: Settings, path: Path) -> str:
    """Put a file this worker wrote under GANSERVE_CHECKPOINT_DIR into storage; returns its key. When storage is
    elsewhere, the local copy is removed once it is stored."""
    storage, volume = storage_of(settings), settings.checkpoint_dir
    key = key_of(path, volume)
    if not in_place(storage, path, volume):
        storage.put_file(key, path)
        path.unlink()
    return key


@dataclass(frozen=True)
class RunFiles:
    """One job's run folder on this worker and its copy in storage."""

    storage: Storage
    volume: Path  # GANSERVE_CHECKPOINT_DIR
    run_dir: Path  # <volume>/jobs/<id>

    @classmethod
    def of(cls, settings: Settings, job_id: str) -> "RunFiles":
        return cls(storage_of(settings), settings.checkpoint_dir, settings.jobs_dir / job_id)

    @property
    def copied(self) -> bool:
        """Whether storage is elsewhere than the run folder (else the folder is the blobs)."""
        return not in_place(self.storage, self.run_dir, self.volume)

    def key(self, path: Path) -> str:
        return key_of(path, self.volume)

    def files_fn(self, written: list[Path], removed: list[Path]) -> None:
        """The loop's `files_fn`: upload what it wrote, in that order, then delete what it pruned (so storage
        always holds a whole checkpoint); with storage in the run folder itself, there is nothing to copy. Raises
        BlobError naming the object: the job fails, saying which."""
        if not self.copied:
            return
        for path in written:
            self.storage.put_file(self.key(path), path)
        for path in removed:
            self.storage.delete(self.key(path))

    def stored_bytes(self) -> int:
        """Bytes the run's files hold in storage now (its owner's usage, core/quota.py). Raises BlobError."""
        return stored_bytes(self.storage, self.key(self.run_dir))

    def bring_back(self) -> None:
        """Make the run folder hold the run's newest intact checkpoint in storage and the sample grid it names,
        and no checkpoint storage lacks (storage decides where a run resumes). A checkpoint whose weights do not
        match its SHA-256, or whose JSON is unreadable, is passed over with a log line for the next older one.
        Raises BlobError when storage cannot be reached."""
        if not self.copied:
            return
        prefix = self.key(self.run_dir / CHECKPOINTS)
        stems = sorted(
            (key.removesuffix(".json") for key in self.storage.keys(prefix) if CHECKPOINT_JSON.search(key)),
            key=_epoch,
            reverse=True,
        )
        chosen = next((stem for stem in stems if self._fetch(stem)), None)
        self._drop_local_checkpoints(but=chosen)
        if chosen is not None:
            log.info("run %s: resuming from %s", self.run_dir.name, self.storage.describe(chosen + ".json"))

    def _fetch(self, stem_key: str) -> bool:
        """Fetch checkpoint `stem_key` (weights, then JSON) and the sample grid it names; False when it is no use."""
        local = self.run_dir / CHECKPOINTS / Path(stem_key).name
        try:
            raw = self.storage.get_bytes(stem_key + ".json")
            meta = json.loads(raw)
            sha256 = meta["sha256"]
            if not isinstance(sha256, str):
                raise TypeError(f"its sha256 is {sha256!r}")
            weights = local.with_suffix(".safetensors")
            if not (weights.is_file() and sha256_of(weights) == sha256):
                self.storage.get_file(stem_key + ".safetensors", weights, sha256)
            atomic_write_bytes(local.with_suffix(".json"), raw)
        except (BlobError, ValueError, KeyError, TypeError) as e:
            log.warning("checkpoint %s cannot be resumed from, passed over: %s", self.storage.describe(stem_key), e)
            return False
        # The grid of the newest kept epoch goes with the model a run resumed after its last epoch publishes. The
        # kept checkpoint it names needs no fetching: it is this one, unless this one stands in for later epochs,
        # and then the run trains on and keeps its last epoch's own before it can publish.
        if isinstance(samples := meta.get("last_samples"), str):
            grid = self.run_dir / samples
            try:
                if not grid.is_file():
                    self.storage.get_file(self.key(grid), grid)
            except (BlobError, ValueError) as e:
                log.warning("run %s: its latest sample grid is not fetched: %s", self.run_dir.name, e)
        return True

    def _drop_local_checkpoints(self, but: str | None) -> None:
        """Checkpoints this folder holds from an earlier attempt here that are not the one resumed from."""
        keep = None if but is None else Path(but).name
        for path in (self.run_dir / CHECKPOINTS).glob("epoch-*"):
            if path.name.split(".")[0] != keep:
                path.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove the run folder once the job is over here, when storage holds the run elsewhere."""
        if self.copied:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def _epoch(stem_key: str) -> int:
    return int(stem_key.rsplit("epoch-", 1)[1])
