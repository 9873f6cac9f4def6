"""Who may read `/metrics` and `/stats`, the /metrics port, and what a flood of them or of `/readyz` costs the
database (service/api/routes/ops.py, service/api/routes/health.py, service/telemetry.py)."""

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from svc_support import AUTH, DEFAULT_MODEL, GENERATE_KEY, bearer, client_on
from typer.testing import CliRunner

from core.db import Database
from core.evaluations import EvaluateRequest, EvaluationStore
from core.jobs import JobStore
from core.records import JobStatus
from core.settings import Settings
from core.train_config import TrainConfig
from core.workers import WorkerStore
from ganserve.cli import app as cli
from ganserve.cli.processes import metrics_port_conflict
from service.api.routes.health import expire_probes, probes
from service.state import app_state
from service.telemetry import Snapshot, read_jobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- access -------------------------------------------------------------------------------------------


def test_anonymous_metrics_is_401_naming_the_scope_and_the_settings_that_open_it(anon: TestClient) -> None:
    r = anon.get("/metrics")
    assert r.status_code == 401 and r.headers["content-type"] == "application/json", r.text
    body = r.json()
    assert body["error"] == "api_key_required" and body["detail"]["required_scope"] == "admin"
    assert body["detail"]["settings"] == ["GANSERVE_METRICS_PUBLIC", "GANSERVE_METRICS_PORT"]
    assert "`admin`" in body["message"] and "GANSERVE_METRICS_PUBLIC=true" in body["message"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_a_key_without_admin_is_403_and_an_admin_key_scrapes(client: TestClient) -> None:
    r = client_on(client, headers=bearer(GENERATE_KEY)).get("/metrics")
    assert r.status_code == 403 and r.json()["detail"]["required_scope"] == "admin", r.text
    assert "GANSERVE_METRICS_PORT" in r.json()["message"]
    scrape = client.get("/metrics")  # the admin key
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    assert 'ganserve_jobs{status="queued"} 0.0' in scrape.text


def test_stats_needs_an_admin_key(client: TestClient, anon: TestClient) -> None:
    r = anon.get("/stats")
    assert r.status_code == 401 and r.json()["detail"]["required_scope"] == "admin"
    assert client_on(client, headers=bearer(GENERATE_KEY)).get("/stats").status_code == 403
    assert client.get("/stats").status_code == 200
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    assert "/stats" in paths and "/metrics" not in paths
    assert paths["/stats"]["get"]["security"]  # documented as keyed


def test_metrics_public_opens_metrics_to_anonymous_scrapers_limited_per_address(
    make_app: Callable[..., FastAPI], publish_model: Callable[..., int]
) -> None:
    publish_model(DEFAULT_MODEL)
    app = make_app(metrics_public=True, rate_limit_per_ip_per_min=2)
    with TestClient(app, client=("203.0.113.20", 1)) as anon:
        assert [anon.get("/metrics").status_code for _ in range(3)] == [200, 200, 429]
        assert anon.get("/stats").status_code == 401  # /stats stays keyed: it names every tenant's jobs
        assert anon.get("/metrics", headers=AUTH).status_code == 200  # a key: its own count, not the address's
        assert anon.get("/metrics", headers=bearer(GENERATE_KEY)).status_code == 200  # any valid key, when open
        assert anon.get("/metrics", headers=bearer("gsk_not-a-key")).status_code == 401  # a wrong one, never


def test_the_metrics_port_serves_without_a_key_while_the_app_runs(
    make_app: Callable[..., FastAPI], publish_model: Callable[..., int]
) -> None:
    publish_model(DEFAULT_MODEL)
    port = free_port()
    app = make_app(metrics_port=port)
    with TestClient(app) as api:
        assert api.get("/metrics").status_code == 401  # the API's port is still keyed
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert r.status_code == 200 and 'ganserve_jobs{status="queued"} 0.0' in r.text
        assert "ganserve_http_requests_total" in r.text  # the same registry: this process's request counts
    with pytest.raises(httpx.ConnectError):  # stopped with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_metrics_port_in_use_fails_the_start_naming_the_setting(
    make_app: Callable[..., FastAPI], publish_model: Callable[..., int]
) -> None:
    publish_model(DEFAULT_MODEL)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        app = make_app(metrics_port=held.getsockname()[1])
        with pytest.raises(RuntimeError, match="GANSERVE_METRICS_PORT: cannot serve /metrics"), TestClient(app):
            pass


def test_ganserve_api_refuses_a_metrics_port_with_several_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    started: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(a))
    for name, value in {"WORKERS": "4", "METRICS_PORT": "9100", "PORT": "8000"}.items():
        monkeypatch.setenv(f"GANSERVE_{name}", value)
    result = CliRunner().invoke(cli, ["api"], prog_name="ganserve")
    assert result.exit_code == 2 and started == []
    assert "GANSERVE_METRICS_PORT=9100" in result.output and "GANSERVE_WORKERS=4" in result.output
    assert metrics_port_conflict(Settings(_env_file=None, workers=1, metrics_port=9100)) is None  # type: ignore[call-arg]


# --- cost: one read of the database a second, whatever the request rate --------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spy(monkeypatch: pytest.MonkeyPatch, obj: object, name: str, calls: dict[str, int], label: str) -> None:
    """Count `obj.name(...)` calls in `calls[label]`, still calling it."""
    real = getattr(obj, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[label] = calls.get(label, 0) + 1
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, counted)


def test_metrics_stats_and_readyz_read_the_jobs_once_a_second_whatever_the_rate(client: TestClient) -> None:
    state = app_state(client.app)  # type: ignore[arg-type]
    state.jobs.create(config=TrainConfig(model_name="m"))
    snapshot = state.metrics.jobs
    assert isinstance(snapshot, Snapshot)
    clock, reads = Clock(), []
    read = snapshot.read
    snapshot.read = lambda: reads.append(clock.now) or read()  # the store calls of one read: the test below
    snapshot.clock = clock
    snapshot.expire()

    for _ in range(10):
        assert client.get("/metrics").status_code == 200
        assert client.get("/stats").json()["jobs"]["queued"] == 1
        assert client.get("/readyz").status_code in (200, 503)  # 503 while the render process loads
    assert len(reads) == 1  # one read for all 30 requests

    state.jobs.create(config=TrainConfig(model_name="m"))
    assert client.get("/stats").json()["jobs"]["queued"] == 1  # the snapshot, at most a second old
    clock.now += 1.0
    assert client.get("/stats").json()["jobs"]["queued"] == 2
    for _ in range(5):
        client.get("/metrics")
    assert len(reads) == 2  # exactly one more


def test_a_read_counts_by_status_and_reads_only_running_and_queued_records(
    sqlite_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the history (here 3 finished jobs, 2 evaluations), one read is a COUNT per status and the
    running and queued records: never every record, never a record fetched one by one."""
    jobs, evaluations = JobStore(sqlite_db), EvaluationStore(sqlite_db, tmp_path / "evaluations")
    workers = WorkerStore(sqlite_db, heartbeat_s=10.0)
    for status in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.running, JobStatus.queued):
        jobs.update(jobs.create(config=TrainConfig(model_name="m")).id, status=status)
    for _ in range(2):
        evaluations.create(model="m", version=1, source="volume", stem="models/m/1", request=EvaluateRequest())
    calls: list[tuple[str, Any]] = []

    def spy_on(store: object, label: str, *names: str) -> None:
        for name in names:
            real = getattr(store, name)

            def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
                calls.append((f"{label}.{_name}", kwargs.get("status") if _name == "list" else None))
                return _real(*args, **kwargs)

            monkeypatch.setattr(store, name, counted)

    spy_on(jobs, "jobs", "list", "count", "get")
    spy_on(evaluations, "evaluations", "list", "count", "get")
    spy_on(workers, "workers", "list")
    snap = read_jobs(jobs, evaluations, workers)
    assert sorted(calls, key=str) == sorted(
        [("jobs.list", JobStatus.queued), ("jobs.list", JobStatus.running), ("workers.list", None)]
        + [("jobs.count", None)] * len(JobStatus)
        + [("evaluations.count", None)] * len(JobStatus),
        key=str,
    )
    assert snap.jobs == {s.value: 1 for s in JobStatus}
    assert snap.evaluations == {**{s.value: 0 for s in JobStatus}, "queued": 2}
    assert [r.status for r in snap.running] == [JobStatus.running]
    assert snap.waiting == {"any worker": 1} and snap.without_live_worker == 1  # no worker at all


def test_readyz_probes_the_database_and_storage_once_a_second(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = app_state(client.app)  # type: ignore[arg-type]
    cached = probes(client.app)  # type: ignore[arg-type]
    clock = Clock()
    cached.clock = clock
    expire_probes(client.app)  # type: ignore[arg-type]
    calls: dict[str, int] = {}
    spy(monkeypatch, state.db, "revision", calls, "revision")
    spy(monkeypatch, state.storage, "check", calls, "check")
    bodies = [client.get("/readyz").json() for _ in range(20)]
    assert calls == {"revision": 1, "check": 1}
    assert all((b.get("checks") or b["detail"])["database"]["ok"] for b in bodies)
    clock.now += 1.0
    client.get("/readyz")
    assert calls == {"revision": 2, "check": 2}


def test_a_failed_read_is_kept_for_the_second_too() -> None:
    """During a database outage a flood waits on one failing read a second, not one each."""
    clock, reads = Clock(), []

    def read() -> int:
        reads.append(clock.now)
        if len(reads) == 1:
            raise ConnectionError("the database does not answer")
        return len(reads)

    snapshot = Snapshot(read, max_age_s=1.0, clock=clock)
    for _ in range(3):
        with pytest.raises(ConnectionError, match="does not answer"):
            snapshot.get()
    assert len(reads) == 1
    clock.now += 1.0
    assert [snapshot.get() for _ in range(3)] == [2, 2, 2]
