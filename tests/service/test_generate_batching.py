"""/generate's concurrent requests share the render process's forwards and still get the bytes each would get
alone; a request refused with a 4xx runs no forward.

Deterministic batching without timing: the app waits up to 30 s for a full forward, and each group of
concurrent requests adds up to exactly one forward's rows, each request less than that: so no forward can run
before the group's last request has arrived, and then exactly one runs."""

import base64
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from svc_support import AUTH, DEFAULT_MODEL, publish_conditional_model, publish_madgan_model

from service.serving.batching import Answer, Batching, Request, Seeds

JSON = {"accept": "application/json"}
LONG_WAIT_MS = 30_000.0  # longer than any test: a forward never runs short


def concurrently(client: TestClient, asks: list[dict]) -> list[list[bytes]]:
    """GET every ask at once (JSON: one PNG per seed); the PNGs of each."""

    def get(params: dict) -> list[bytes]:
        r = client.get("/generate", params=params, headers=JSON)
        assert r.status_code == 200, r.text
        return [base64.b64decode(s) for s in r.json()["images"]]

    with ThreadPoolExecutor(len(asks)) as pool:
        return list(pool.map(get, asks))


def alone(client: TestClient, ask: dict) -> list[bytes]:
    """The PNGs of the ask's seeds, each rendered by itself (service/serving/batching.py, in this process)."""
    registry = client.app.state.ganserve.registry  # type: ignore[attr-defined]
    model = registry.get(ask["model"])
    pngs = []
    for seed in range(ask["seed"], ask["seed"] + ask["count"]):
        b = Batching(registry.get, model.batch_rows, 0.0)
        labels = model.labels_for([seed], ask.get("label"))
        b.add(Request(0, model.name, model.version, Seeds([seed]), labels, model.generators_for([seed]), "pngs"))
        (outcome,) = b.render().outcomes
        assert isinstance(outcome, Answer) and isinstance(outcome.output, list)
        pngs += outcome.output
    return pngs


def forwards(client: TestClient) -> tuple[int, float | None]:
    stats = client.get("/stats").json()
    return stats["forwards"], stats["mean_batch_rows"]


def test_concurrent_requests_share_a_forward_and_get_the_bytes_of_single_requests(
    settings, make_app, publish_model
) -> None:
    publish_model()
    publish_conditional_model(settings)
    publish_madgan_model(settings)
    groups = [  # 16 rows each: one forward
        [{"seed": 0, "count": 1}, {"seed": 1000, "count": 7}, {"seed": 2000, "count": 8}],
        [{"seed": 10, "count": 5, "label": 2}, {"seed": 20, "count": 6, "label": 0}, {"seed": 30, "count": 5}],
        [{"seed": 40, "count": 7}, {"seed": 50, "count": 9}],
    ]
    with TestClient(make_app(batch_wait_ms=LONG_WAIT_MS, png_cache_size=0), headers=AUTH) as c:
        for name, asks in zip((DEFAULT_MODEL, "cond", "mad"), groups, strict=True):
            asks = [{**a, "model": name} for a in asks]
            got = concurrently(c, asks)
            for ask, images in zip(asks, got, strict=True):
                assert images == alone(c, ask), ask
        assert forwards(c) == (3, 16.0)


def test_a_rejected_request_runs_no_forward(served: TestClient) -> None:
    before, _ = forwards(served)
    for r in (
        served.post("/generate", json={"latent": [0.0] * 3}),
        served.get("/generate", params={"seed": 1, "label": 0}),
        served.get("/generate", params={"seed": 1, "count": 65}),
        served.get("/interpolate", params={"from": 1, "to": 2, "label": 0}),
        served.get("/generate", params={"model": "ring", "seed": 1}),
    ):
        assert r.status_code == 422
    assert forwards(served)[0] == before
