"""Blobs — checkpoints, published models, sample grids, evaluation images, datasets — behind one interface over
fsspec, and the local cache of the ones a process serves or trains from.

`GANSERVE_STORAGE_URL` chooses where they live: by default the volume itself (`file://<GANSERVE_CHECKPOINT_DIR>`,
the layout ganserve always had), or S3-compatible object storage (`s3://bucket/prefix`, with
`GANSERVE_S3_ENDPOINT_URL` for MinIO and the like, credentials from the standard AWS variables). A blob is named
by a key, a `/`-separated path under that URL. Writes are whole: a local file is written aside and renamed; an
S3 object appears whole when its upload completes. A blob read with its SHA-256 is checked against it, and a
mismatch is an error, never the data.

`BlobCache` keeps blobs fetched from remote storage in `GANSERVE_CACHE_DIR`, by SHA-256, at most
`GANSERVE_CACHE_MAX_BYTES` (the least recently used go first). With local storage nothing is copied: the blob's
own path is used.
"""

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fsspec.core import url_to_fs

from core.files import atomic_write_bytes

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class BlobError(RuntimeError):
    """A blob is missing, cannot be reached, or is not what its SHA-256 says: the message names it."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Storage:
    """Blobs under `url`: `file:///…` or `s3://bucket/prefix`."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)  # for the filesystem, e.g. the S3 endpoint

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme or "file"
        if scheme not in ("file", "s3"):
            raise ValueError(f"GANSERVE_STORAGE_URL {self.url!r}: use file:///path or s3://bucket/prefix")
        # Listings are never cached: another host may have written a moment ago.
        extra = {"use_listings_cache": False, "skip_instance_cache": True} if scheme == "s3" else {}
        self.fs, root = url_to_fs(self.url, **extra, **self.options)
        self.root = root.rstrip("/")
        self.local = scheme == "file"

    def path(self, key: str) -> str:
        """The filesystem's path of `key` (refusing keys that would leave the root)."""
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"not a blob key: {key!r}")
        return f"{self.root}/{key}"

    def local_path(self, key: str) -> Path | None:
        """Where the blob lies on this machine's disk, for local storage; None for remote storage."""
        return Path(self.path(key)) if self.local else None

    def describe(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    # --- writing ------------------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        if self.local:
            atomic_write_bytes(Path(self.path(key)), data)
        else:
            self._remote("write", key, self.fs.pipe_file, self.path(key), data)

    def put_file(self, key: str, source: Path) -> None:
        """Copy a local file in; a no-op when `source` is the blob itself (local storage on the same folder)."""
        local = self.local_path(key)
        if local is not None:
            if local.resolve() == Path(source).resolve():
                return
            atomic_write_bytes(local, Path(source).read_bytes())
        else:
            self._remote("write", key, self.fs.put_file, str(source), self.path(key))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))

    # --- reading ------------------------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        return bool(self._remote("read", key, self.fs.exists, self.path(key)))

    def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` (a folder), sorted; none for a prefix nothing is under. Raises BlobError when the
        store cannot be reached (never "nothing there": a resume would start over)."""
        try:
            found = self._remote("list", prefix, self.fs.find, self.path(prefix.rstrip("/")))
        except FileNotFoundError:
            return []
        return sorted(p[len(self.root) + 1 :] for p in found)

    def check(self) -> None:
        """Reach the store with one listing of its top level. Raises BlobError when it cannot be reached."""
        with contextlib.suppress(FileNotFoundError):  # reachable, and nothing stored yet
            self._remote("list", "", self.fs.ls, self.root, detail=False)

    def get_bytes(self, key: str, sha256: str | None = None) -> bytes:
        """The blob's bytes, checked against `sha256` when given. Raises BlobError."""
        try:
            data = self._remote("read", key, self.fs.cat_file, self.path(key))
        except FileNotFoundError:
            raise BlobError(f"{self.describe(key)} does not exist") from None
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise BlobError(f"{self.describe(key)} is not the blob of SHA-256 {sha256[:12]}…: refused")
        return data

    def get_file(self, key: str, target: Path, sha256: str | None = None) -> None:
        """Copy the blob to the local file `target` (written aside and renamed), checked against `sha256`."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            try:
                self._remote("read", key, self.fs.get_file, self.path(key), tmp)
            except FileNotFoundError:
                raise BlobError(f"{self.describe(key)} does not exist") from None
            if sha256 is not None and sha256_of(Path(tmp)) != sha256:
                raise BlobError(f"{self.describe(key)} is not the blob of SHA-256 {sha256[:12]}…: refused")
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _remote(self, what: str, key: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as e:  # botocore's and the network's: endpoint, credentials, a bucket that does not exist …
            raise BlobError(f"cannot {what} {self.describe(key)}: {type(e).__name__}: {e}") from None


def open_storage(url: str, s3_endpoint_url: str | None = None) -> Storage:
    options: dict[str, Any] = {}
    if urlsplit(url).scheme == "s3":
        # A request must not hang on a dead store: connect briefly, retry a little, then fail naming the blob.
        options["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3}}
        if s3_endpoint_url:
            options["endpoint_url"] = s3_endpoint_url
    return Storage(url, options)


class BlobCache:
    """Remote blobs kept on local disk by SHA-256, at most `max_bytes` in all; thread-safe, and safe for
    several processes sharing the folder (a blob is renamed into place whole)."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def fetch(self, storage: Storage, key: str, sha256: str, suffix: str = "") -> Path:
        """A local file holding blob `key` of that SHA-256: the blob itself for local storage (checked), else the
        cached copy (named by the SHA-256 and `suffix`), fetched when absent. Raises BlobError."""
        local = storage.local_path(key)
        if local is not None:
            if not local.is_file():
                raise BlobError(f"{storage.describe(key)} does not exist")
            return local
        path = self.folder / sha256[:2] / (sha256 + suffix)
        with self._lock:
            if path.is_file():
                os.utime(path)  # recently used
                return path
            storage.get_file(key, path, sha256)
            self._evict(keep=path)
        return path

    def _evict(self, keep: Path) -> None:
        files = [p for p in self.folder.glob("??/*") if p.is_file() and not p.name.startswith(".")]
        total = sum(p.stat().st_size for p in files)
        for p in sorted(files, key=lambda p: p.stat().st_mtime):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
            log.info("cache: dropped %s (least recently used) to stay under %d bytes", p.name, self.max_bytes)
