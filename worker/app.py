"""The worker's Celery app: the shared configuration (core/tasks.py) with this package's tasks registered.

`celery -A worker.app:celery_app worker …` (what `ganserve worker` runs)."""

import logging
import socket

from celery import signals

from core.db import DatabaseUnavailable, connect
from core.legacy import import_volume
from core.settings import get_settings
from core.storage import open_storage
from core.tasks import create_celery
from core.workers import WorkerStore
from worker.registry import DeviceError, Registration, parse_devices, resolve_devices

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


_registration: Registration | None = None


@signals.worker_ready.connect
def advertise(sender: object = None, **_: object) -> None:
    """Once consuming: this worker's row in the `workers` table (worker/registry.py), refreshed until it stops."""
    global _registration
    settings = get_settings()
    try:
        devices = parse_devices(settings.devices) if settings.devices is not None else resolve_devices(settings)
    except DeviceError as e:
        log.critical("%s", e)
        raise SystemExit(f"ganserve worker: {e}") from None
    hostname = getattr(sender, "hostname", None) or f"celery@{socket.gethostname()}"  # the consumer's node name
    queues = list(celery_app.amqp.queues.consume_from or celery_app.amqp.queues)
    store = WorkerStore(connect(settings.effective_database_url), settings.worker_heartbeat_s)
    _registration = Registration(store, str(hostname), devices, queues)
    _registration.start()


@signals.worker_shutdown.connect
def withdraw(**_: object) -> None:
    if _registration is not None:
        _registration.stop()
