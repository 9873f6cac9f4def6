"""Publishing a finished job's generator under its owner's name (core/model_names.py).

A job publishes as the key that submitted it (the job's `owner`). POST /train claimed the name for that key at
submission, so this normally finds the claim its own; a name nobody holds yet (a job queued before claims existed,
or one not submitted over HTTP: owner None, the operator's) is claimed here, before any file is written. A name
another key holds by now is published under anyway when the job's key is an `admin` key (as at submission: an
admin may publish under any key's name, which stays that key's) or when the job has no owner (the operator's);
otherwise the job fails with `PublishRefused`, saying whose the name is, and its run's checkpoints are kept.
"""

from pathlib import Path

from core.db import Database
from core.keys import ApiKeyEntry, Scope, stored_keys
from core.model_names import ModelNames, NameOwned, NameReserved, reserved_names
from core.model_versions import ModelVersions
from core.settings import Settings
from core.storage import Storage


class PublishRefused(RuntimeError):
    """The job trained to the end, but its key may not publish under the name; the message says why and what to
    do, and that the checkpoints are kept."""


def is_admin_key(name: str, settings: Settings, db: Database) -> bool:
    """Whether the key named `name` has scope `admin` now (the database's entry wins over GANSERVE_API_KEYS', as in
    the API's key ring); a key revoked since the job was submitted has none."""
    stored: dict[str, ApiKeyEntry] = {e.name: e for e in settings.api_keys}
    stored |= {e.name: e for e in stored_keys(db)}
    entry = stored.get(name)
    return entry is not None and Scope.admin in entry.scopes


def publish_job_model(
    settings: Settings,
    storage: Storage,
    db: Database,
    job_id: str,
    name: str,
    stem: Path,
    samples_png: Path | None,
    owner: str | None,
) -> int:
    """Claim `name` for the job's `owner` (when free) and publish checkpoint `stem` as its next version; returns the
    version. Raises PublishRefused, before any file is written, when the name is another key's or a bundled
    model's."""
    from training.checkpoint import publish  # torch: imported where the worker trains anyway

    reserved = reserved_names(settings.bundled_models_dir)
    names = ModelNames(db, reserved)
    admin = owner is None or is_admin_key(owner, settings, db)
    kept = f"The job's checkpoints are kept (GET /train/{job_id} lists them); train again under a model_name of yours."
    try:
        names.claim(name, owner, visibility=settings.model_visibility, admin=admin)
    except NameOwned as e:
        raise PublishRefused(f"trained to the end but not published: {e} {kept}") from None
    except NameReserved as e:
        raise PublishRefused(f"trained to the end but not published: {e} {kept}") from None
    versions = ModelVersions(db, reserved=reserved, visibility=settings.model_visibility)
    return publish(storage, versions, name, stem, samples_png, owner)
