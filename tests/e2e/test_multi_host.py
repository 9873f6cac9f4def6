"""Across hosts, on this machine: two API processes and two workers, each with a private folder, cache and data
root and no folder shared with another, meeting only through a PostgreSQL database, an S3 server (moto's) and
Redis, all of the test's own (benchmarks/cluster.py starts them).

A dataset (a zip of PNGs in class folders) is uploaded through API 1; jobs on it go in through both APIs; the
worker running one is SIGKILLed once that job has a checkpoint in object storage. Every job ends `succeeded` on
the other worker, the killed one resumed from storage (not from step 0); each model is served byte-identically by
both APIs; both list every job with its whole history.
"""

import io
import signal
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from e2e_support import PNG_MAGIC, submit, wait_for
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the harness is benchmarks'
from benchmarks.cluster import Cluster, Unavailable, cluster, wait_until
from core.storage import open_storage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Heartbeats every 0.5 s; a running job silent for 3 s is re-queued by the APIs' reapers.
FAULTS = {"GANSERVE_HEARTBEAT_S": "0.5", "GANSERVE_STALE_AFTER_S": "3", "GANSERVE_MAX_ATTEMPTS": "3"}
# 8 steps an epoch (256 images, batch 32), a checkpoint (uploaded to storage) every 4 epochs, no evaluation.
IMAGES, CLASSES = 256, 4
JOB = {"dataset": "bars", "batch_size": 32, "eval_extractor": "none", "sample_every": 4}
LONG_EPOCHS, SHORT_EPOCHS = 24, 4


@pytest.fixture
def hosts(postgres_server: str, s3_server: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The cluster: its own database on the session's PostgreSQL server, its own bucket on the session's S3
    server, its own Redis; two APIs and two workers, each with an empty data root of its own."""
    failed_before = request.session.testsfailed
    hosts = {"apis": 2, "workers": 2, "postgres_server": postgres_server, "s3_endpoint": s3_server}
    try:
        with cluster(tmp_path / "cluster", **hosts, **FAULTS) as c:
            try:
                yield c
            finally:
                if request.session.testsfailed > failed_before:
                    print(c.logs())  # shown under the failing test's captured output
    except Unavailable as e:
        pytest.skip(str(e))


def bars_zip() -> bytes:
    """A zip of 28×28 greyscale PNGs in a folder per class: a bright vertical bar whose column is the class's."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, label in enumerate(rng.integers(0, CLASSES, IMAGES)):
            pixels = np.zeros((28, 28), dtype=np.uint8)
            pixels[4:24, 4 + 5 * int(label) : 7 + 5 * int(label)] = 255
            png = io.BytesIO()
            Image.fromarray(pixels, mode="L").save(png, format="PNG")
            archive.writestr(f"bars/class-{label}/{i:04d}.png", png.getvalue())
    return buffer.getvalue()


def epoch_of(checkpoint: str) -> int:
    """`jobs/<id>/checkpoints/epoch-0004` → 4."""
    return int(checkpoint.rsplit("epoch-", 1)[1])


def test_two_apis_two_workers_one_killed(hosts: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    c = hosts
    api1, api2 = c.apis
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, c.env[name])
    storage = open_storage(c.env["GANSERVE_STORAGE_URL"], c.env["GANSERVE_S3_ENDPOINT_URL"])

    started = time.monotonic()
    with c.client(api1) as one, c.client(api2) as two:
        # The dataset, uploaded through API 1, is known to API 2 at once: the row is in the database, the file in
        # the object store.
        r = one.post("/datasets", files={"file": ("bars.zip", bars_zip(), "application/zip")}, data={"name": "bars"})
        assert r.status_code == 201, r.text
        dataset = r.json()
        assert dataset["count"] == IMAGES and dataset["shape"] == [1, 28, 28], dataset
        assert dataset["classes"] == [f"class-{k}" for k in range(CLASSES)], dataset
        assert two.get(f"/datasets/{dataset['id']}").json() == two.get("/datasets/bars").json() == dataset
        preview = two.get(dataset["preview"])
        assert preview.status_code == 200 and preview.content.startswith(PNG_MAGIC)

        # Two long jobs, one through each API: each worker takes one. Two short ones wait in the queue behind them.
        killed_id, _ = submit(one, model_name="hosts-killed", seed=1, epochs=LONG_EPOCHS, **JOB)
        other_id, _ = submit(two, model_name="hosts-other", seed=2, epochs=LONG_EPOCHS, **JOB)
        queued = [
            submit(one, model_name="hosts-queued-1", seed=3, epochs=SHORT_EPOCHS, **JOB)[0],
            submit(two, model_name="hosts-queued-2", seed=4, epochs=SHORT_EPOCHS, **JOB)[0],
        ]
        epochs = {killed_id: LONG_EPOCHS, other_id: LONG_EPOCHS} | dict.fromkeys(queued, SHORT_EPOCHS)

        # The killed job's worker goes once the job's record names a checkpoint that is in storage.
        def checkpointed() -> dict | None:
            job = two.get(f"/train/{killed_id}").json()
            assert job["status"] in {"queued", "running"}, job
            return job if job["status"] == "running" and job["checkpoints"] else None

        job = wait_until(checkpointed, 90, "a checkpoint of the first job", every_s=0.1)
        victim = c.running(job)
        stored = job["checkpoints"][0]
        assert storage.exists(f"{stored}.json") and storage.exists(f"{stored}.safetensors"), stored
        assert c.kill(victim) == -signal.SIGKILL
        killed_at = time.monotonic()
        (survivor,) = c.workers
        died = one.get(f"/train/{killed_id}").json()
        assert died["status"] == "running" and died["attempts"] == 1, died

        # Every job succeeds, on the worker left.
        finished = {job_id: wait_for(one, job_id, {"succeeded"}, timeout_s=120)[0] for job_id in epochs}
        print(
            f"{victim.name} SIGKILLed {killed_at - started:.1f} s after the first submission, at epoch "
            f"{job['progress']['epoch']} of {LONG_EPOCHS}; all done {time.monotonic() - killed_at:.1f} s later"
        )

        listed = [{j["id"] for j in api.get("/train").json()["jobs"]} for api in (one, two)]
        records, seen_by_one = ({job_id: api.get(f"/train/{job_id}").json() for job_id in epochs} for api in (two, one))
        models = {job_id: (job["model"]["name"], job["model"]["version"]) for job_id, job in finished.items()}
        served = {
            job_id: [api.get("/generate", params={"model": name, "seed": 7, "count": 2}) for api in (one, two)]
            for job_id, (name, _) in models.items()
        }

    survivor_id = records[other_id]["worker"]
    assert c.running(records[other_id]) is survivor
    resumed = records[killed_id]
    assert resumed["attempts"] == 2 and resumed["workers_lost"] == 1, resumed
    # From a checkpoint the killed worker put in storage: the one seen before the kill, or a later one.
    assert resumed["resumed_from_step"] is not None and resumed["resumed_from_step"] >= 8 * epoch_of(stored) > 0
    print(f"{killed_id} resumed on {survivor.name} from step {resumed['resumed_from_step']} (object storage)")
    assert f"run {killed_id}: resuming from {storage.describe('')}" in survivor.text()
    for job_id, job in records.items():
        assert job["status"] == "succeeded" and job["worker"] == survivor_id, job
        assert job["uploaded_dataset"]["id"] == dataset["id"], job
        assert job["uploaded_dataset"]["sha256"] == dataset["sha256"], job
        if job_id != killed_id:
            assert job["attempts"] == 1 and job["resumed_from_step"] is None, job

    # Nothing lost: both APIs list every job, give the same record, each with one history entry per epoch.
    assert listed[0] >= set(epochs) and listed[1] >= set(epochs)
    assert records == seen_by_one
    for job_id, job in records.items():
        assert [e["epoch"] for e in job["history"]] == list(range(1, epochs[job_id] + 1)), job_id
        assert [e["step"] for e in job["history"]] == [8 * e for e in range(1, epochs[job_id] + 1)], job_id

    # The workers read the dataset from storage, through their caches: no host's data root holds anything.
    assert not any(any((host.home / "data").iterdir()) for host in c.hosts)
    assert any((survivor.home / "cache").rglob(f"{dataset['sha256']}*")), "the dataset is not in the survivor's cache"

    # Each model served by both APIs, byte for byte the same, at the version its job published.
    for job_id, (first, second) in served.items():
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        assert first.content.startswith(PNG_MAGIC) and first.content == second.content, job_id
        version = str(models[job_id][1])
        assert first.headers["x-model-version"] == second.headers["x-model-version"] == version
