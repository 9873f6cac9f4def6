"""Faults, injected for real into real processes: a worker SIGKILLed mid-job (its job is found by the API's
reaper and resumed by another worker from its checkpoint), Redis stopped and started again under a running
and a queued job, and the API restarted (with a truncated newest model version waiting for it on the volume).

Each test has its own stack (worker + API) on a redis-server of this module's own that keeps an append-only
file, as docker-compose.yml runs it. Heartbeats every 0.5 s, a job is stale after 3 s.
"""

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from e2e_support import PNG_MAGIC, TINY, model_names, submit, wait_for

from core.db import Database
from core.model_versions import ModelVersions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAULT_ENV = {"GANSERVE_HEARTBEAT_S": "0.5", "GANSERVE_STALE_AFTER_S": "3", "GANSERVE_MAX_ATTEMPTS": "3"}
# ~0.2 s an epoch on this project's 2 cores (the default MLP, 8 steps); no evaluation, few sample grids.
LONG = {**TINY, "batch_size": 32, "eval_extractor": "none", "sample_every": 10}


_db = iter(range(16))


@pytest.fixture
def fault_stack(persistent_redis, start_stack, tmp_path: Path) -> Iterator:
    """A worker and the API of this test's own (a conftest `Stack`), on a Redis database of its own."""
    s = start_stack(persistent_redis.url(next(_db)), tmp_path, **FAULT_ENV)
    try:
        yield s
    finally:
        s.stop()


def resume_point(volume: Path, job_id: str) -> dict | None:
    """The newest checkpoint's metadata (its JSON is written last: when it exists, the pair is whole)."""
    found = sorted((volume / "jobs" / job_id / "checkpoints").glob("epoch-*.json"))
    return json.loads(found[-1].read_text()) if found else None


def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(0.1)
    return value


def test_sigkilled_worker_job_resumes_on_another_worker(fault_stack) -> None:
    s, epochs = fault_stack, 30
    with s.client() as client:
        job_id, _ = submit(client, model_name="e2e-killed", **{**LONG, "epochs": epochs})
        wait_until(lambda: (p := resume_point(s.volume, job_id)) and p["epoch"] >= 2, 60, "a resume checkpoint")

        worker = s.procs[0]
        assert s.kill(worker) != 0  # SIGKILL to its process group: no shutdown, no acknowledgement
        killed_at = time.monotonic()
        point = resume_point(s.volume, job_id)
        assert point is not None and point["step"] > 0
        died = client.get(f"/train/{job_id}").json()
        assert died["status"] == "running" and died["attempts"] == 1, died

        s.start_worker("worker2")

        def requeued() -> bool:
            job = client.get(f"/train/{job_id}").json()
            return job["status"] != "running" or job["attempts"] > 1

        wait_until(requeued, 30, "the reaper re-queueing the job")
        detected_s = time.monotonic() - killed_at
        job, _ = wait_for(client, job_id, {"succeeded"}, timeout_s=90)
        done_s = time.monotonic() - killed_at
        print(f"worker killed after epoch {point['epoch']}: re-queued {detected_s:.1f} s later, done {done_s:.1f} s")

    assert job["attempts"] == 2 and job["workers_lost"] == 1
    assert job["resumed_from_step"] == point["step"] > 0
    assert [e["epoch"] for e in job["history"]] == list(range(1, epochs + 1))
    assert [e["step"] for e in job["history"]] == [8 * e for e in range(1, epochs + 1)]
    assert job["worker"] != died["worker"]
    assert job["model"] == {"name": "e2e-killed", "version": 1}
    assert "resuming after epoch" in s.procs[-1].text()


def test_redis_restarted_mid_job(fault_stack, persistent_redis) -> None:
    """Redis goes down under a running job and a queued one, and comes back on the same port with its
    append-only file: both jobs succeed; meanwhile /train answers 503 + Retry-After and /generate keeps
    answering 200."""
    s = fault_stack
    with s.client() as client:
        served, _ = submit(client, model_name="e2e-served", **{**TINY, "eval_extractor": "none"})
        wait_for(client, served, {"succeeded"}, timeout_s=60)

        generate_codes: list[int] = []
        stop = threading.Event()

        def keep_generating() -> None:
            with httpx.Client(base_url=s.base_url, timeout=10) as c:
                while not stop.is_set():
                    generate_codes.append(c.get("/generate", params={"model": "e2e-served", "seed": 1}).status_code)
                    time.sleep(0.1)

        generator = threading.Thread(target=keep_generating)
        generator.start()
        try:
            running_id, _ = submit(client, model_name="e2e-through-restart", **{**LONG, "epochs": 40})
            queued_id, _ = submit(client, model_name="e2e-queued-before-restart", **{**TINY, "eval_extractor": "none"})
            wait_for(client, running_id, {"running"}, timeout_s=60)
            persistent_redis.stop()
            down_at = time.monotonic()
            r = client.post("/train", json={"model_name": "e2e-while-down", **TINY})
            assert r.status_code == 503 and r.json()["error"] == "broker_unavailable", r.text
            assert int(r.headers["retry-after"]) > 0
            assert client.get(f"/train/{running_id}").json()["status"] == "running"
            time.sleep(max(0.0, 3 - (time.monotonic() - down_at)))  # down for a few seconds, heartbeats go on
            persistent_redis.start()
            print(f"redis was down {time.monotonic() - down_at:.1f} s")

            job, _ = wait_for(client, running_id, {"succeeded"}, timeout_s=60)
            assert job["attempts"] == 1 and job["workers_lost"] == 0
            queued, _ = wait_for(client, queued_id, {"succeeded"}, timeout_s=60)
            assert queued["attempts"] == 1
            # And the broker takes new jobs again.
            after_id, _ = submit(client, model_name="e2e-after-restart", **{**TINY, "eval_extractor": "none"})
            wait_for(client, after_id, {"succeeded"}, timeout_s=60)
            print(f"redis stopped: the jobs around it all succeeded {time.monotonic() - down_at:.1f} s later")
        finally:
            stop.set()
            generator.join()
    assert len(generate_codes) > 20 and set(generate_codes) == {200}, generate_codes


def test_api_restarted(fault_stack) -> None:
    """The API process alone stops and starts again while a job runs: every job and model is still listed,
    the running job is not mistaken for a lost one, and a truncated newest version found on the volume is
    refused (logged) while the previous one is served."""
    s = fault_stack
    fast = {**TINY, "eval_extractor": "none"}
    with s.client() as client:
        first, _ = submit(client, model_name="e2e-kept", **fast)
        wait_for(client, first, {"succeeded"}, timeout_s=60)
        v1 = client.get("/generate", params={"model": "e2e-kept", "seed": 3})
        assert v1.status_code == 200 and v1.content.startswith(PNG_MAGIC)
        second, _ = submit(client, model_name="e2e-kept", **{**fast, "seed": 1})
        wait_for(client, second, {"succeeded"}, timeout_s=60)
        running_id, _ = submit(client, model_name="e2e-across-api-restart", **{**LONG, "epochs": 40})
        wait_for(client, running_id, {"running"}, timeout_s=60)
        before = {j["id"]: j["status"] for j in client.get("/train").json()["jobs"]}

    api = next(p for p in s.procs if p.name == "api")
    assert s.kill(api, signal.SIGTERM) in {0, -signal.SIGTERM}  # uvicorn: orderly shutdown
    row = ModelVersions(Database(f"sqlite:///{s.volume / 'ganserve.db'}")).get("e2e-kept", 2)
    assert row is not None
    weights = s.volume / row.location / "model.safetensors"  # the stack's storage: the volume (the default)
    weights.write_bytes(weights.read_bytes()[:1000])  # the newest version, truncated while no API runs
    new_api = s.start_api("api2")
    s.wait_healthy()

    with s.client() as client:
        after = {j["id"]: j["status"] for j in client.get("/train").json()["jobs"]}
        assert set(after) == set(before) == {first, second, running_id}
        assert after[first] == after[second] == "succeeded"
        assert {"e2e-kept"} <= model_names(client)
        assert client.get("/models/e2e-kept").json()["versions"] == [1, 2]

        r = client.get("/generate", params={"model": "e2e-kept", "seed": 3})
        assert r.status_code == 200 and r.headers["x-model-version"] == "1" and r.content == v1.content
        assert "e2e-kept version 2 (volume) cannot be loaded and is skipped" in new_api.text()
        assert "SHA-256" in new_api.text()

        job, _ = wait_for(client, running_id, {"succeeded"}, timeout_s=60)
        assert job["attempts"] == 1 and job["workers_lost"] == 0  # the new API's reaper saw it alive
        assert "e2e-across-api-restart" in model_names(client)
