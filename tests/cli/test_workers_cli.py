"""The client and the CLI on workers and resources, against the real app in-process: `Client.workers()` and
`ganserve workers` read GET /workers; `ganserve train --gpus N` sends `resources`, prints the queue and what a
queued job waits for, and the server's 422 when no worker could run it."""

import json
from pathlib import Path

from click.testing import Result
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from core.workers import WorkerClass, WorkerStore
from ganserve.cli import app
from ganserve.client import Client
from service.state import app_state

SERVER = "http://ganserve.test"
BODY = {"model_name": "my-digits", "epochs": 1, "max_samples": 256}


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), prog_name="ganserve")


def store(http: TestClient) -> WorkerStore:
    state = app_state(http.app)
    return WorkerStore(state.db, state.settings.worker_heartbeat_s)


def job_file(tmp_path: Path) -> str:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(BODY))
    return str(path)


def test_the_client_and_the_cli_list_the_workers(http: TestClient, api: Client, use_api) -> None:
    store(http).advertise("gpu0-1@box", WorkerClass.gpu, [0, 1], ["evaluate", "gpu-2", "gpu-1"], "box", 7)
    (worker,) = api.workers()
    assert (worker.name, worker.worker_class, worker.devices, worker.live) == ("gpu0-1@box", "gpu", [0, 1], True)
    result = run("workers", "--server", SERVER)
    assert result.exit_code == 0, result.output
    assert "1 worker(s), 1 live" in result.stdout and "gpu0-1@box" in result.stdout
    assert "evaluate,gpu-2,gpu-1" in result.stdout


def test_train_with_gpus_sends_resources_and_says_what_the_job_waits_for(
    api: Client, use_api, sender, tmp_path: Path
) -> None:
    result = run("train", job_file(tmp_path), "--server", SERVER, "--no-follow", "--gpus", "2")
    assert result.exit_code == 0, result.output
    (job,) = api.jobs()
    assert job.resources is not None and (job.resources.gpus, job.resources.queue) == (2, "gpu-2")
    assert f"queued job {job.id}: model my-digits at" in result.stderr and "on queue gpu-2" in result.stderr
    assert "it waits for a gpu worker with ≥2 devices" in result.stderr
    assert job.waiting_for is not None and "≥2 devices" in job.waiting_for
    listed = run("jobs", "--server", SERVER)
    assert "no live worker can take it" in listed.stdout


def test_a_job_no_worker_could_run_is_the_servers_422(http: TestClient, use_api, tmp_path: Path) -> None:
    store(http).advertise("cpu@box", WorkerClass.cpu, [], ["evaluate", "cpu"], "box", 8)
    result = run("train", job_file(tmp_path), "--server", SERVER, "--no-follow", "--gpus", "1")
    assert result.exit_code == 1, result.output
    assert "no_worker_can_run_it" in result.stderr and "Only CPU workers are advertised" in result.stderr


def test_gpus_is_for_a_server_job(tmp_path: Path) -> None:
    result = run("train", job_file(tmp_path), "--gpus", "1")
    assert result.exit_code == 2 and "--gpus is for a job on a server" in result.stderr
