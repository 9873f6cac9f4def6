"""Models listing, probes, the error shape and the OpenAPI document."""

import os
import signal
import time

from fastapi import FastAPI
from fastapi.testclient import TestClient
from svc_support import DEFAULT_MODEL, LATENT_DIM, FakeBrokerCheck


def test_models_list(client: TestClient, publish_model) -> None:
    publish_model(DEFAULT_MODEL, weights_seed=3, epoch=4)
    publish_model("other")
    r = client.get("/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert set(models) == {DEFAULT_MODEL, "other"}
    tiny = models[DEFAULT_MODEL]
    assert tiny["latest_version"] == 2 and tiny["versions"] == [1, 2]
    assert tiny["latent_dim"] == LATENT_DIM and tiny["image_shape"] == [1, 28, 28]
    assert tiny["source"] == "volume"
    assert tiny["training"]["epoch"] == 4 and tiny["training"]["losses"] == {"d": 1.25, "g": 0.75}
    assert tiny["training"]["dataset"] == "mnist" and tiny["training"]["created_at"]


def test_model_detail_and_404(client: TestClient) -> None:
    r = client.get(f"/models/{DEFAULT_MODEL}")
    assert r.status_code == 200
    assert [v["version"] for v in r.json()["version_info"]] == [1]
    missing = client.get("/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"] == "model_not_found"
    assert missing.json()["detail"]["available"] == [DEFAULT_MODEL]


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def ready(client: TestClient, timeout_s: float = 60.0) -> dict:
    """/readyz once the render process has loaded its models (it starts with the app, unwaited for)."""
    deadline = time.monotonic() + timeout_s
    while (r := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, r.json()
        assert r.json()["detail"]["render"]["ok"] is False, r.json()  # only the render process may lag
        time.sleep(0.1)
    return r.json()


def test_readyz_ok(client: TestClient) -> None:
    checks = ready(client)["checks"]
    assert checks["broker"]["ok"] and checks["model"]["ok"] and checks["render"]["ok"]
    assert checks["database"]["ok"] and checks["storage"] == {"ok": True, "detail": "file"}


def test_readyz_starts_a_render_process_that_died(client: TestClient) -> None:
    """A dead render process is started again by the readiness probe, not only by the next /generate: an
    orchestrator that holds traffic back until /readyz says 200 would otherwise wait forever."""
    ready(client)
    renderer = client.app.state.ganserve.renderer  # type: ignore[attr-defined]
    first = renderer.pid
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (r := client.get("/readyz")).status_code != 200 or renderer.pid == first:
        assert time.monotonic() < deadline, f"no new render process: {r.json()}"
        time.sleep(0.1)
    assert ready(client)["checks"]["render"]["detail"] == f"render process {renderer.pid} ready"


def test_readyz_broker_down(client: TestClient, broker_check: FakeBrokerCheck) -> None:
    ready(client)
    broker_check.error = ConnectionError("Error 111 connecting to redis")
    r = client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["error"] == "not_ready" and "broker" in body["message"]
    assert body["detail"]["broker"]["ok"] is False and body["detail"]["model"]["ok"] is True


def test_readyz_without_default_model(make_app, broker_check) -> None:
    with TestClient(make_app()) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "model" in r.json()["message"]
        assert r.json()["detail"]["model"]["ok"] is False


def test_readyz_checks_the_pinned_default_version(make_app, publish_model, broker_check) -> None:
    """/readyz reports the version a request naming no model gets (GANSERVE_DEFAULT_MODEL_VERSION), not the
    newest: a newer one does not make it ready, a missing pinned one makes it not ready."""
    publish_model(DEFAULT_MODEL)
    publish_model(DEFAULT_MODEL)  # version 2: newer than the pin
    with TestClient(make_app(default_model_version=1)) as c:
        assert ready(c)["checks"]["model"]["detail"].startswith(f"{DEFAULT_MODEL} version 1 ")
    with TestClient(make_app(default_model_version=3)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["detail"]["model"]["ok"] is False


def test_real_broker_check_for_the_filesystem_broker(make_app, settings) -> None:
    from core.tasks import check_broker

    try:
        check_broker(settings)
        raise AssertionError("no broker folder yet, the check must fail")
    except RuntimeError as e:
        assert "does not exist" in str(e)
    (settings.broker_dir / "queue").mkdir(parents=True)
    assert "filesystem" in check_broker(settings)


def test_real_broker_check_for_a_dead_redis(settings) -> None:
    import redis

    from core.tasks import check_broker

    dead = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    try:
        check_broker(dead)
        raise AssertionError("expected a connection error")
    except (redis.RedisError, OSError):
        pass


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    r = client.get("/no/such/route")
    assert r.status_code == 404
    assert r.json()["error"] == "not_found" and "/no/such/route" in r.json()["message"]
    r = client.put("/generate")
    assert r.status_code == 405
    assert r.json()["error"] == "method_not_allowed"


def test_unexpected_errors_are_json_500(app: FastAPI) -> None:
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("bug")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    assert r.status_code == 500
    assert r.json()["error"] == "internal_error"


def test_openapi(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["info"]["title"] == "ganserve" and doc["info"]["version"]
    assert "RandomState(s).randn(latent_dim)" in doc["paths"]["/generate"]["get"]["description"]
    assert "image/png" in doc["paths"]["/generate"]["get"]["responses"]["200"]["content"]
    assert doc["components"]["schemas"]["GenerateRequest"].get("examples")
    assert client.get("/docs").status_code == 200
