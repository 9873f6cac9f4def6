"""Where the registry (service/serving/registry.py) finds model versions: the published ones, rows of the database
whose files are in object storage (`StoreCatalogue`), and folders laid out as `<root>/<name>/<version>/model.*`
— the bundled models shipped with the code (`FolderCatalogue`). Each says which versions a name has, what a
version's metadata says (without loading its weights), and where its files are on this machine.
"""

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from core.model_versions import ModelVersions, local_stem
from core.storage import BlobCache, BlobError, Storage
from core.train_config import NAME_PATTERN
from training.checkpoint import CheckpointError, list_versions, load_metadata, model_stem

log = logging.getLogger(__name__)

Source = Literal["volume", "bundled", "run"]  # volume: published by training; run: a run's checkpoint (CLI)


@dataclass(frozen=True)
class Entry:
    """What a catalogue knows of a version without loading it."""

    meta: dict[str, Any] | None  # its model.json; None when unreadable (then `error` says why)
    created_at: datetime | None
    has_samples: bool
    error: str | None = None


class Catalogue(Protocol):
    source: Source

    def names(self) -> list[str]: ...

    def versions(self, name: str) -> list[int]: ...

    def weights(self, name: str) -> dict[int, str]:
        """Each version of `name` and the SHA-256 of its weights ("" when its metadata cannot say)."""
        ...

    def entry(self, name: str, version: int) -> Entry: ...

    def stem(self, name: str, version: int) -> Path:
        """The version's `model` stem on this machine. Raises CheckpointError."""
        ...

    def signature(self, name: str, version: int) -> tuple[Any, ...]:
        """Changes when the version's files do: a version that failed to load is tried again then."""
        ...


@dataclass
class StoreCatalogue:
    """Published versions: database rows, files in object storage (fetched into the cache when remote)."""

    rows: ModelVersions
    storage: Storage
    cache: BlobCache
    source: Source = "volume"

    def names(self) -> list[str]:
        return self.rows.names()

    def versions(self, name: str) -> list[int]:
        return self.rows.versions(name)

    def weights(self, name: str) -> dict[int, str]:
        return {row.version: row.weights_sha256 for row in self.rows.all(name)}

    def entry(self, name: str, version: int) -> Entry:
        row = self.rows.get(name, version)
        if row is None:
            return Entry(None, None, False, f"model {name} has no version {version}")
        return Entry(row.metadata, row.created_at, row.has_samples)

    def stem(self, name: str, version: int) -> Path:
        row = self.rows.get(name, version)
        if row is None:
            raise CheckpointError(f"model {name} has no version {version}")
        try:
            return local_stem(row, self.storage, self.cache)
        except BlobError as e:
            # Where the bucket is goes to the log; what a client is told names the blob by its key only.
            log.error("model %s version %d: %s", name, version, e)
            raise CheckpointError(str(e).replace(self.storage.describe(""), "storage: ")) from None

    def signature(self, name: str, version: int) -> tuple[Any, ...]:
        row = self.rows.get(name, version)
        return () if row is None else (row.weights_sha256, row.location)


@dataclass
class FolderCatalogue:
    """Versions in a folder, `<root>/<name>/<version>/model.{safetensors,json}` (+ samples.png)."""

    root: Path
    source: Source = "bundled"

    def names(self) -> list[str]:
        try:
            children = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [n for n in children if re.fullmatch(NAME_PATTERN, n) and list_versions(self.root, n)]

    def versions(self, name: str) -> list[int]:
        return list_versions(self.root, name)

    def weights(self, name: str) -> dict[int, str]:
        found = {}
        for version in list_versions(self.root, name):
            try:
                found[version] = str(load_metadata(model_stem(self.root, name, version)).get("sha256", ""))
            except CheckpointError:
                found[version] = ""  # listed; loading it says why it cannot be served
        return found

    def entry(self, name: str, version: int) -> Entry:
        stem = model_stem(self.root, name, version)
        has_samples = (stem.parent / "samples.png").exists()
        try:
            created = datetime.fromtimestamp(stem.with_suffix(".json").stat().st_mtime, UTC)
            return Entry(load_metadata(stem), created, has_samples)
        except (OSError, CheckpointError) as e:
            return Entry(None, None, has_samples, str(e))

    def stem(self, name: str, version: int) -> Path:
        return model_stem(self.root, name, version)

    def signature(self, name: str, version: int) -> tuple[Any, ...]:
        stem = model_stem(self.root, name, version)
        sig: list[int] = []
        for path in (stem.with_suffix(".json"), stem.with_suffix(".safetensors")):
            try:
                st = path.stat()
                sig += [st.st_mtime_ns, st.st_size, st.st_ino]
            except OSError:
                sig += [-1, -1, -1]
        return tuple(sig)
