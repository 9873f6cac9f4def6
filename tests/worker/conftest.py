"""Fixtures for the worker's tasks, run in this process against a real JobStore on a temporary volume: no broker,
no worker process. `volume` points the task's settings at it; `submit` creates a queued job."""

from collections.abc import Callable
from pathlib import Path

import pytest
from worker_support import TINY, write_mnist

from core.db import connect
from core.jobs import JobRecord, JobStore
from core.settings import Settings
from core.train_config import TrainConfig
from worker import tasks
from worker.job_process import signals_here


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture
def settings(tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The worker's settings, on a volume of this test's own; heartbeats every 50 ms."""
    s = Settings(
        checkpoint_dir=tmp_path / "volume",
        data_root=data_root,
        device="cpu",
        heartbeat_s=0.05,
        stale_after_s=2.0,
        max_attempts=3,
    )
    monkeypatch.setattr(tasks, "get_settings", lambda: s)
    # The attempt and the evaluation in this process, so that the tests' patches of the training code apply to them
    # (tests/worker/test_job_process.py runs it in its own process, as a worker does).
    monkeypatch.setattr(tasks, "run_attempt_process", run_here)
    monkeypatch.setattr(tasks, "run_evaluation_process", tasks.run_evaluation)
    return s


def run_here(store: JobStore, job_id: str, attempt: int, me: str, max_runtime_s: int | None, ranks: int = 1) -> dict:
    return tasks.run_attempt(job_id, attempt, me, signals_here(store, job_id))


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore(connect(settings.effective_database_url))


@pytest.fixture
def submit(store: JobStore) -> Callable[..., JobRecord]:
    def make(**overrides: object) -> JobRecord:
        return store.create(config=TrainConfig.model_validate({"model_name": "worker-test", **TINY, **overrides}))

    return make
