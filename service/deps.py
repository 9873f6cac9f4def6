"""FastAPI dependencies. Everything with a side effect outside the process (the broker) is a dependency
returning a plain callable, so tests swap it with `app.dependency_overrides` and never need a broker."""

import logging
import os
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request

from service.evaluations import EvaluationStore
from service.jobs import JobStore
from service.registry import ModelRegistry
from service.settings import Settings
from service.submissions import Submissions

log = logging.getLogger(__name__)

TaskSender = Callable[[str], None]
"""`send(job_id)`: enqueue a job's task (training or evaluation); raises if the broker cannot take it."""

BrokerCheck = Callable[[], str]
"""Returns a short description of the reachable broker; raises if it is not reachable."""

# A request must not hang on a dead broker: connect once, briefly, then answer 503.
BROKER_TIMEOUT_S = 2.0


# The getters of app.state are `async`: FastAPI runs a plain `def` dependency in its thread pool, and on /generate
# those hops cost more than the forward pass did.
async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_job_store(request: Request) -> JobStore:
    return request.app.state.jobs


async def get_evaluation_store(request: Request) -> EvaluationStore:
    return request.app.state.evaluations


async def get_submissions(request: Request) -> Submissions:
    return request.app.state.submissions


def _celery(request: Request) -> Any:
    # Built on first use, not at startup: the API must start (and serve images) with the broker down.
    state = request.app.state
    if getattr(state, "celery", None) is None:
        from worker.app import create_celery

        state.celery = create_celery(state.settings)
    return state.celery


def _sender(request: Request, task: str) -> TaskSender:
    celery = _celery(request)

    def send(job_id: str) -> None:
        # Celery's own publish retries ignore `retry=False` while opening the pool's connection (celery
        # issue #6046: ~6 s against a refused Redis, forever against AMQP), so connect explicitly first.
        with celery.connection_for_write(connect_timeout=BROKER_TIMEOUT_S) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=BROKER_TIMEOUT_S)
            celery.send_task(task, args=[job_id], queue="training", connection=conn, retry=False)

    return send


def get_task_sender(request: Request) -> TaskSender:
    from worker.app import TRAIN_TASK

    return _sender(request, TRAIN_TASK)


def get_evaluation_sender(request: Request) -> TaskSender:
    from worker.app import EVALUATE_TASK

    return _sender(request, EVALUATE_TASK)


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


async def get_broker_check(request: Request) -> BrokerCheck:
    settings: Settings = request.app.state.settings
    return lambda: check_broker(settings)


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
TaskSenderDep = Annotated[TaskSender, Depends(get_task_sender)]
EvaluationSenderDep = Annotated[TaskSender, Depends(get_evaluation_sender)]
EvaluationStoreDep = Annotated[EvaluationStore, Depends(get_evaluation_store)]
BrokerCheckDep = Annotated[BrokerCheck, Depends(get_broker_check)]
SubmissionsDep = Annotated[Submissions, Depends(get_submissions)]
