"""The uploaded dataset a job trains on, on this worker's disk: fetched from object storage by the SHA-256 its job
pinned at submission, through the blob cache (GANSERVE_CACHE_DIR), and checked against it; with local storage,
the stored file itself, checked in place."""

from pathlib import Path

from core.jobs import JobRecord
from core.settings import Settings
from core.storage import BlobCache, BlobError, sha256_of
from worker.run_files import storage_of


def dataset_file(settings: Settings, record: JobRecord) -> Path | None:
    """The canonical file of the job's uploaded dataset; None for a built-in dataset. Raises BlobError, naming the
    object, when storage cannot give it or it is not the pinned content."""
    pin = record.uploaded_dataset
    if pin is None:
        return None
    storage = storage_of(settings)
    path = BlobCache(settings.effective_cache_dir, settings.cache_max_bytes).fetch(
        storage, pin.location, pin.sha256, suffix=".safetensors"
    )
    # A remote blob was checked as it was fetched; the local one is read in place, so it is checked here.
    if storage.local_path(pin.location) is not None and sha256_of(path) != pin.sha256:
        raise BlobError(f"{storage.describe(pin.location)} is not the blob of SHA-256 {pin.sha256[:12]}…: refused")
    return path
