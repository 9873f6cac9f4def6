"""The API's side of workers and resources: GET /workers (admin) from the real `workers` table, POST /train's
`resources` (its queue, its default, the 422 when no advertised worker could run it), a queued job's `waiting_for`,
/readyz's `workers` check, and the reaper sending a job back to the queue it was sent to."""

import time

import pytest
from fastapi.testclient import TestClient
from svc_support import AUTH, TRAIN_KEY, FakeTasks, bearer, client_on

from core.records import JobStatus
from core.settings import Settings
from core.workers import WorkerClass, WorkerStore
from service.background.reaper import requeue
from service.state import app_state

JOB = {"model_name": "routed", "dataset": "ring-2d", "epochs": 1}


@pytest.fixture
def workers(running: TestClient, settings: Settings) -> WorkerStore:
    """The app's own `workers` table, written as workers write it."""
    return WorkerStore(app_state(running.app).db, settings.worker_heartbeat_s)


def tasks(client: TestClient) -> FakeTasks:
    return app_state(client.app).tasks  # type: ignore[return-value]


def ready_checks(client: TestClient, timeout_s: float = 60.0) -> dict:
    """/readyz's checks once the render process has loaded its models (it starts with the app, unwaited for)."""
    deadline = time.monotonic() + timeout_s
    while (r := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)
    return r.json()["checks"]


def gpu(store: WorkerStore, name: str, devices: list[int]) -> None:
    queues = ["evaluate", *[f"gpu-{n}" for n in range(len(devices), 0, -1)], "training"]
    store.advertise(name, WorkerClass.gpu, devices, queues, "gpuhost", 100)


def cpu(store: WorkerStore, name: str = "cpu@box") -> None:
    store.advertise(name, WorkerClass.cpu, [], ["evaluate", "cpu", "training"], "box", 200)


def test_workers_are_listed_for_an_admin_only(client: TestClient, workers: WorkerStore) -> None:
    gpu(workers, "gpu0-1@gpuhost", [0, 1])
    cpu(workers)
    r = client.get("/workers")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 2 and body["live"] == {"cpu": 1, "gpu": 1}
    first, second = body["workers"]
    assert (first["name"], first["class"], first["devices"], first["live"]) == ("cpu@box", "cpu", [], True)
    assert second["queues"] == ["evaluate", "gpu-2", "gpu-1", "training"] and second["pid"] == 100
    assert {"host", "started_at", "last_seen"} <= set(second)
    trainer = client_on(client, headers=bearer(TRAIN_KEY))
    assert trainer.get("/workers").status_code == 403
    assert client_on(client).get("/workers").status_code == 401


def test_with_no_worker_advertised_any_job_is_queued_and_says_what_it_waits_for(client: TestClient) -> None:
    r = client.post("/train", json={**JOB, "resources": {"gpus": 2}})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["resources"] == {"gpus": 2, "queue": "gpu-2", "requested": True}
    assert tasks(client).queues[job["id"]] == "gpu-2"
    assert job["waiting_for"] == (
        "no live worker can take it: it waits for a gpu worker with ≥2 devices; GET /workers lists the workers"
    )
    assert client.get(f"/train/{job['id']}").json()["waiting_for"] == job["waiting_for"]
    listed = client.get("/train").json()["jobs"]
    assert listed[0]["waiting_for"] == job["waiting_for"]
    # No `resources`, no worker yet (the API started first): any worker, the first to come, whatever its class.
    plain = client.post("/train", json=JOB).json()
    assert plain["resources"] == {"gpus": None, "queue": "training", "requested": False}
    assert tasks(client).queues[plain["id"]] == "training"
    checks = ready_checks(client)
    assert checks["workers"]["ok"] is True
    assert checks["workers"]["detail"] == (
        "live workers: none; 2 queued job(s) no live worker can take: 1 wait for a gpu worker with ≥2 devices, "
        "1 wait for any worker"
    )


def test_a_job_goes_to_the_queue_of_what_it_asks_for(client: TestClient, workers: WorkerStore) -> None:
    gpu(workers, "gpu0-1@gpuhost", [0, 1])
    cpu(workers)
    sent = tasks(client).queues
    for resources, queue in (({"gpus": 2}, "gpu-2"), ({"gpus": 1}, "gpu-1"), ({"gpus": 0}, "cpu"), (None, "gpu-1")):
        body = {**JOB, "resources": resources} if resources else JOB
        r = client.post("/train", json=body)
        assert r.status_code == 202, r.text
        job = r.json()
        assert sent[job["id"]] == queue and job["resources"]["queue"] == queue and job["waiting_for"] is None
    assert ready_checks(client)["workers"]["detail"] == "live workers: 1 cpu, 1 gpu"


def test_a_job_no_advertised_worker_could_run_is_a_422_saying_how_to_fix_it(
    client: TestClient, workers: WorkerStore
) -> None:
    gpu(workers, "gpu0-1@gpuhost", [0, 1])
    r = client.post("/train", json={**JOB, "resources": {"gpus": 4}})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "no_worker_can_run_it"
    assert "largest GPU worker advertised has 2 device(s)" in body["message"] and "at most 2" in body["message"]
    assert body["detail"]["max_gpus"] == 2 and body["detail"]["classes"] == ["gpu"]
    r = client.post("/train", json={**JOB, "resources": {"gpus": 0}})
    assert r.status_code == 422 and "No CPU worker" in r.json()["message"]
    assert client.get("/train").json()["count"] == 0  # nothing queued, nothing sent
    assert tasks(client).queues == {}
    workers.remove("gpu0-1@gpuhost")
    cpu(workers)
    r = client.post("/train", json={**JOB, "resources": {"gpus": 1}})
    assert r.status_code == 422 and "Only CPU workers are advertised" in r.json()["message"]


@pytest.mark.parametrize("resources", [{"gpus": -1}, {"gpus": 65}, {"gpus": "two"}, {"gpus": 1, "tpus": 2}, {}])
def test_malformed_resources_are_a_422(client: TestClient, resources: dict) -> None:
    r = client.post("/train", json={**JOB, "resources": resources})
    assert r.status_code == 422 and r.json()["error"] == "validation_error", r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", "resources"]


def test_a_job_waits_while_its_only_worker_is_silent(make_app, workers: WorkerStore, settings: Settings) -> None:
    fast = make_app(worker_heartbeat_s=0.3)  # silent after 0.9 s
    with TestClient(fast) as started:
        client = client_on(started, headers=AUTH)
        store = WorkerStore(app_state(fast).db, 0.3)
        gpu(store, "gpu0@gpuhost", [0])
        job = client.post("/train", json={**JOB, "resources": {"gpus": 1}}).json()
        assert job["waiting_for"] is None
        time.sleep(1.2)  # more than 3 beats
        silent = client.get(f"/train/{job['id']}").json()
        assert silent["waiting_for"] == (
            "no live worker can take it: it waits for a gpu worker with ≥1 device (1 such worker(s) advertised "
            "but silent); GET /workers lists the workers"
        )
        assert client.get("/workers").json()["workers"][0]["live"] is False
        # A silent worker may come back: asking for what it has is still accepted.
        assert client.post("/train", json={**JOB, "resources": {"gpus": 1}}).status_code == 202


def test_the_reaper_sends_a_job_back_to_its_queue(client: TestClient, workers: WorkerStore) -> None:
    gpu(workers, "gpu0-1@gpuhost", [0, 1])
    job = client.post("/train", json={**JOB, "resources": {"gpus": 2}}).json()
    state = app_state(client.app)
    fake = tasks(client)
    fake.queues.clear()
    state.jobs.update(job["id"], status=JobStatus.queued)
    requeue(state)(job["id"])
    assert fake.queues == {job["id"]: "gpu-2"}
    old = state.jobs.create(config=state.jobs.get(job["id"]).config)  # as an older version made it: no resources
    requeue(state)(old.id)
    assert fake.queues[old.id] == "training"


def test_the_same_idempotency_key_with_other_resources_is_another_request(
    client: TestClient, workers: WorkerStore
) -> None:
    gpu(workers, "gpu0-1@gpuhost", [0, 1])
    headers = {"Idempotency-Key": "one"}
    first = client.post("/train", json={**JOB, "resources": {"gpus": 1}}, headers=headers)
    again = client.post("/train", json={**JOB, "resources": {"gpus": 1}}, headers=headers)
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    other = client.post("/train", json={**JOB, "resources": {"gpus": 2}}, headers=headers)
    assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"


def test_metrics_count_workers_and_the_jobs_no_live_worker_can_take(client: TestClient, workers: WorkerStore) -> None:
    gpu(workers, "gpu0@gpuhost", [0])
    cpu(workers)
    client.post("/train", json={**JOB, "resources": {"gpus": 1}})  # a live worker can take it
    client.post("/train", json={**JOB, "resources": {"gpus": 1}})
    text = client.get("/metrics").text
    assert 'ganserve_workers{class="gpu",live="true"} 1.0' in text
    assert 'ganserve_workers{class="cpu",live="true"} 1.0' in text
    assert 'ganserve_workers{class="gpu",live="false"} 0.0' in text
    assert "ganserve_jobs_without_live_worker 0.0" in text
    workers.remove("gpu0@gpuhost")
    app_state(client.app).metrics.jobs.expire()  # type: ignore[union-attr]  # not a second later: read again
    assert "ganserve_jobs_without_live_worker 2.0" in client.get("/metrics").text


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"batch_size": 5}, "must divide evenly among the 2 processes"),
        ({"compile": "default"}, "does not support compile"),
        ({"architecture": "adagan"}, "does not support adagan"),
    ],
)
def test_a_job_several_gpus_cannot_train_is_a_422(client: TestClient, workers: WorkerStore, fields, complaint) -> None:
    gpu(workers, "gpu@box", [0, 1])
    r = client.post("/train", json={**JOB, **fields, "resources": {"gpus": 2}})
    assert r.status_code == 422 and r.json()["error"] == "not_data_parallel", r.text
    assert complaint in r.json()["message"] and "2 GPUs" in r.json()["message"]
    assert client.post("/train", json={**JOB, **fields, "resources": {"gpus": 1}}).status_code == 202
