"""End to end, over HTTP, against real processes: train through the queue, serve the result without a
restart, cancel running and queued jobs, and the `make run` launcher's embedded broker."""

import hashlib
import json
import os
import signal
import time

import httpx
import pytest
from e2e_support import FINISHED, PNG_MAGIC, TINY, model_names, submit, wait_for

from core.db import Database
from core.model_versions import ModelVersions

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_train_then_generate(stack):
    name = "e2e-digits"
    with stack.client() as client:
        job_id, location = submit(client, model_name=name, **TINY)
        assert client.get(location).json()["id"] == job_id

        job, seen = wait_for(client, job_id, {"succeeded"}, timeout_s=120)
        assert seen[0] in {"queued", "running"} and seen[-1] == "succeeded", seen
        assert job["progress"]["step"] == job["progress"]["total_steps"] > 0
        assert job["progress"]["epoch"] == job["progress"]["epochs"] == 1
        assert job["model"] == {"name": name, "version": 1}
        assert job["started_at"] and job["finished_at"] and job["error"] is None
        assert set(job["metrics"]) >= {"d_loss", "g_loss"}
        assert job["checkpoints"] and job["samples"]
        for stem in job["checkpoints"]:  # a checkpoint is a stem: <stem>.safetensors + <stem>.json
            assert not stem.startswith("/") and (stack.volume / f"{stem}.json").is_file(), stem
        for png in job["samples"]:
            assert not png.startswith("/") and (stack.volume / png).is_file(), png
        row = ModelVersions(Database(f"sqlite:///{stack.volume / 'ganserve.db'}")).get(name, 1)
        assert row is not None and (stack.volume / row.location / "model.safetensors").is_file()

        # Served at once, without restarting the API.
        assert name in model_names(client)
        first = client.get("/generate", params={"model": name, "seed": 7})
        assert first.status_code == 200, first.text
        assert first.headers["content-type"] == "image/png"
        assert first.content.startswith(PNG_MAGIC)
        again = client.get("/generate", params={"model": name, "seed": 7})
        assert again.content == first.content
        other = client.get("/generate", params={"model": name, "seed": 8})
        assert other.status_code == 200 and other.content != first.content


def test_cancel_running_and_queued_jobs(stack):
    with stack.client() as client:
        long = {"dataset": "mnist", "epochs": 10_000, "max_samples": 256, "batch_size": 64}
        running_id, _ = submit(client, model_name="e2e-cancel-running", **long)
        wait_for(client, running_id, {"running"}, timeout_s=60)
        queued_id, _ = submit(client, model_name="e2e-cancel-queued", **TINY)  # behind it: one worker, solo

        r = client.delete(f"/train/{queued_id}")
        assert r.status_code in {200, 202}, r.text
        deadline = time.monotonic() + 60  # the running one is cancelled once it has a checkpoint, which it keeps
        while not client.get(f"/train/{running_id}").json()["checkpoints"]:
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.1)
        r = client.delete(f"/train/{running_id}")
        assert r.status_code in {200, 202}, r.text

        t0 = time.monotonic()
        job, _ = wait_for(client, running_id, {"cancelled"}, timeout_s=30)
        print(f"running job cancelled {time.monotonic() - t0:.1f} s after DELETE")
        assert job["model"] is None and job["finished_at"]
        assert job["checkpoints"] and job["progress"]["step"] > 0
        for stem in job["checkpoints"]:  # kept, intact: the weights match the SHA-256 their JSON records
            meta = json.loads((stack.volume / f"{stem}.json").read_text())
            digest = hashlib.sha256((stack.volume / f"{stem}.safetensors").read_bytes()).hexdigest()
            assert digest == meta["sha256"] and meta["epoch"] <= job["progress"]["epoch"], stem

        # A job after both in the queue succeeds, so the worker has seen the queued job's message by then.
        after_id, _ = submit(client, model_name="e2e-after-cancel", **TINY)
        wait_for(client, after_id, {"succeeded"}, timeout_s=120)
        queued, _ = wait_for(client, queued_id, {"cancelled"}, timeout_s=5)
        assert queued["started_at"] is None, "a job cancelled while queued must never start"
        assert queued["progress"] is None or queued["progress"]["step"] == 0

        names = model_names(client)
        assert "e2e-cancel-running" not in names and "e2e-cancel-queued" not in names
        assert "e2e-after-cancel" in names


def test_worker_shutdown_requeues_the_running_job(redis_url, start_stack, tmp_path):
    # A stack of its own, on another Redis database, so the module's worker does not take the job.
    s = start_stack(redis_url.rsplit("/", 1)[0] + "/1", tmp_path)
    try:
        with s.client() as client:
            long = {"dataset": "mnist", "epochs": 10_000, "max_samples": 256, "batch_size": 64}
            job_id, _ = submit(client, model_name="e2e-requeue", **long)
            wait_for(client, job_id, {"running"}, timeout_s=60)
            deadline = time.monotonic() + 30
            while client.get(f"/train/{job_id}").json()["progress"] is None and time.monotonic() < deadline:
                time.sleep(0.2)

            worker = s.procs[0]
            os.killpg(worker.popen.pid, signal.SIGTERM)  # what `docker compose stop` does
            assert worker.popen.wait(timeout=30) == 0, worker.text()
            job = client.get(f"/train/{job_id}").json()
            assert job["status"] == "queued" and job["started_at"] is None, job

            s.start_worker("worker2")  # the message went back to the queue: a new worker runs the job
            wait_for(client, job_id, {"running"}, timeout_s=90)
            assert client.delete(f"/train/{job_id}").status_code == 202
            wait_for(client, job_id, {"cancelled"}, timeout_s=30)
    finally:
        s.stop()


def test_launcher_falls_back_to_the_embedded_broker(launcher):
    log = launcher.procs[0]
    assert "using the embedded filesystem broker" in log.text(), log.text()
    with launcher.client() as client:
        job_id, _ = submit(client, model_name="e2e-embedded", **TINY)
        wait_for(client, job_id, {"succeeded"}, timeout_s=120)
        r = client.get("/generate", params={"model": "e2e-embedded", "seed": 1})
        assert r.status_code == 200 and r.content.startswith(PNG_MAGIC)
    assert (launcher.volume / "broker" / "queue").is_dir()

    # SIGTERM to the launcher alone stops the worker and the API with it.
    os.kill(log.popen.pid, signal.SIGTERM)
    assert log.popen.wait(timeout=30) == 0, log.text()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{launcher.base_url}/healthz", timeout=2)


def test_watch_a_job_then_evaluate_its_model(stack):
    """A job's metrics, curves and grids over HTTP, then an evaluation job on the worker whose result is listed
    under the model."""
    name = "e2e-watched"
    with stack.client() as client:
        job_id, _ = submit(client, model_name=name, **{**TINY, "epochs": 2, "eval_samples": 128, "eval_every": 1})
        wait_for(client, job_id, {"succeeded"}, timeout_s=180)

        metrics = client.get(f"/train/{job_id}/metrics").json()
        assert metrics["extractor"] == "mnist-cnn-v1" and metrics["evaluation_skipped"] is None
        assert [e["epoch"] for e in metrics["history"]] == [1, 2]
        for entry in metrics["history"]:
            ev = entry["evaluation"]
            assert ev["extractor"] == "mnist-cnn-v1" and ev["n_fake"] == 128 and ev["fid"] > 0
            assert set(entry["losses"]) >= {"d_loss", "g_loss"}
        for url in (f"/train/{job_id}/plots/losses.png", f"/train/{job_id}/plots/fid.png"):
            r = client.get(url)
            assert r.status_code == 200 and r.content.startswith(PNG_MAGIC), (url, r.text)
        grids = [client.get(f"/train/{job_id}/samples/{epoch}.png") for epoch in (1, 2)]
        assert all(g.status_code == 200 and g.content.startswith(PNG_MAGIC) for g in grids)
        assert grids[0].content != grids[1].content

        r = client.post(f"/models/{name}/evaluate", json={"n": 200})
        assert r.status_code == 202, r.text
        location = r.headers["location"]
        deadline = time.monotonic() + 120
        stages = set()
        while (ev := client.get(location).json())["status"] not in FINISHED:
            assert time.monotonic() < deadline, ev
            stages.add(ev["stage"])
            time.sleep(0.05)
        assert ev["status"] == "succeeded" and ev["stage"] is None, ev
        print(f"evaluation stages seen: {stages}")
        result = ev["result"]
        assert result["extractor"] == "mnist-cnn-v1" and result["n_fake"] == 200 and result["fid"] > 0
        nn_png = client.get(f"{location}/nearest-neighbours.png")
        assert nn_png.status_code == 200 and nn_png.content.startswith(PNG_MAGIC)
        listed = client.get(f"/models/{name}").json()["version_info"][0]["evaluations"]
        assert listed[0]["evaluation_id"] == ev["id"] and listed[0]["fid"] == result["fid"]
