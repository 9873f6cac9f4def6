"""Queues by resource class, against a real Redis and a real worker process: a training job and an evaluation land
on different queues (the message carries the id only), and on one busy worker an evaluation submitted after a
queued training job runs first, as soon as the running job ends; the worker advertises itself (GET /workers),
and a job no advertised worker could run is a 422."""

import json
import time

import pytest
import redis
from e2e_support import FINISHED, TINY, submit, wait_for

from core.settings import Settings
from core.tasks import EVALUATE_TASK, TRAIN_TASK, TaskQueue

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def on_db(redis_url: str, db: int) -> str:
    """The tests' redis-server, another database: a queue of its own, apart from the other stacks'."""
    return f"{redis_url.rsplit('/', 1)[0]}/{db}"


def test_a_training_job_and_an_evaluation_go_to_different_queues(redis_url: str) -> None:
    url = on_db(redis_url, 9)
    client = redis.Redis.from_url(url)
    client.flushdb()
    tasks = TaskQueue(Settings(_env_file=None, redis_url=url))  # type: ignore[call-arg]
    tasks.send(TRAIN_TASK, "job-gpu", queue="gpu-2")
    tasks.send(TRAIN_TASK, "job-cpu")  # no queue said: a training job's route, `cpu`
    tasks.send(EVALUATE_TASK, "eval-1")  # an evaluation's route, `evaluate`
    queued = {q.decode(): client.llen(q) for q in client.keys("*") if client.type(q) == b"list"}
    assert queued == {"gpu-2": 1, "cpu": 1, "evaluate": 1}
    for queue, task, record_id in (("gpu-2", TRAIN_TASK, "job-gpu"), ("evaluate", EVALUATE_TASK, "eval-1")):
        message = json.loads(client.lpop(queue))
        assert message["headers"]["task"] == task and message["content-type"] == "application/json"
        assert message["headers"]["argsrepr"] == repr([record_id])  # the record's id, nothing else
    client.flushdb()


def test_an_evaluation_does_not_wait_behind_queued_training(redis_url: str, start_stack, tmp_path) -> None:
    url = on_db(redis_url, 10)
    redis.Redis.from_url(url).flushdb()
    s = start_stack(url, tmp_path, GANSERVE_WORKER_HEARTBEAT_S="1")
    try:
        with s.client() as client:
            workers = client.get("/workers").json()
            assert workers["live"] == {"cpu": 1, "gpu": 0}, workers
            (worker,) = workers["workers"]
            assert worker["class"] == "cpu" and worker["devices"] == [] and worker["live"] is True
            assert worker["queues"] == ["evaluate", "cpu", "training"] and worker["name"] == "worker@" + worker["host"]

            # Only a CPU worker: a job asking for a GPU could never run.
            r = client.post("/train", json={**TINY, "model_name": "e2e-no-gpu", "resources": {"gpus": 1}})
            assert r.status_code == 422 and r.json()["error"] == "no_worker_can_run_it", r.text
            assert "Only CPU workers" in r.json()["message"]

            name = "e2e-routed"
            first, _ = submit(client, model_name=name, **TINY)
            job, _ = wait_for(client, first, {"succeeded"}, timeout_s=180)
            assert job["resources"] == {"gpus": 0, "queue": "cpu", "requested": False}

            long, _ = submit(client, model_name="e2e-long", **{**TINY, "epochs": 2000})
            wait_for(client, long, {"running"}, timeout_s=60)
            behind, _ = submit(client, model_name="e2e-behind", **TINY)  # queued behind the running job
            r = client.post(f"/models/{name}/evaluate", json={"n": 100})
            assert r.status_code == 202, r.text
            evaluation = r.headers["location"]
            time.sleep(1.0)  # both messages in Redis before the worker comes free
            assert client.get(f"/train/{behind}").json()["status"] == "queued"
            assert client.delete(f"/train/{long}").status_code == 202
            deadline = time.monotonic() + 180
            while (ev := client.get(evaluation).json())["status"] not in FINISHED:
                assert time.monotonic() < deadline, ev
                time.sleep(0.2)
            assert ev["status"] == "succeeded", ev
            later, _ = wait_for(client, behind, {"succeeded"}, timeout_s=180)
            # Submitted after the training job, run before it.
            assert ev["finished_at"] <= later["started_at"], (ev, later)
    finally:
        s.stop()
