"""The `ganserve` command's server verbs: images from a server (the API's bytes), training jobs submitted and
followed, tables, evaluations, errors as one readable line with exit code 1; and every verb's --help."""

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import typer
from click.testing import Result
from fastapi.testclient import TestClient
from svc_support import ADMIN_KEY, DEFAULT_MODEL
from typer.testing import CliRunner

from core.jobs import JobStore, PublishedModel
from core.records import JobStatus, now
from ganserve.cli import app, common
from ganserve.cli.common import parse_seeds
from ganserve.client import Client, Progress
from training.metrics import ImageMetrics

SERVER = "http://ganserve.test"
BODY = {"model_name": "my-digits", "epochs": 2, "max_samples": 256}


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), prog_name="ganserve")


def failed_readably(result: Result, code: int = 1) -> bool:
    """The exit code, and no traceback: typer.Exit, not an exception escaping the command."""
    return result.exit_code == code and isinstance(result.exception, SystemExit)


def jobs_store(http: TestClient) -> JobStore:
    return http.app.state.ganserve.jobs  # type: ignore[attr-defined]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- seeds ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seeds"),
    [
        ("0-3,10", [0, 1, 2, 3, 10]),
        ("0-15", list(range(16))),
        ("1,5,9", [1, 5, 9]),
        ("7", [7]),
        ("2-2", [2]),
        ("3,1-4", [3, 1, 2, 4]),  # in order, each once
        ("4294967295", [4294967295]),
    ],
)
def test_seeds_syntax(text: str, seeds: list[int]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "1-", "-1", "1,,2", "3-1", "1.5", "4294967296", "0-100000"])
def test_bad_seeds_are_refused(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_seeds(text)


def test_bad_seeds_are_a_usage_error(tmp_path: Path) -> None:
    result = run("generate", "--seeds", "5-3", "--out", str(tmp_path / "out"), "--server", SERVER)
    assert result.exit_code == 2 and "runs backwards" in result.output
    assert not (tmp_path / "out").exists()


# --- generate -----------------------------------------------------------------------------------------


def test_generate_without_a_server_points_to_sample(tmp_path: Path) -> None:
    result = run("generate", "--seeds", "0-2", "--out", str(tmp_path / "out"))
    assert failed_readably(result, 2)
    assert "--server" in result.stderr and "ganserve sample" in result.stderr
    assert not (tmp_path / "out").exists()


def test_remote_generate_writes_the_apis_bytes(http: TestClient, use_api, tmp_path: Path) -> None:
    result = run("generate", "--seeds", "0-2,20", "--out", str(tmp_path), "--server", SERVER, "--api-key", "k")
    assert result.exit_code == 0, result.output
    for seed in (0, 1, 2, 20):
        assert (tmp_path / f"seed{seed:04d}.png").read_bytes() == http.get("/generate", params={"seed": seed}).content
    assert use_api() == [(SERVER, "k")]


def test_server_and_key_come_from_the_environment(use_api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANSERVE_SERVER", SERVER)
    monkeypatch.setenv("GANSERVE_API_KEY", "from-env")
    assert run("generate", "--seeds", "1", "--out", str(tmp_path)).exit_code == 0
    assert use_api() == [(SERVER, "from-env")]


def test_remote_errors_print_the_servers_message(use_api, tmp_path: Path) -> None:
    result = run("generate", "--seeds", "0", "--out", str(tmp_path), "--server", SERVER, "--model", "nope")
    assert failed_readably(result)
    assert "error: model 'nope' does not exist" in result.stderr and "(HTTP 404 model_not_found)" in result.stderr


@pytest.mark.parametrize("how", ["option", "env"])
def test_connection_refused_is_exit_1_with_a_readable_message(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    if how == "env":
        monkeypatch.setenv("GANSERVE_SERVER", url)
    result = run("jobs", *(["--server", url] if how == "option" else []))
    assert failed_readably(result)
    assert f"error: no ganserve at {url}" in result.stderr and "start it with `ganserve serve`" in result.stderr
    assert "Traceback" not in result.output


# --- train, jobs, job, cancel ---------------------------------------------------------------------------


def write_config(tmp_path: Path, body: dict[str, Any]) -> str:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(body))
    return str(path)


def test_train_submits_and_prints_the_job_id(api: Client, use_api, sender, tmp_path: Path) -> None:
    result = run("train", write_config(tmp_path, BODY), "--server", SERVER, "--no-follow")
    assert result.exit_code == 0, result.output
    [job] = api.jobs()
    assert result.stdout.strip() == job.id and sender.sent == [job.id]
    assert f"queued job {job.id}: model my-digits" in result.stderr


def follow_to(http: TestClient, api: Client, final: dict[str, Any]) -> None:
    """Between the CLI's polls, run the only job as a worker would: one epoch, then `final`."""
    store = jobs_store(http)
    steps = iter(
        [
            {"status": JobStatus.running, "progress": Progress(epoch=1, epochs=2, step=2, total_steps=4).model_dump()},
            {**final, "metrics": {"d_loss": 1.25, "g_loss": 0.5}, "finished_at": now()},
        ]
    )
    api.sleep = lambda _s: store.update(store.list()[0].id, **next(steps))


def test_train_follows_the_job_to_its_end(http: TestClient, api: Client, use_api, tmp_path: Path) -> None:
    follow_to(http, api, {"status": JobStatus.succeeded, "model": PublishedModel(name="my-digits", version=1)})
    result = run("train", write_config(tmp_path, BODY), "--server", SERVER, "--poll", "0.1")
    assert result.exit_code == 0, result.output
    job_id = api.jobs()[0].id
    assert result.stdout.splitlines()[0] == job_id
    assert f"job {job_id} succeeded: published my-digits version 1" in result.stderr
    assert "d_loss" in result.stdout and "1.2500" in result.stdout  # the final losses' table


def test_a_failed_job_exits_1_with_its_reason(http: TestClient, api: Client, use_api, tmp_path: Path) -> None:
    follow_to(http, api, {"status": JobStatus.failed, "error": "dataset mnist not found in /data"})
    result = run("train", write_config(tmp_path, BODY), "--server", SERVER, "--poll", "0.1")
    assert failed_readably(result)
    assert "failed" in result.stderr and "dataset mnist not found in /data" in result.stderr


def test_an_invalid_job_is_the_servers_422(use_api, tmp_path: Path) -> None:
    result = run("train", write_config(tmp_path, {"model_name": "x", "epochs": 0}), "--server", SERVER)
    assert failed_readably(result)
    assert "body.epochs" in result.stderr and "HTTP 422 validation_error" in result.stderr


def test_a_file_that_is_not_json_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text("{not json")
    result = run("train", str(path), "--server", SERVER)
    assert failed_readably(result, 2) and "cannot read" in result.stderr


def test_jobs_job_and_cancel(api: Client, use_api) -> None:
    job = api.train(BODY)
    listed = run("jobs", "--server", SERVER)
    assert listed.exit_code == 0, listed.output
    assert job.id in listed.stdout and "queued" in listed.stdout and "my-digits" in listed.stdout
    shown = run("job", job.id, "--server", SERVER)
    assert shown.exit_code == 0 and job.id in shown.stdout
    cancelled = run("cancel", job.id, "--server", SERVER)
    assert cancelled.exit_code == 0 and f"job {job.id}: cancelled" in cancelled.stderr
    assert api.job(job.id).status == "cancelled"
    again = run("cancel", job.id, "--server", SERVER)
    assert failed_readably(again) and "already finished with status cancelled" in again.stderr


def test_jobs_without_a_key_is_the_servers_401(http: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "connect", lambda server, api_key: Client(api_key=api_key, http=http))
    result = run("jobs", "--server", SERVER)
    assert failed_readably(result) and "needs an API key with scope `train`" in result.stderr


# --- models, evaluate -------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "server"])
def test_models_table(where: str, use_api) -> None:
    result = run("models", *(["--server", SERVER] if where == "server" else []))
    assert result.exit_code == 0, result.output
    assert DEFAULT_MODEL in result.stdout and "volume" in result.stdout and "1×28×28" in result.stdout
    assert use_api() == ([(SERVER, None)] if where == "server" else [])


def test_evaluate_submits_follows_and_prints_the_metrics(http: TestClient, api: Client, use_api) -> None:
    metrics = ImageMetrics(
        extractor="mnist-cnn-v1",
        n_fake=500,
        n_real=500,
        fid=41.5,
        kid_mean=0.05,
        kid_std=0.01,
        inception_score=8.25,
        inception_score_std=0.1,
        precision=0.8,
        recall=0.5,
        k=3,
        classes_covered=10,
        num_classes=10,
        class_kl=0.02,
        class_histogram=(0.1,) * 10,
        nn_pixel=9.5,
        nn_feature=3.0,
    )
    store = http.app.state.ganserve.evaluations  # type: ignore[attr-defined]

    def worker(_s: float) -> None:
        [record] = store.list()
        store.update(record.id, status=JobStatus.succeeded, result=metrics.to_dict(), finished_at=now())

    api.sleep = worker
    result = run("evaluate", DEFAULT_MODEL, "--n", "500", "--server", SERVER, "--api-key", ADMIN_KEY)
    assert result.exit_code == 0, result.output
    assert "41.500" in result.stdout and "10/10" in result.stdout and "mnist-cnn-v1" in result.stdout


def test_evaluate_refused_by_the_server(use_api) -> None:
    result = run("evaluate", DEFAULT_MODEL, "--n", "50", "--server", SERVER)
    assert failed_readably(result) and "body.n" in result.stderr


def test_evaluate_takes_name_colon_version_for_a_server(api: Client, use_api) -> None:
    result = run("evaluate", f"{DEFAULT_MODEL}:1", "--n", "500", "--server", SERVER, "--no-follow")
    assert result.exit_code == 0, result.output
    assert f"of {DEFAULT_MODEL} version 1" in result.stderr and len(result.stdout.strip()) == 32
    refused = run("evaluate", "runs/some-run", "--server", SERVER)
    assert failed_readably(refused, 2) and "NAME or NAME:VERSION" in refused.stderr


# --- every verb ---------------------------------------------------------------------------------------------


def verbs() -> list[list[str]]:
    group = typer.main.get_group(app)
    found = []
    for name, command in group.commands.items():
        found.append([name])
        found += [[name, sub] for sub in getattr(command, "commands", {})]
    return found


def test_every_verb_has_help() -> None:
    found = verbs()
    assert {" ".join(v) for v in found} >= {
        "serve", "api", "worker", "train", "sample", "evaluate", "classifier", "generate", "interpolate",
        "jobs", "job", "cancel", "models", "keys", "keys create", "keys list", "keys revoke",
        "datasets", "datasets upload", "datasets list", "datasets show", "datasets delete",
    }  # fmt: skip
    for verb in found:
        result = run(*verb, "--help")
        assert result.exit_code == 0 and "Usage: ganserve " + " ".join(verb) in result.output, verb
