"""The worker's Celery app: the shared configuration (core/tasks.py) with this package's tasks registered.

`celery -A worker.app:celery_app worker …` (what `ganserve worker` runs)."""

import logging

from celery import signals

from core.db import DatabaseUnavailable, connect
from core.legacy import import_volume
from core.settings import get_settings
from core.storage import open_storage
from core.tasks import create_celery

log = logging.getLogger(__name__)

celery_app = create_celery(get_settings(), include=("worker.tasks",))


@signals.worker_init.connect
def open_database(**_: object) -> None:
    """At start, not at the first job: the database migrated, or the worker stops, saying which one it could not
    open (Celery logs and ignores a handler's exception, so this one exits)."""
    settings = get_settings()
    try:
        db = connect(settings.effective_database_url)
    except DatabaseUnavailable as e:
        log.critical("%s", e)
        raise SystemExit(f"ganserve worker: {e}") from None
    # The records and models of a version before the database, imported before their messages come.
    import_volume(db, settings.checkpoint_dir, open_storage(settings.effective_storage_url, settings.s3_endpoint_url))
