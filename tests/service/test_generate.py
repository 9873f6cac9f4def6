import base64
import io

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from svc_support import AUTH, DEFAULT_MODEL, LATENT_DIM, NUM_CLASSES, NUM_GENERATORS, FakeTasks

from core.settings import Settings
from service.main import create_app
from training.latents import latents_from_seeds

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def test_seed_gives_a_png_with_headers(served: TestClient) -> None:
    r = served.get("/generate", params={"seed": 42})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert png_size(r.content) == (28, 28)
    assert r.headers["x-seed"] == "42"
    assert r.headers["x-model"] == DEFAULT_MODEL
    assert r.headers["x-model-version"] == "1"


def test_same_seed_same_bytes(served: TestClient) -> None:
    first = served.get("/generate", params={"seed": 7}).content
    assert served.get("/generate", params={"seed": 7}).content == first
    assert served.post("/generate", json={"seed": 7}).content == first


def test_a_fresh_app_on_the_same_volume_gives_the_same_bytes(served: TestClient, served_settings: Settings) -> None:
    """A restart: the models loaded afresh, by a new render process."""
    asks = [
        ("/generate", {"seed": 7}),
        ("/generate", {"seed": 7, "count": 5}),
        ("/generate", {"model": "cond", "seed": 5, "label": 2}),
        ("/generate", {"model": "mad", "seed": 4, "count": 3}),
        ("/interpolate", {"from": 7, "to": 8, "steps": 4, "format": "gif"}),
    ]
    before = [served.get(path, params=params) for path, params in asks]
    with TestClient(create_app(served_settings, FakeTasks()), headers=AUTH) as fresh:
        for (path, params), first in zip(asks, before, strict=True):
            again = fresh.get(path, params=params)
            assert again.status_code == first.status_code == 200 and again.content == first.content, params
            assert again.headers["etag"] == first.headers["etag"], params


def test_different_seeds_differ(served: TestClient) -> None:
    a = served.get("/generate", params={"seed": 1}).content
    b = served.get("/generate", params={"seed": 2}).content
    assert a != b


@pytest.mark.parametrize("method", ["get", "post"])
def test_random_seed_is_reported(served: TestClient, method: str) -> None:
    r = served.get("/generate") if method == "get" else served.post("/generate", json={})
    assert r.status_code == 200
    seed = int(r.headers["x-seed"])
    assert 0 <= seed <= 2**32 - 1
    assert served.get("/generate", params={"seed": seed}).content == r.content


def test_explicit_latent(served: TestClient) -> None:
    r = served.post("/generate", json={"latent": [0.5] * LATENT_DIM})
    assert r.status_code == 200
    assert png_size(r.content) == (28, 28)
    assert "x-seed" not in r.headers
    assert r.headers["x-model-version"] == "1"


def test_latent_of_the_wrong_size_is_422(served: TestClient) -> None:
    r = served.post("/generate", json={"latent": [0.0] * (LATENT_DIM + 1)})
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "validation_error"
    assert f"exactly {LATENT_DIM}" in body["message"] and f"got {LATENT_DIM + 1}" in body["message"]
    assert body["detail"][0]["loc"] == ["body", "latent"]


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_latent_is_422(served: TestClient, bad: str) -> None:
    latent = ", ".join(["0.0"] * (LATENT_DIM - 1) + [bad])
    r = served.post("/generate", content=f'{{"latent": [{latent}]}}', headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"] == "validation_error"


@pytest.mark.parametrize(
    "body",
    [
        {"seed": 1, "latent": [0.0] * LATENT_DIM},
        {"latent": [0.0] * LATENT_DIM, "count": 4},
        {"seed": 1, "count": 100000},
        {"seed": 1, "count": 0},
        {"seed": -1},
        {"seed": 2**32},
        {"seed": 2**32 - 2, "count": 4},
        {"seed": 1, "colour": "red"},
        {"seed": 1, "model": "../../etc"},
        {"seed": 1, "version": 0},
    ],
)
def test_invalid_post_bodies_are_422(served: TestClient, body: dict) -> None:
    r = served.post("/generate", json=body)
    assert r.status_code == 422, r.text
    data = r.json()
    assert data["error"] == "validation_error" and data["message"]


@pytest.mark.parametrize(
    "params", [{"seed": "abc"}, {"seed": -1}, {"seed": 2**32}, {"count": 0}, {"count": 65}, {"model": "../x"}]
)
def test_invalid_queries_are_422(served: TestClient, params: dict) -> None:
    r = served.get("/generate", params=params)
    assert r.status_code == 422
    assert r.json()["error"] == "validation_error"


def test_validation_message_names_the_field(served: TestClient) -> None:
    assert served.get("/generate", params={"seed": "abc"}).json()["message"].startswith("query.seed: ")


def test_count_makes_one_grid(served: TestClient) -> None:
    r = served.get("/generate", params={"seed": 3, "count": 16})
    assert r.status_code == 200
    assert r.headers["x-seed"] == "3"
    assert png_size(r.content) == (4 * 30 + 2, 4 * 30 + 2)  # 4×4 tiles of 28 px with 2 px borders


def test_json_answer_has_one_png_per_seed(served: TestClient) -> None:
    r = served.get("/generate", params={"seed": 10, "count": 3}, headers={"accept": "application/json"})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == DEFAULT_MODEL and body["version"] == 1 and body["seeds"] == [10, 11, 12]
    images = [base64.b64decode(s) for s in body["images"]]
    assert all(png_size(img) == (28, 28) for img in images)
    # An image depends on its seed only, not on the batch it was made in.
    assert images[1] == served.get("/generate", params={"seed": 11}).content


def test_unknown_model_is_404_listing_the_known_ones(client: TestClient) -> None:
    r = client.get("/generate", params={"model": "nope"})
    assert r.status_code == 404
    body = r.json()
    assert body["error"] == "model_not_found"
    assert body["detail"]["available"] == [DEFAULT_MODEL]
    assert DEFAULT_MODEL in body["message"]


def test_unknown_version_is_404(served: TestClient) -> None:
    r = served.get("/generate", params={"version": 9})
    assert r.status_code == 404
    assert r.json()["error"] == "model_unavailable"


def test_missing_default_model_is_404_not_a_crash(settings, make_app) -> None:
    with TestClient(make_app()) as c:  # nothing published: startup must still succeed
        assert c.get("/healthz").status_code == 200
        r = c.get("/generate", params={"seed": 1})
        assert r.status_code == 404 and r.json()["detail"]["available"] == []


def test_module_app_loads_nothing_at_import() -> None:
    import service.main

    assert service.main.app.state.ganserve.registry._cache == {}
    assert create_app is service.main.create_app


# --- conditional, MAD-GAN and toy models (the shared app's `cond`, `mad` and `ring`) ---------------------


def test_conditional_label_gives_deterministic_bytes(served: TestClient) -> None:
    params = {"model": "cond", "seed": 5, "label": 2}
    r = served.get("/generate", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["x-labels"] == "2" and png_size(r.content) == (28, 28)
    assert served.get("/generate", params=params).content == r.content
    assert served.post("/generate", json=params).content == r.content
    # The label is an input: another class from the same seed is another image.
    assert served.get("/generate", params={**params, "label": 0}).content != r.content


def test_conditional_without_label_uses_seed_mod_classes(served: TestClient) -> None:
    r = served.get("/generate", params={"model": "cond", "seed": 4, "count": 4}, headers={"accept": "application/json"})
    assert r.status_code == 200
    body = r.json()
    assert body["labels"] == [s % NUM_CLASSES for s in (4, 5, 6, 7)] and "generators" not in body
    assert r.headers["x-labels"] == "1,2,0,1"
    one = served.get("/generate", params={"model": "cond", "seed": 5, "label": 2}).content
    assert base64.b64decode(body["images"][1]) == one  # seed 5 → class 2 either way


def test_conditional_with_a_latent_needs_a_label(served: TestClient) -> None:
    r = served.post("/generate", json={"model": "cond", "latent": [0.1] * LATENT_DIM})
    assert r.status_code == 422 and "label" in r.json()["message"]
    ok = served.post("/generate", json={"model": "cond", "latent": [0.1] * LATENT_DIM, "label": 1})
    assert ok.status_code == 200 and ok.headers["x-labels"] == "1"


@pytest.mark.parametrize("method", ["get", "post"])
def test_label_out_of_range_is_422(served: TestClient, method: str) -> None:
    params = {"model": "cond", "seed": 1, "label": NUM_CLASSES}
    r = served.get("/generate", params=params) if method == "get" else served.post("/generate", json=params)
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "validation_error"
    assert f"0 … {NUM_CLASSES - 1}" in body["message"] and body["detail"][0]["loc"][-1] == "label"


@pytest.mark.parametrize("params", [{"label": -1}, {"label": "x"}])
def test_malformed_label_is_422(served: TestClient, params: dict) -> None:
    assert served.get("/generate", params={"model": "cond", **params}).status_code == 422


def test_label_on_an_unconditional_model_is_422(served: TestClient) -> None:
    for model in (DEFAULT_MODEL, "mad"):
        r = served.get("/generate", params={"model": model, "seed": 1, "label": 0})
        assert r.status_code == 422
        assert "not class-conditional" in r.json()["message"]


def test_unconditional_answers_have_no_new_fields(served: TestClient) -> None:
    r = served.get("/generate", params={"seed": 1}, headers={"accept": "application/json"})
    assert set(r.json()) == {"model", "version", "seeds", "images"}
    assert "x-labels" not in r.headers and "x-generators" not in r.headers


def test_madgan_seed_picks_the_generator(served: TestClient) -> None:
    r = served.get(
        "/generate",
        params={"model": "mad", "seed": 0, "count": 2 * NUM_GENERATORS},
        headers={"accept": "application/json"},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["generators"] == [s % NUM_GENERATORS for s in range(2 * NUM_GENERATORS)]
    assert r.headers["x-generators"] == ",".join(str(s % NUM_GENERATORS) for s in range(2 * NUM_GENERATORS))
    one = served.get("/generate", params={"model": "mad", "seed": NUM_GENERATORS + 1})
    assert one.headers["x-generators"] == "1"
    assert base64.b64decode(body["images"][NUM_GENERATORS + 1]) == one.content


def test_madgan_generator_depends_on_seed_mod_k(served: TestClient) -> None:
    """Seeds s and s + k use the same generator: rendering seed s + k's latent through generator s mod k
    reproduces it, and through another generator does not."""
    model = served.app.state.ganserve.registry.get("mad")  # type: ignore[attr-defined]
    s = 1
    latent = latents_from_seeds([s + NUM_GENERATORS], LATENT_DIM)
    served = model.render_seeds([s + NUM_GENERATORS])
    assert torch.equal(model.render(latent, generators=[s % NUM_GENERATORS]), served)
    assert not torch.equal(model.render(latent, generators=[(s + 1) % NUM_GENERATORS]), served)


def test_points_model_is_not_an_image_model(served: TestClient) -> None:
    for r in (
        served.get("/generate", params={"model": "ring", "seed": 1}),
        served.post("/generate", json={"model": "ring", "seed": 1}),
    ):
        assert r.status_code == 422
        body = r.json()
        assert body["error"] == "not_an_image_model"
        assert "ganserve sample ring --seeds 0-999 --out points.npy" in body["message"]


def test_models_list_describes_the_new_kinds(served: TestClient) -> None:
    models = {m["name"]: m for m in served.get("/models").json()["models"]}
    assert models["cond"]["conditional"] is True and models["cond"]["num_classes"] == NUM_CLASSES
    assert models["cond"]["kind"] == "image" and models["cond"]["architecture"] == "mlp"
    assert models["mad"]["num_generators"] == NUM_GENERATORS and models["mad"]["architecture"] == "mad-gan"
    assert models["ring"]["kind"] == "points" and models["ring"]["sample_shape"] == [2]
    assert models["ring"]["image_shape"] is None
    tiny = models[DEFAULT_MODEL]  # old-style metadata: defaults
    assert tiny["kind"] == "image" and tiny["conditional"] is False and tiny["num_generators"] is None
    detail = served.get("/models/cond").json()
    assert detail["version_info"][0]["num_classes"] == NUM_CLASSES


@pytest.mark.parametrize("count", [65, 2**32, 2**40])
def test_a_huge_count_without_a_seed_is_422_not_500(served: TestClient, count: int) -> None:
    """Found by schemathesis: the random seed was drawn before `count` was checked, and a count beyond the seed
    range made the draw itself fail (a 500)."""
    for r in (served.get("/generate", params={"count": count}), served.post("/generate", json={"count": count})):
        assert r.status_code == 422 and r.json()["error"] == "validation_error", r.text
