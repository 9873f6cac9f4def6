"""The broker's side of every process: the Celery app's configuration, the task names, and how the API sends a
task. The API sends by name (`send_task`), so it never imports the worker's code; the worker registers the tasks
under these names (worker/tasks.py). Light on purpose: no torch."""

import os
from dataclasses import dataclass, field

from celery import Celery

from core.settings import Settings

TRAIN_TASK = "ganserve.train"
EVALUATE_TASK = "ganserve.evaluate"

# Queues by resource class (docs/architecture.md, Queues and workers). A training job goes to `cpu` or to
# `gpu-<N>`, N the GPUs it asked for; a worker with k devices consumes gpu-1 … gpu-k, so any worker with at least
# N devices can take it. Evaluations have a queue of their own that every worker consumes first, so an evaluation
# never waits behind queued training jobs, only for the job running on a worker to end.
CPU_QUEUE = "cpu"
EVALUATE_QUEUE = "evaluate"
# Training jobs any worker may run, drained by every worker last: those submitted while no worker had advertised
# itself (the API started first), and the jobs of versions before the resource classes (their one queue).
ANY_QUEUE = "training"


def gpu_queue(gpus: int) -> str:
    """The queue of training jobs that ask for `gpus` GPUs (≥ 1)."""
    if gpus < 1:
        raise ValueError(f"a GPU queue is for 1 or more GPUs, not {gpus}")
    return f"gpu-{gpus}"


def train_queue(gpus: int | None) -> str:
    """The queue of a training job that asks for `gpus` GPUs: `cpu` for 0, `training` for any worker (None)."""
    if gpus is None:
        return ANY_QUEUE
    return CPU_QUEUE if gpus == 0 else gpu_queue(gpus)


def worker_queues(devices: int) -> list[str]:
    """What a worker with `devices` GPUs (0: a CPU worker) consumes, in the order it looks at them: evaluations
    first, then the largest jobs it can run (a small job has more workers to go to), then the old queue."""
    training = [gpu_queue(n) for n in range(devices, 0, -1)] if devices else [CPU_QUEUE]
    return [EVALUATE_QUEUE, *training, ANY_QUEUE]


# A request must not hang on a dead broker: connect once, briefly, then answer 503.
BROKER_TIMEOUT_S = 2.0


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
    # `priority`: a worker asks for its queues in the order it lists them (worker_queues), rather than in turns:
    # an evaluation is taken before any training job waiting beside it.
    return {"visibility_timeout": 24 * 3600, "queue_order_strategy": "priority"}


def create_celery(settings: Settings, include: tuple[str, ...] = ()) -> Celery:
    """The Celery app of the API (which only sends) and of the worker (`include`: its task modules)."""
    app = Celery("ganserve", broker=settings.effective_broker_url, include=list(include))
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
        # A training job's queue depends on what it asks for (`send`'s `queue`); this is where one goes without.
        task_routes={TRAIN_TASK: {"queue": CPU_QUEUE}, EVALUATE_TASK: {"queue": EVALUATE_QUEUE}},
        task_default_queue=CPU_QUEUE,
        worker_hijack_root_logger=False,
    )
    return app


@dataclass
class TaskQueue:
    """How the API (its routes and its reaper) reaches the workers: `send` a task for a record's id, `check`
    that the broker answers. The Celery app is built on first use, not at start-up: the API must start (and
    serve images) with the broker down."""

    settings: Settings
    _celery: Celery | None = field(default=None, repr=False)

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            self._celery = create_celery(self.settings)
        return self._celery

    def send(self, task: str, record_id: str, queue: str | None = None) -> None:
        """Enqueue `task` for `record_id` on `queue` (default: the task's route: evaluations on `evaluate`, training
        on `cpu`); raises (at once, not after minutes) when the broker cannot take it."""
        celery = self.celery
        # Celery's own publish retries ignore `retry=False` while opening the pool's connection (celery
        # issue #6046: ~6 s against a refused Redis, forever against AMQP), so connect explicitly first.
        with celery.connection_for_write(connect_timeout=BROKER_TIMEOUT_S) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=BROKER_TIMEOUT_S)
            queue = queue or default_queue(task)
            celery.send_task(task, args=[record_id], queue=queue, connection=conn, retry=False)

    def check(self) -> str:
        """A short description of the reachable broker; raises when it is not reachable."""
        return check_broker(self.settings)


def default_queue(task: str) -> str:
    return EVALUATE_QUEUE if task == EVALUATE_TASK else CPU_QUEUE


def check_broker(settings: Settings) -> str:
    url = settings.effective_broker_url
    if url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            client.ping()
        finally:
            client.close()
        return "redis answers"
    if url.startswith("filesystem://"):
        queue = settings.broker_dir / "queue"
        if not queue.is_dir():
            raise RuntimeError(f"the filesystem broker's folder {queue} does not exist (is the worker running?)")
        if not os.access(queue, os.W_OK):
            raise RuntimeError(f"the filesystem broker's folder {queue} is not writable")
        return f"filesystem broker at {queue}"
    from kombu import Connection

    with Connection(url, connect_timeout=1.0) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=1.0)
    return "broker answers"
