"""Fixtures for the worker's tasks, run in this process against a real JobStore on a temporary volume: no broker,
no worker process. `volume` points the task's settings at it; `submit` creates a queued job."""

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.db import connect
from core.jobs import JobRecord, JobStore
from core.settings import Settings
from core.train_config import TrainConfig
from worker import tasks

# 64 images, batch 16: 4 steps an epoch; small MLPs, no evaluation, so a job takes a fraction of a second.
TINY = {
    "dataset": "mnist",
    "epochs": 4,
    "batch_size": 16,
    "latent_dim": 8,
    "g_hidden": [32],
    "d_hidden": [32],
    "eval_extractor": "none",
}


def write_mnist(root: Path, n: int = 64) -> Path:
    rng = np.random.default_rng(0)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for img, col in zip(images, rng.integers(4, 22, n), strict=True):
        img[4:24, col : col + 3] = 255
    (root / "mnist").mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "mnist" / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x00000803, n, 28, 28) + images.tobytes())
    return root


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
    return s


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore(connect(settings.effective_database_url))


@pytest.fixture
def submit(store: JobStore) -> Callable[..., JobRecord]:
    def make(**overrides: object) -> JobRecord:
        return store.create(config=TrainConfig.model_validate({"model_name": "worker-test", **TINY, **overrides}))

    return make
