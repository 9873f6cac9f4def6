"""A training job's run files in object storage: each worker trains in a private scratch folder, the run lives in
storage (`GANSERVE_STORAGE_URL`), and a worker with another, empty folder resumes a job from there — on moto's
S3 server and on a `file://` folder shared by no worker's GANSERVE_CHECKPOINT_DIR. With the default storage (the
volume itself) nothing is copied."""

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from test_tasks import STEPS_PER_EPOCH, WorkerKilled, history_epochs, kill_at_resume_save, requeue, run_task

import training.checkpoint
import training.loop
from core.jobs import JobRecord, JobStore
from core.model_versions import ModelVersions
from core.quota import stored_bytes
from core.settings import Settings
from core.storage import Storage, open_storage
from worker import run_files, tasks

Where = tuple[str, str | None]  # GANSERVE_STORAGE_URL, GANSERVE_S3_ENDPOINT_URL


@pytest.fixture
def s3(s3_bucket: str, s3_server: str) -> Where:
    """A new bucket on the S3 server."""
    return s3_bucket, s3_server


@pytest.fixture(params=["s3", "file"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Where:
    """The S3 server's, or a local folder that is no worker's GANSERVE_CHECKPOINT_DIR."""
    if request.param == "s3":
        return request.getfixturevalue("s3")
    return (tmp_path / "object-store").as_uri(), None


@pytest.fixture
def worker_on(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Where], Settings]:
    """`worker_on(name, where)`: from now on the task runs as a worker with a private GANSERVE_CHECKPOINT_DIR of
    that name (empty at first), the run's blobs in storage `where`, the job records in the test's one database."""

    def make(name: str, where: Where) -> Settings:
        storage_url, endpoint = where
        s = settings.model_copy(
            update={
                "checkpoint_dir": tmp_path / name,
                "storage_url": storage_url,
                "s3_endpoint_url": endpoint,
                "database_url": settings.effective_database_url,
            }
        )
        monkeypatch.setattr(tasks, "get_settings", lambda: s)
        return s

    return make


def blobs(settings: Settings) -> Storage:
    return open_storage(settings.effective_storage_url, settings.s3_endpoint_url)


def run_keys(settings: Settings, job: JobRecord) -> list[str]:
    prefix = f"jobs/{job.id}/"
    return [k.removeprefix(prefix) for k in blobs(settings).keys(prefix)]


Worker = Callable[[str, Where], Settings]


def test_a_job_keeps_its_run_in_storage(
    worker_on: Worker, where: Where, submit, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = worker_on("worker-a", where)
    job = submit(sample_every=2)  # epochs 2 and 4 kept; 1 and 3 stand in for a while, then are pruned
    assert run_task(job.id, "host:1", monkeypatch)["status"] == "succeeded"
    done = store.get(job.id)
    assert run_keys(a, job) == [
        "checkpoints/epoch-0002.json",
        "checkpoints/epoch-0002.safetensors",
        "checkpoints/epoch-0004.json",
        "checkpoints/epoch-0004.safetensors",
        "samples/epoch-0002.png",
        "samples/epoch-0004.png",
    ]
    # The record names storage keys: the same strings as the volume's relative paths always were.
    assert done.checkpoints == [f"jobs/{job.id}/checkpoints/epoch-0002", f"jobs/{job.id}/checkpoints/epoch-0004"]
    assert done.samples == [f"jobs/{job.id}/samples/epoch-0002.png", f"jobs/{job.id}/samples/epoch-0004.png"]
    fetched = a.checkpoint_dir.parent / "fetched"
    for stem in done.checkpoints:
        for suffix in (".json", ".safetensors"):
            blobs(a).get_file(stem + suffix, fetched / (stem + suffix))
        training.checkpoint.load(fetched / stem)  # whole: its weights are what its JSON's SHA-256 says
    assert not (a.jobs_dir / job.id).exists()  # the scratch copy goes once the job is over


@pytest.mark.parametrize("after_saving", [True, False], ids=["killed-after-its-checkpoint", "killed-before-it"])
def test_a_killed_job_resumes_from_storage_on_a_worker_with_an_empty_folder(
    after_saving: bool, worker_on: Worker, where: Where, submit, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker_on("straight", where)
    straight = submit()
    assert run_task(straight.id, "host:0", monkeypatch)["status"] == "succeeded"

    a = worker_on("worker-a", where)
    job = submit()
    with monkeypatch.context() as m:
        kill_at_resume_save(m, epoch=2, after_saving=after_saving)
        with pytest.raises(WorkerKilled):
            run_task(job.id, "host:1", m)
    resumed_epoch = 2 if after_saving else 1
    assert f"checkpoints/epoch-{resumed_epoch:04d}.json" in run_keys(a, job)

    requeue(store, job.id)
    b = worker_on("worker-b", where)
    assert not b.checkpoint_dir.exists()
    assert run_task(job.id, "host:2", monkeypatch)["status"] == "succeeded"
    done = store.get(job.id)
    assert done.attempts == 2 and done.worker == "host:2"
    assert done.resumed_from_step == resumed_epoch * STEPS_PER_EPOCH  # from storage, not from step 0
    assert history_epochs(done) == [1, 2, 3, 4]
    assert [e.losses for e in done.history] == [e.losses for e in store.get(straight.id).history]
    assert done.metrics == store.get(straight.id).metrics
    assert "checkpoints/epoch-0004.json" in run_keys(b, job)


def test_a_corrupt_checkpoint_in_storage_is_passed_over_for_the_one_before(
    worker_on: Worker,
    s3: Where,
    submit,
    store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker_on("straight", s3)
    straight = submit(sample_every=2)
    assert run_task(straight.id, "host:0", monkeypatch)["status"] == "succeeded"

    a = worker_on("worker-a", s3)
    job = submit(sample_every=2)
    with monkeypatch.context() as m:
        kill_at_resume_save(m, epoch=3, after_saving=True)
        with pytest.raises(WorkerKilled):
            run_task(job.id, "host:1", m)
    assert [k for k in run_keys(a, job) if k.startswith("checkpoints/")] == [
        "checkpoints/epoch-0002.json",  # kept
        "checkpoints/epoch-0002.safetensors",
        "checkpoints/epoch-0003.json",  # the newest, standing in for epoch 3 (epoch 1's was pruned)
        "checkpoints/epoch-0003.safetensors",
    ]
    newest = f"jobs/{job.id}/checkpoints/epoch-0003.safetensors"
    data = bytearray(blobs(a).get_bytes(newest))
    data[len(data) // 2] ^= 0xFF
    blobs(a).put_bytes(newest, bytes(data))

    requeue(store, job.id)
    worker_on("worker-b", s3)
    with caplog.at_level(logging.WARNING, logger=run_files.__name__):
        assert run_task(job.id, "host:2", monkeypatch)["status"] == "succeeded"
    passed_over = [r.getMessage() for r in caplog.records if "passed over" in r.getMessage()]
    assert len(passed_over) == 1 and "epoch-0003" in passed_over[0] and "SHA-256" in passed_over[0]
    done = store.get(job.id)
    assert done.resumed_from_step == 2 * STEPS_PER_EPOCH
    assert [e.losses for e in done.history] == [e.losses for e in store.get(straight.id).history]
    # Epoch 3 was trained again, its stand-in replaced, then pruned once epoch 4 was kept.
    assert [k for k in run_keys(a, job) if k.startswith("checkpoints/")] == [
        "checkpoints/epoch-0002.json",
        "checkpoints/epoch-0002.safetensors",
        "checkpoints/epoch-0004.json",
        "checkpoints/epoch-0004.safetensors",
    ]


def test_a_run_resumed_after_its_last_epoch_publishes_with_its_grid(
    worker_on: Worker, s3: Where, submit, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after writing its last checkpoint, before publishing: the next worker fetches that checkpoint and
    the grid it names, trains nothing more, and publishes."""
    worker_on("worker-a", s3)
    job = submit(epochs=2)
    with monkeypatch.context() as m:
        kill_at_resume_save(m, epoch=2, after_saving=True)
        with pytest.raises(WorkerKilled):
            run_task(job.id, "host:1", m)
    requeue(store, job.id)
    b = worker_on("worker-b", s3)
    run_dir = b.jobs_dir / job.id
    found: list[list[str]] = []
    real_train = training.loop.train

    def train(*args, **kwargs):
        found.append(sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training.loop, "train", train)
    assert run_task(job.id, "host:2", monkeypatch)["status"] == "succeeded"
    assert found == [["checkpoints/epoch-0002.json", "checkpoints/epoch-0002.safetensors", "samples/epoch-0002.png"]]
    done = store.get(job.id)
    assert done.resumed_from_step == 2 * STEPS_PER_EPOCH and history_epochs(done) == [1, 2]
    assert done.model is not None


def test_storage_out_of_reach_fails_the_job_naming_it(
    worker_on: Worker, s3: Where, submit, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket, _ = s3
    worker_on("worker-a", (bucket, "http://127.0.0.1:9"))  # nothing listens there
    job = submit()
    assert run_task(job.id, "host:1", monkeypatch)["status"] == "failed"
    record = store.get(job.id)
    assert record.error is not None
    assert record.error.startswith(f"BlobError: cannot list {bucket}/jobs/{job.id}/checkpoints")
    assert record.history == []


def test_the_default_storage_copies_nothing(
    submit, store: JobStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage is the volume itself (`make run`): the run folder is the blobs, so no run file goes through
    storage, and the record names the same paths as before."""
    touched: list[str] = []
    for name in ("put_file", "put_bytes", "get_file", "get_bytes", "delete", "keys", "exists"):
        real = getattr(Storage, name)

        def spy(self, key, *args, _real=real, _name=name, **kwargs):
            if key.startswith("jobs/"):
                touched.append(f"{_name} {key}")
            return _real(self, key, *args, **kwargs)

        monkeypatch.setattr(Storage, name, spy)
    job = submit(epochs=2)
    assert run_task(job.id, "host:1", monkeypatch)["status"] == "succeeded"
    assert touched == []
    record = store.get(job.id)
    assert record.samples == [f"jobs/{job.id}/samples/epoch-0001.png", f"jobs/{job.id}/samples/epoch-0002.png"]
    for stem in record.checkpoints:
        training.checkpoint.load(settings.checkpoint_dir / stem)  # on the volume, where they always were


def test_an_evaluation_image_goes_to_storage(worker_on: Worker, where: Where, settings: Settings) -> None:
    def nn_png(s: Settings, data: bytes) -> Path:
        png = s.evaluations_dir / "jobs" / "e1-nearest.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(data)
        return png

    elsewhere = worker_on("worker-a", where)
    png = nn_png(elsewhere, b"nearest neighbours")
    assert run_files.store_file(elsewhere, png) == "evaluations/jobs/e1-nearest.png"
    assert blobs(elsewhere).get_bytes("evaluations/jobs/e1-nearest.png") == b"nearest neighbours"
    assert not png.exists()  # stored elsewhere: the scratch copy goes

    png = nn_png(settings, b"on the volume")  # the default storage: the volume's own file, kept
    assert run_files.store_file(settings, png) == "evaluations/jobs/e1-nearest.png"
    assert png.read_bytes() == b"on the volume"


@pytest.mark.parametrize("storage_at", ["s3", "file", "volume"])
def test_retention_deletes_old_checkpoints_from_storage_and_the_record(
    storage_at: str,
    worker_on: Worker,
    settings: Settings,
    submit,
    store: JobStore,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`keep_checkpoints: 2` of 4 epochs: storage, the record and the volume hold epochs 3 and 4 only (every grid
    stays), and the bytes the job's run and its published version take are recorded for its key's quota."""
    a = settings if storage_at == "volume" else worker_on("worker-a", request.getfixturevalue("where_" + storage_at))
    job = submit(keep_checkpoints=2)
    assert run_task(job.id, "host:1", monkeypatch)["status"] == "succeeded"
    done = store.get(job.id)
    assert run_keys(a, job) == [
        "checkpoints/epoch-0003.json",
        "checkpoints/epoch-0003.safetensors",
        "checkpoints/epoch-0004.json",
        "checkpoints/epoch-0004.safetensors",
        *(f"samples/epoch-000{e}.png" for e in range(1, 5)),
    ]
    assert done.checkpoints == [f"jobs/{job.id}/checkpoints/epoch-0003", f"jobs/{job.id}/checkpoints/epoch-0004"]
    assert len(done.samples) == 4
    assert store.storage_bytes(job.id) == stored_bytes(blobs(a), f"jobs/{job.id}") > 0
    assert done.model is not None
    version = ModelVersions(store.db).get(done.model.name, done.model.version)
    assert version is not None and version.storage_bytes == stored_bytes(blobs(a), version.location) > 0


@pytest.fixture
def where_s3(s3: Where) -> Where:
    return s3


@pytest.fixture
def where_file(tmp_path: Path) -> Where:
    return (tmp_path / "object-store").as_uri(), None
