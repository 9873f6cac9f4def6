"""An `architecture: adagan` job through the real worker task: its rounds are the job's epochs, and the mixture is
published as the model's version, servable by its weights."""

import pytest
from worker_support import TINY

from core.db import connect
from core.jobs import JobStore
from core.model_versions import ModelVersions
from core.records import JobStatus
from core.settings import Settings
from core.train_config import TrainConfig
from worker import tasks


def test_an_adagan_job_publishes_its_mixture(
    store: JobStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = {**TINY, "dataset": "ring-2d", "architecture": "adagan", "rounds": 2, "steps": 3, "latent_dim": 2}
    job = store.create(config=TrainConfig.model_validate({"model_name": "ring-mix", **fields}))
    monkeypatch.setattr(tasks, "worker_id", lambda: "host:1")
    assert tasks.train(job.id)["status"] == "succeeded"
    done = store.get(job.id)
    assert done.status == JobStatus.succeeded
    assert [e.epoch for e in done.history] == [1, 2]  # one entry per round
    versions = ModelVersions(connect(settings.effective_database_url))
    row = versions.get("ring-mix", 1)
    assert row is not None
    meta = row.metadata
    assert meta["architecture"] == "adagan" and meta["generator"]["arch"] == "adagan"
    assert meta["num_generators"] == 2 and meta["mixture_weights"] == [0.5, 0.5]
