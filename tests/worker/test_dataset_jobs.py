"""A job on an uploaded dataset: the worker fetches the dataset's file from S3 (moto's server) by the SHA-256 the
job pinned, into its cache, trains on it and publishes the model; a file that is not that content fails the job,
naming the object."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_tasks import run_task

from core.datasets import DatasetRecord, DatasetStore, register
from core.jobs import JobStore
from core.model_versions import ModelVersions
from core.settings import Settings
from core.train_config import TrainConfig
from training.dataset_archive import ArchiveLimits, read_archive
from worker import tasks
from worker.run_files import storage_of

JOB = {"steps": 2, "batch_size": 4, "latent_dim": 8, "g_hidden": [16], "d_hidden": [16], "eval_extractor": "none"}


def bars(n: int = 8) -> bytes:
    """A zip of two class folders of 12×12 greyscale PNGs: a bar at the left or at the right."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for c, col in (("left", 2), ("right", 8)):
            for i in range(n):
                pixels = np.zeros((12, 12), dtype=np.uint8)
                pixels[2:10, col : col + 2] = 100 + 10 * i
                png = io.BytesIO()
                Image.fromarray(pixels).save(png, "PNG")
                z.writestr(f"{c}/{i}.png", png.getvalue())
    out.seek(0)
    return out.getvalue()


@pytest.fixture
def on_s3(settings: Settings, s3_bucket: str, s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The worker's settings with its blobs on the S3 server (the records in the test's database)."""
    s = settings.model_copy(
        update={"storage_url": s3_bucket, "s3_endpoint_url": s3_server, "database_url": settings.effective_database_url}
    )
    monkeypatch.setattr(tasks, "get_settings", lambda: s)
    return s


def uploaded(settings: Settings, store: JobStore, tmp_path: Path) -> DatasetRecord:
    """The archive read and stored as POST /datasets does."""
    data = read_archive(io.BytesIO(bars()), tmp_path / "upload", ArchiveLimits.of(settings))
    return register(
        DatasetStore(store.db),
        storage_of(settings),
        data.path,
        data.preview,
        owner=None,
        name="bars",
        sha256=data.sha256,
        format=data.format,
        count=data.count,
        shape=data.shape,
        classes=data.classes,
    )


def test_a_job_trains_on_an_uploaded_dataset_fetched_from_s3(
    on_s3: Settings, store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = uploaded(on_s3, store, tmp_path)
    config = TrainConfig.model_validate({"model_name": "bars", "dataset": "bars", "conditional": True, **JOB})
    job = store.create(config=config, uploaded_dataset=data.pin())
    assert run_task(job.id, "host:1", monkeypatch)["status"] == "succeeded", store.get(job.id).error
    done = store.get(job.id)
    assert done.model is not None and done.progress is not None and done.progress.step == 2
    cached = on_s3.effective_cache_dir / data.sha256[:2] / f"{data.sha256}.safetensors"
    assert cached.is_file()  # fetched by its SHA-256 into this worker's cache
    version = ModelVersions(store.db).get("bars", done.model.version)
    assert version is not None and version.metadata["image_shape"] == [1, 12, 12]
    assert version.metadata["train_config"]["dataset"] == "bars"


def test_a_dataset_file_that_is_not_its_content_fails_the_job(
    on_s3: Settings, store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = uploaded(on_s3, store, tmp_path)
    storage_of(on_s3).put_bytes(data.location, b"not the dataset")
    job = store.create(
        config=TrainConfig.model_validate({"model_name": "bars", "dataset": data.id, **JOB}),
        uploaded_dataset=data.pin(),
    )
    assert run_task(job.id, "host:1", monkeypatch)["status"] == "failed"
    error = store.get(job.id).error
    assert error is not None and data.location in error and "SHA-256" in error
