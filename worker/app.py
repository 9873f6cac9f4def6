"""The Celery application: broker, serialisation and the settings that suit long GPU jobs.

Imported by the API too (to send tasks by name), so it must stay light: no torch here.
"""

from celery import Celery

from service.settings import Settings, get_settings

TRAIN_TASK = "ganserve.train"
EVALUATE_TASK = "ganserve.evaluate"


def broker_options(settings: Settings) -> dict[str, object]:
    if settings.effective_broker_url.startswith("filesystem://"):
        # kombu's filesystem transport: a real broker in a folder, for `make run` on a machine without
        # Redis. Producer and consumer share one folder because they share one machine.
        queue = settings.broker_dir / "queue"
        for d in (queue, settings.broker_dir / "processed", settings.broker_dir / "control"):
            d.mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "processed_folder": str(settings.broker_dir / "processed"),
            "control_folder": str(settings.broker_dir / "control"),
            "store_processed": False,
        }
    # A Redis message not acknowledged within this time is handed to another worker; with acks_late a
    # training job is acknowledged only when it ends, so this must exceed the longest job.
    return {"visibility_timeout": 24 * 3600}


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("ganserve", broker=settings.effective_broker_url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # the job record on the volume is the result
        task_acks_late=True,  # a job whose worker dies is not lost: it stays in the queue
        task_reject_on_worker_lost=True,
        # A running job outlives a broker restart: the record on the volume is the job's truth, so losing the
        # broker's connection must not cancel it (Celery 6 will default to cancelling). Its message, which can
        # then no longer be acknowledged, comes back and meets a finished job, which does nothing.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_prefetch_multiplier=1,  # one long job at a time; do not hoard the queue
        broker_connection_retry_on_startup=True,
        broker_transport_options=broker_options(settings),
        # One queue: an evaluation uses the same GPU as training, so it waits its turn on the same worker.
        task_routes={TRAIN_TASK: {"queue": "training"}, EVALUATE_TASK: {"queue": "training"}},
        task_default_queue="training",
        worker_hijack_root_logger=False,
    )
    return app


celery_app = create_celery()
