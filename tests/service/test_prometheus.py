"""Operations: `/metrics` (Prometheus), request ids, JSON logs and `/stats` (service/telemetry.py, routes/ops.py);
who may read them and what they cost: test_ops_access.py."""

import io
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from svc_support import AUTH, DEFAULT_MODEL

from core.evaluations import EvaluateRequest, EvaluationStore
from core.jobs import JobStore, Progress
from core.records import JobStatus
from core.train_config import TrainConfig
from service.telemetry import SNAPSHOT_MAX_AGE_S, JsonFormatter, Metrics, current_request_id, request_id_from

HEX_ID = re.compile(r"[0-9a-f]{32}")


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, its labels): value} of a Prometheus text exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def counts(client: TestClient, *names: tuple[str, dict[str, str]]) -> list[float]:
    text = client.get("/metrics").text
    return [value(text, name, **labels) or 0.0 for name, labels in names]


def test_requests_are_counted_by_route_template_never_by_raw_path(served: TestClient) -> None:
    counter = "ganserve_http_requests_total"
    names = [
        (counter, {"route": "/generate", "method": "GET", "status": "200"}),
        (counter, {"route": "/train/{job_id}", "method": "GET", "status": "404"}),
        (counter, {"route": "unmatched", "method": "GET", "status": "404"}),
        (counter, {"route": "/generate", "method": "other", "status": "405"}),
        ("ganserve_http_request_duration_seconds_count", {"route": "/generate", "method": "GET"}),
    ]
    before = counts(served, *names)
    assert served.get("/generate", params={"seed": 1}).status_code == 200
    assert served.get("/train/no-such-job").status_code == 404
    assert served.get("/no/such/path").status_code == 404
    assert served.request("BREW", "/generate").status_code == 405

    scrape = served.get("/metrics")
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    assert [a - b for a, b in zip(counts(served, *names), before, strict=True)] == [1, 1, 1, 1, 1]
    assert "no-such-job" not in scrape.text and "/no/such/path" not in scrape.text


def test_the_batch_rows_histogram_counts_each_forward(served: TestClient) -> None:
    names = [
        ("ganserve_generator_batch_rows_count", {}),
        ("ganserve_generator_batch_rows_sum", {}),
        ("ganserve_generator_batch_rows_bucket", {"le": "2.0"}),
        ("ganserve_generator_batch_rows_bucket", {"le": "4.0"}),
        ("ganserve_generate_images_total", {}),
    ]
    before = counts(served, *names)
    assert served.get("/generate", params={"seed": 7007, "count": 3}).status_code == 200
    # One forward of the request's 3 rows (padding not counted), 3 images.
    assert [a - b for a, b in zip(counts(served, *names), before, strict=True)] == [1, 3, 0, 1, 3]


def _job(store: JobStore, status: JobStatus, images_per_sec: float | None = None) -> str:
    record = store.create(config=TrainConfig(model_name="m"))
    progress = Progress(epochs=1, total_steps=10, step=4, fraction=0.4, images_per_sec=images_per_sec)
    store.update(record.id, status=status, progress=progress)
    return record.id


def test_jobs_and_evaluations_are_counted_from_the_database_a_second_after_the_last_read(
    sqlite_db, tmp_path: Path
) -> None:
    jobs, evaluations = JobStore(sqlite_db), EvaluationStore(sqlite_db, tmp_path / "evaluations")
    metrics = Metrics(jobs, evaluations)
    assert metrics.jobs is not None
    clock = [100.0]
    metrics.jobs.clock = lambda: clock[0]
    assert value(generate_latest(metrics.registry).decode(), "ganserve_jobs", status="queued") == 0

    _job(jobs, JobStatus.queued)
    _job(jobs, JobStatus.queued)
    fast = _job(jobs, JobStatus.running, images_per_sec=1234.5)
    _job(jobs, JobStatus.running)  # no throughput reported yet: no sample
    _job(jobs, JobStatus.failed)
    evaluations.create(model="m", version=1, source="volume", stem="models/m/1", request=EvaluateRequest())

    stale = generate_latest(metrics.registry).decode()  # within the second: the snapshot, not the database
    assert value(stale, "ganserve_jobs", status="queued") == 0
    clock[0] += SNAPSHOT_MAX_AGE_S
    text = generate_latest(metrics.registry).decode()  # written by "another process": read now
    counts = {s.value: value(text, "ganserve_jobs", status=s.value) for s in JobStatus}
    assert counts == {"queued": 2, "running": 2, "succeeded": 0, "failed": 1, "cancelled": 0}
    assert value(text, "ganserve_training_images_per_second", job=fast, model="m") == 1234.5
    assert sum(1 for name, _ in samples(text) if name == "ganserve_training_images_per_second") == 1
    assert value(text, "ganserve_evaluations", status="queued") == 1


def test_the_request_id_is_echoed_or_made(anon: TestClient) -> None:
    sent = "req-42.retry_1"
    assert anon.get("/healthz", headers={"X-Request-ID": sent}).headers["x-request-id"] == sent
    made = anon.get("/healthz").headers["x-request-id"]
    assert HEX_ID.fullmatch(made)
    assert anon.get("/healthz").headers["x-request-id"] != made
    # On an error answer too.
    assert anon.get("/no/such/path", headers={"X-Request-ID": sent}).headers["x-request-id"] == sent


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "semi;colon", "ünïcode", ""])
def test_an_unsafe_request_id_is_replaced(anon: TestClient, bad: str) -> None:
    got = anon.get("/healthz", headers={"X-Request-ID": bad.encode("utf-8")}).headers["x-request-id"]
    assert got != bad and HEX_ID.fullmatch(got)


def test_request_id_from_headers() -> None:
    assert request_id_from([(b"x-request-id", b"a" * 128)]) == "a" * 128
    assert HEX_ID.fullmatch(request_id_from([]))
    assert current_request_id() is None  # outside a request


def test_the_json_formatter_writes_one_parseable_object_per_line() -> None:
    record = logging.LogRecord("service.x", logging.ERROR, __file__, 1, "failed %s", ("here",), None)
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "ERROR" and parsed["logger"] == "service.x" and parsed["message"] == "failed here"
    assert "ValueError: boom" in parsed["exc"] and "request_id" not in parsed
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", parsed["time"])


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """What `service.*` loggers write through a JsonFormatter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("service")
    logger.addHandler(handler)
    try:
        yield out
    finally:
        logger.removeHandler(handler)


def test_json_logs_carry_the_request_id_and_an_access_line(
    make_app: Callable[..., FastAPI], publish_model: Callable[..., int], captured: io.StringIO
) -> None:
    publish_model(DEFAULT_MODEL)
    with TestClient(make_app(log_format="json"), headers=AUTH) as c:
        assert c.get("/train/no-such-job", headers={"X-Request-ID": "trace-me"}).status_code == 404
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "service.access"]
    assert len(access) == 1
    (line,) = access
    assert line["request_id"] == "trace-me" and line["level"] == "INFO"
    assert line["method"] == "GET" and line["route"] == "/train/{job_id}" and line["status"] == 404
    assert line["path"] == "/train/no-such-job" and line["duration_ms"] >= 0


def test_no_access_line_with_text_logs(client: TestClient, captured: io.StringIO) -> None:
    assert client.get("/healthz").status_code == 200
    assert "service.access" not in captured.getvalue()


def test_stats(client: TestClient, app: FastAPI) -> None:
    running = _job(app.state.ganserve.jobs, JobStatus.running, images_per_sec=99.0)
    _job(app.state.ganserve.jobs, JobStatus.succeeded)
    for seed in (1, 2):
        assert client.get("/generate", params={"seed": seed, "count": 2}).status_code == 200
    assert client.get("/generate", params={"seed": 1, "count": 2}).status_code == 200  # from the answer cache

    stats = client.get("/stats").json()
    (gen,) = [r for r in stats["requests"] if r["route"] == "/generate"]
    assert gen["method"] == "GET" and gen["count"] == 3 and gen["errors"] == 0
    assert 0 < gen["p50_ms"] <= gen["p99_ms"]
    assert stats["images_generated"] == 6 and stats["forwards"] == 2 and stats["mean_batch_rows"] == 2.0
    assert stats["models_loaded"] == [f"{DEFAULT_MODEL}:1"]
    assert stats["jobs"] == {"queued": 0, "running": 1, "succeeded": 1, "failed": 0, "cancelled": 0}
    (job,) = stats["running_jobs"]
    assert job["id"] == running and job["images_per_sec"] == 99.0 and job["fraction"] == 0.4
    assert stats["evaluations"]["queued"] == 0 and stats["uptime_s"] > 0
