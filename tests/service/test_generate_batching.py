"""/generate through the batcher: concurrent requests share forwards and still get the bytes that single
requests get; shutdown leaves no thread and no request hanging.

Deterministic batching without timing: the batching app waits up to 30 s for a full forward, and every group
of concurrent requests adds up to whole forwards, so each forward runs exactly when its last row arrives."""

import base64
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from svc_support import AUTH, publish_conditional_model, publish_madgan_model

from core.settings import BUNDLED_MODELS_DIR, Settings
from service.__main__ import api_command

JSON = {"accept": "application/json"}
LONG_WAIT_MS = 30_000.0  # longer than any test: a forward never runs short


def bundled_app(make_app: Callable[..., FastAPI], wait_ms: float) -> FastAPI:
    return make_app(
        bundled_models_dir=BUNDLED_MODELS_DIR, default_model="mnist-mlp", batch_wait_ms=wait_ms, png_cache_size=0
    )


def concurrently(client: TestClient, asks: list[dict]) -> list[list[bytes]]:
    """GET every ask at once (JSON: one PNG per seed); the PNGs of each."""

    def get(params: dict) -> list[bytes]:
        r = client.get("/generate", params=params, headers=JSON)
        assert r.status_code == 200, r.text
        return [base64.b64decode(s) for s in r.json()["images"]]

    with ThreadPoolExecutor(len(asks)) as pool:
        return list(pool.map(get, asks))


def singles(client: TestClient, ask: dict) -> list[bytes]:
    """The same images, one request per seed."""
    out = []
    for seed in range(ask["seed"], ask["seed"] + ask.get("count", 1)):
        r = client.get("/generate", params={**ask, "seed": seed, "count": 1})
        assert r.status_code == 200, r.text
        out.append(r.content)
    return out


def test_concurrent_requests_share_forwards_and_get_the_bytes_of_single_requests(make_app) -> None:
    asks = [{"seed": s, "count": c} for s, c in ((0, 1), (1000, 15), (2000, 16), (3000, 17), (4000, 15))]  # 64 rows
    app = bundled_app(make_app, LONG_WAIT_MS)
    with TestClient(app) as c, TestClient(bundled_app(make_app, 0.0)) as one_by_one:
        got = concurrently(c, asks)
        model = app.state.ganserve.registry.get("mnist-mlp")
        assert (
            app.state.ganserve.renderer.batchers.get(model).forwards == 4
        )  # 5 requests, 64 rows: 4 full forwards of 16
        for ask, images in zip(asks, got, strict=True):
            assert images == singles(one_by_one, ask), ask


def test_mixed_labels_and_generators_in_one_forward(settings, make_app) -> None:
    publish_conditional_model(settings.models_dir)
    publish_madgan_model(settings.models_dir)
    groups = {
        "cond": [{"seed": 10, "count": 5, "label": 2}, {"seed": 20, "count": 6, "label": 0}, {"seed": 30, "count": 5}],
        "mad": [{"seed": 40, "count": 7}, {"seed": 50, "count": 9}],
    }
    app = make_app(batch_wait_ms=LONG_WAIT_MS, png_cache_size=0)
    with TestClient(app, headers=AUTH) as c, TestClient(make_app(batch_wait_ms=0.0), headers=AUTH) as one_by_one:
        for name, asks in groups.items():
            asks = [{**a, "model": name} for a in asks]
            got = concurrently(c, asks)  # 16 rows: one forward
            assert app.state.ganserve.renderer.batchers.get(app.state.ganserve.registry.get(name)).forwards == 1
            for ask, images in zip(asks, got, strict=True):
                assert images == singles(one_by_one, ask), ask


def test_a_rejected_request_queues_nothing(client: TestClient) -> None:
    assert client.get("/generate", params={"seed": 1}).status_code == 200
    batcher = client.app.state.ganserve.renderer.batchers.get(client.app.state.ganserve.registry.get("tiny"))  # type: ignore[attr-defined]
    for r in (
        client.post("/generate", json={"latent": [0.0] * 3}),
        client.get("/generate", params={"seed": 1, "label": 0}),
        client.get("/generate", params={"seed": 1, "count": 65}),
    ):
        assert r.status_code == 422
    assert batcher.forwards == 1


def test_shutdown_stops_every_thread(app: FastAPI) -> None:
    before = set(threading.enumerate())
    with TestClient(app) as c:
        assert c.get("/generate", params={"seed": 3, "count": 4}).status_code == 200
        started = [t for t in threading.enumerate() if t not in before and t.name.startswith("ganserve-")]
        assert {t.name.split()[0].rstrip("_0123456789") for t in started} >= {"ganserve-batcher", "ganserve-cpu"}
    assert [t for t in started if t.is_alive()] == []


def test_a_request_queued_at_shutdown_gets_a_503(make_app, publish_model) -> None:
    publish_model()
    app = make_app(batch_wait_ms=LONG_WAIT_MS)  # the request waits for rows that never come
    batchers = app.state.ganserve.renderer.batchers
    submitted = threading.Event()
    submit = batchers.submit

    def spy(*args, **kwargs):
        future = submit(*args, **kwargs)
        submitted.set()
        return future

    batchers.submit = spy
    with TestClient(app) as c, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(c.get, "/generate", params={"seed": 1})
        assert submitted.wait(10)
        batchers.close()
        r = pending.result(10)
    assert r.status_code == 503
    assert r.json()["error"] == "shutting_down" and r.headers["retry-after"] == "1"


@pytest.mark.parametrize("workers", [1, 4])
def test_workers_setting_is_uvicorns_workers(workers: int) -> None:
    cmd = api_command(Settings(_env_file=None, workers=workers))  # type: ignore[call-arg]
    assert cmd[cmd.index("--workers") + 1] == str(workers)
