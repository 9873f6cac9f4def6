"""FastAPI dependencies. Everything with a side effect outside the process (the broker) is a dependency
returning a plain callable, so tests swap it with `app.dependency_overrides` and never need a broker."""

import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from core.evaluations import EvaluationStore
from core.jobs import JobStore
from core.settings import Settings
from core.submissions import Submissions
from core.tasks import EVALUATE_TASK, TRAIN_TASK, TaskQueue
from service.serving.registry import ModelRegistry

log = logging.getLogger(__name__)

TaskSender = Callable[[str], None]
"""`send(job_id)`: enqueue a job's task (training or evaluation); raises if the broker cannot take it."""

BrokerCheck = Callable[[], str]
"""Returns a short description of the reachable broker; raises if it is not reachable."""


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


def _queue(request: Request) -> TaskQueue:
    state = request.app.state
    if getattr(state, "tasks", None) is None:
        state.tasks = TaskQueue(state.settings)
    return state.tasks


def get_task_sender(request: Request) -> TaskSender:
    queue = _queue(request)
    return lambda job_id: queue.send(TRAIN_TASK, job_id)


def get_evaluation_sender(request: Request) -> TaskSender:
    queue = _queue(request)
    return lambda eval_id: queue.send(EVALUATE_TASK, eval_id)


async def get_broker_check(request: Request) -> BrokerCheck:
    return _queue(request).check


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
TaskSenderDep = Annotated[TaskSender, Depends(get_task_sender)]
EvaluationSenderDep = Annotated[TaskSender, Depends(get_evaluation_sender)]
EvaluationStoreDep = Annotated[EvaluationStore, Depends(get_evaluation_store)]
BrokerCheckDep = Annotated[BrokerCheck, Depends(get_broker_check)]
SubmissionsDep = Annotated[Submissions, Depends(get_submissions)]
