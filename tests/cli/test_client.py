"""ganserve.client against the real app, in-process: same bytes as the raw API, typed answers, the server's
errors as GanserveError, and the polling of jobs and evaluations."""

import socket
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from svc_support import DEFAULT_MODEL, LATENT_DIM, TRAIN_KEY

from core.evaluations import EvaluationRecord, EvaluationStore
from core.jobs import JobStore, PublishedModel
from core.records import FINISHED, JobStatus, now
from core.train_config import TrainConfig
from core.workers import WorkerInfo
from ganserve.client import (
    MAX_SEED,
    TERMINAL,
    Client,
    Evaluation,
    GanserveError,
    Job,
    ModelDetail,
    ModelSummary,
    ModelVersion,
    Progress,
    ServerUnreachable,
    WaitTimeout,
    Worker,
)
from service.api.schemas import JobView, ModelVersionInfo
from service.api.schemas import ModelDetail as ServerModelDetail
from service.api.schemas import ModelSummary as ServerModelSummary
from training.latents import MAX_SEED as TRAINING_MAX_SEED

BODY = {"model_name": "my-digits", "epochs": 2, "max_samples": 256}


def jobs_store(http: TestClient) -> JobStore:
    return http.app.state.ganserve.jobs  # type: ignore[attr-defined]


def evaluations_store(http: TestClient) -> EvaluationStore:
    return http.app.state.ganserve.evaluations  # type: ignore[attr-defined]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- images -------------------------------------------------------------------------------------------


def test_generate_is_the_bytes_of_get_generate(api: Client, http: TestClient) -> None:
    image = api.generate(seed=5)
    raw = http.get("/generate", params={"seed": 5})
    assert image.png == raw.content and image.png.startswith(b"\x89PNG")
    assert (image.model, image.version, image.seed) == (DEFAULT_MODEL, 1, 5)
    assert image.labels is None and image.generators is None


def test_a_grid_and_a_version(api: Client, http: TestClient) -> None:
    image = api.generate(seed=3, count=4, model=DEFAULT_MODEL, version=1)
    assert image.png == http.get("/generate", params={"seed": 3, "count": 4, "version": 1}).content


def test_images_are_one_png_per_seed_each_equal_to_generate(api: Client) -> None:
    images = api.images(seed=10, count=3)
    assert [i.seed for i in images] == [10, 11, 12]
    assert [i.png for i in images] == [api.generate(seed=s).png for s in (10, 11, 12)]


def test_an_explicit_latent_is_posted(api: Client, http: TestClient) -> None:
    latent = [0.25] * LATENT_DIM
    image = api.generate(latent=latent)
    assert image.png == http.post("/generate", json={"latent": latent}).content
    assert image.seed is None


def test_random_seed_is_reported(api: Client) -> None:
    image = api.generate()
    assert image.seed is not None and api.generate(seed=image.seed).png == image.png


def test_save_writes_the_png(api: Client, tmp_path) -> None:
    image = api.generate(seed=1)
    assert image.save(tmp_path / "a.png").read_bytes() == image.png


# --- errors -------------------------------------------------------------------------------------------


def test_unknown_model_is_a_404_error_with_the_servers_code_and_message(api: Client) -> None:
    with pytest.raises(GanserveError) as e:
        api.generate(seed=1, model="nope")
    assert e.value.status == 404 and e.value.code == "model_not_found"
    assert "'nope' does not exist" in e.value.message and DEFAULT_MODEL in e.value.detail["available"]
    assert "HTTP 404 model_not_found" in str(e.value)


def test_invalid_input_is_a_422_error(api: Client) -> None:
    with pytest.raises(GanserveError) as e:
        api.generate(latent=[0.0] * (LATENT_DIM + 1))
    assert e.value.status == 422 and e.value.code == "validation_error"
    assert f"exactly {LATENT_DIM}" in e.value.message


def test_no_key_is_401(http: TestClient) -> None:
    with pytest.raises(GanserveError) as e:
        Client(http=http).jobs()
    assert e.value.status == 401 and e.value.code == "api_key_required" and "scope `train`" in e.value.message


def test_a_key_without_the_scope_is_403(http: TestClient) -> None:
    with pytest.raises(GanserveError) as e:
        Client(api_key=TRAIN_KEY, http=http).evaluate(DEFAULT_MODEL)
    assert e.value.status == 403


def test_connection_refused_says_how_to_start_a_server() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with Client(url) as api, pytest.raises(ServerUnreachable) as e:
        api.health()
    assert e.value.status is None
    assert f"no ganserve at {url}" in str(e.value) and "ganserve serve" in str(e.value)


def test_an_error_page_that_is_not_json_is_still_readable() -> None:
    def proxy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html><body>Bad Gateway</body></html>", headers={"Retry-After": "7"})

    with (
        httpx.Client(transport=httpx.MockTransport(proxy), base_url="http://gw") as http,
        pytest.raises(GanserveError) as e,
    ):
        Client(http=http).models()
    assert e.value.status == 502 and e.value.code == "http_502" and e.value.retry_after == 7.0
    assert "GET http://gw/models" in e.value.message and "Bad Gateway" in e.value.message


def test_the_key_comes_from_the_environment_as_a_bearer_token(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"status": "ok"})

    monkeypatch.setenv("GANSERVE_API_KEY", "gsk_from-env")
    with httpx.Client(transport=httpx.MockTransport(server), base_url="http://x") as http:
        assert Client(http=http).health().status == "ok"
        Client(api_key="gsk_given", http=http).health()
    assert seen == ["Bearer gsk_from-env", "Bearer gsk_given"]


def test_the_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Client().base_url == "http://127.0.0.1:8000"
    monkeypatch.setenv("GANSERVE_SERVER", "http://gpu-box:9000/")
    with Client() as api:
        assert api.base_url == "http://gpu-box:9000"


# --- models, health -------------------------------------------------------------------------------------


def test_models_and_model_are_typed(api: Client) -> None:
    [summary] = api.models()
    assert isinstance(summary, ModelSummary)
    assert (summary.name, summary.source, summary.versions, summary.latent_dim) == (DEFAULT_MODEL, "volume", [1], 8)
    detail = api.model(DEFAULT_MODEL)
    assert isinstance(detail, ModelDetail) and detail.version_info[0].version == 1
    assert detail.version_info[0].weights_sha256 and detail.training and detail.training.dataset == "mnist"


def test_health_and_readiness(api: Client) -> None:
    assert api.health().status == "ok"
    deadline = time.monotonic() + 60
    while True:  # the render process starts with the app, unwaited for: not ready until it has loaded
        try:
            ready = api.ready()
            break
        except GanserveError as e:
            assert "render" in str(e) and time.monotonic() < deadline, e
            time.sleep(0.1)
    assert ready.status == "ready" and ready.checks["model"].ok and ready.checks["render"].ok


# --- training jobs ----------------------------------------------------------------------------------------


def test_train_list_get_cancel(api: Client, sender) -> None:
    job = api.train(BODY)
    assert isinstance(job, Job) and job.status == "queued" and sender.sent == [job.id]
    assert job.config.model_name == "my-digits" and job.config.epochs == 2
    assert [j.id for j in api.jobs()] == [job.id]
    assert api.job(job.id) == job
    cancelled = api.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished
    with pytest.raises(GanserveError) as e:
        api.cancel(job.id)
    assert e.value.status == 409 and e.value.code == "job_finished"


def test_train_takes_a_train_config_and_an_idempotency_key(api: Client) -> None:
    config = TrainConfig(model_name="cfg-model", epochs=1, max_samples=128)
    first = api.train(config, idempotency_key="retry-1")
    again = api.train(config, idempotency_key="retry-1")
    assert again.id == first.id and first.config.model_name == "cfg-model"


def test_an_invalid_job_is_a_422_naming_the_field(api: Client) -> None:
    with pytest.raises(GanserveError) as e:
        api.train({"model_name": "x", "epochs": 0})
    assert e.value.status == 422 and "body.epochs" in e.value.message


def test_unknown_job_is_404(api: Client) -> None:
    with pytest.raises(GanserveError) as e:
        api.job("0" * 32)
    assert e.value.status == 404 and e.value.code == "job_not_found"


def test_wait_polls_until_the_job_ends_and_reports_each_record(api: Client, http: TestClient) -> None:
    job = api.train(BODY)
    store = jobs_store(http)
    steps = iter(
        [
            {"status": JobStatus.running, "progress": Progress(epoch=1, epochs=2, step=2, total_steps=4)},
            {"status": JobStatus.running, "progress": Progress(epoch=2, epochs=2, step=4, total_steps=4)},
            {"status": JobStatus.succeeded, "model": PublishedModel(name="my-digits", version=1), "finished_at": now()},
        ]
    )
    sleeps: list[float] = []

    def step(seconds: float) -> None:  # the worker's part, between two polls
        sleeps.append(seconds)
        changes: dict[str, Any] = next(steps)
        if "progress" in changes:
            changes["progress"] = changes["progress"].model_dump()
        store.update(job.id, **changes)

    api.sleep = step
    seen: list[tuple[str, int | None]] = []
    done = api.wait(job.id, poll_s=0.5, on_progress=lambda j: seen.append((j.status, j.progress and j.progress.step)))
    assert done.status == "succeeded" and done.model and done.model.version == 1
    assert seen == [("queued", None), ("running", 2), ("running", 4), ("succeeded", 4)]
    assert sleeps == [0.5, 0.5, 0.5]


def test_wait_gives_up_after_its_timeout_and_the_job_goes_on(api: Client) -> None:
    job = api.train(BODY)
    with pytest.raises(WaitTimeout) as e:
        api.wait(job.id, timeout_s=0)
    assert e.value.detail == {"id": job.id, "status": "queued"} and "still queued" in e.value.message
    assert api.job(job.id).status == "queued"


# --- evaluations ------------------------------------------------------------------------------------------


def test_evaluate_then_follow_it_to_its_result(api: Client, http: TestClient, sender) -> None:
    evaluation = api.evaluate(DEFAULT_MODEL, n=500)
    assert isinstance(evaluation, Evaluation) and evaluation.status == "queued" and evaluation.version == 1
    assert sender.sent == [evaluation.id]
    assert api.evaluation(DEFAULT_MODEL, evaluation.id) == evaluation
    store = evaluations_store(http)

    def step(_seconds: float) -> None:
        store.update(evaluation.id, status=JobStatus.succeeded, result={"fid": 12.5}, finished_at=now())

    api.sleep = step
    stages: list[str] = []
    done = api.wait_evaluation(DEFAULT_MODEL, evaluation.id, on_progress=lambda e: stages.append(e.status))
    assert done.result == {"fid": 12.5} and stages == ["queued", "succeeded"]


def test_evaluating_an_unknown_model_is_404(api: Client) -> None:
    with pytest.raises(GanserveError) as e:
        api.evaluate("nope")
    assert e.value.status == 404 and e.value.code == "model_not_found"


# --- the client's models mirror the server's ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (ModelSummary, ServerModelSummary),
        (ModelDetail, ServerModelDetail),
        (ModelVersion, ModelVersionInfo),
        (Job, JobView),
        (Worker, WorkerInfo),
        (Evaluation, EvaluationRecord),
    ],
)
def test_every_field_of_the_clients_models_is_one_the_server_sends(ours: type, theirs: type) -> None:
    assert set(ours.model_fields) <= set(theirs.model_fields)


def test_statuses_and_seeds_agree_with_the_server() -> None:
    assert {s.value for s in FINISHED} == TERMINAL
    assert set(Job.model_fields["status"].annotation.__args__) == {s.value for s in JobStatus}
    assert MAX_SEED == TRAINING_MAX_SEED
