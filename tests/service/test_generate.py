import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from svc_support import DEFAULT_MODEL, LATENT_DIM

from service.main import create_app

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def test_seed_gives_a_png_with_headers(client: TestClient) -> None:
    r = client.get("/generate", params={"seed": 42})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert png_size(r.content) == (28, 28)
    assert r.headers["x-seed"] == "42"
    assert r.headers["x-model"] == DEFAULT_MODEL
    assert r.headers["x-model-version"] == "1"


def test_same_seed_same_bytes_even_across_app_instances(client: TestClient, make_app) -> None:
    first = client.get("/generate", params={"seed": 7}).content
    assert client.get("/generate", params={"seed": 7}).content == first
    assert client.post("/generate", json={"seed": 7}).content == first
    with TestClient(make_app()) as fresh:  # a fresh load of the same version
        assert fresh.get("/generate", params={"seed": 7}).content == first


def test_different_seeds_differ(client: TestClient) -> None:
    a = client.get("/generate", params={"seed": 1}).content
    b = client.get("/generate", params={"seed": 2}).content
    assert a != b


@pytest.mark.parametrize("method", ["get", "post"])
def test_random_seed_is_reported(client: TestClient, method: str) -> None:
    r = client.get("/generate") if method == "get" else client.post("/generate", json={})
    assert r.status_code == 200
    seed = int(r.headers["x-seed"])
    assert 0 <= seed <= 2**32 - 1
    assert client.get("/generate", params={"seed": seed}).content == r.content


def test_explicit_latent(client: TestClient) -> None:
    r = client.post("/generate", json={"latent": [0.5] * LATENT_DIM})
    assert r.status_code == 200
    assert png_size(r.content) == (28, 28)
    assert "x-seed" not in r.headers
    assert r.headers["x-model-version"] == "1"


def test_latent_of_the_wrong_size_is_422(client: TestClient) -> None:
    r = client.post("/generate", json={"latent": [0.0] * (LATENT_DIM + 1)})
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "validation_error"
    assert f"exactly {LATENT_DIM}" in body["message"] and f"got {LATENT_DIM + 1}" in body["message"]
    assert body["detail"][0]["loc"] == ["body", "latent"]


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_latent_is_422(client: TestClient, bad: str) -> None:
    latent = ", ".join(["0.0"] * (LATENT_DIM - 1) + [bad])
    r = client.post("/generate", content=f'{{"latent": [{latent}]}}', headers={"content-type": "application/json"})
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
def test_invalid_post_bodies_are_422(client: TestClient, body: dict) -> None:
    r = client.post("/generate", json=body)
    assert r.status_code == 422, r.text
    data = r.json()
    assert data["error"] == "validation_error" and data["message"]


@pytest.mark.parametrize(
    "params", [{"seed": "abc"}, {"seed": -1}, {"seed": 2**32}, {"count": 0}, {"count": 65}, {"model": "../x"}]
)
def test_invalid_queries_are_422(client: TestClient, params: dict) -> None:
    r = client.get("/generate", params=params)
    assert r.status_code == 422
    assert r.json()["error"] == "validation_error"


def test_validation_message_names_the_field(client: TestClient) -> None:
    assert client.get("/generate", params={"seed": "abc"}).json()["message"].startswith("query.seed: ")


def test_count_makes_one_grid(client: TestClient) -> None:
    r = client.get("/generate", params={"seed": 3, "count": 16})
    assert r.status_code == 200
    assert r.headers["x-seed"] == "3"
    assert png_size(r.content) == (4 * 30 + 2, 4 * 30 + 2)  # 4×4 tiles of 28 px with 2 px borders


def test_json_answer_has_one_png_per_seed(client: TestClient) -> None:
    r = client.get("/generate", params={"seed": 10, "count": 3}, headers={"accept": "application/json"})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == DEFAULT_MODEL and body["version"] == 1 and body["seeds"] == [10, 11, 12]
    images = [base64.b64decode(s) for s in body["images"]]
    assert all(png_size(img) == (28, 28) for img in images)
    # An image depends on its seed only, not on the batch it was made in.
    assert images[1] == client.get("/generate", params={"seed": 11}).content


def test_unknown_model_is_404_listing_the_known_ones(client: TestClient) -> None:
    r = client.get("/generate", params={"model": "nope"})
    assert r.status_code == 404
    body = r.json()
    assert body["error"] == "model_not_found"
    assert body["detail"]["available"] == [DEFAULT_MODEL]
    assert DEFAULT_MODEL in body["message"]


def test_unknown_version_is_404(client: TestClient) -> None:
    r = client.get("/generate", params={"version": 9})
    assert r.status_code == 404
    assert r.json()["error"] == "model_unavailable"


def test_missing_default_model_is_404_not_a_crash(settings, make_app) -> None:
    with TestClient(make_app()) as c:  # nothing published: startup must still succeed
        assert c.get("/healthz").status_code == 200
        r = c.get("/generate", params={"seed": 1})
        assert r.status_code == 404 and r.json()["detail"]["available"] == []


def test_module_app_loads_nothing_at_import() -> None:
    import service.main

    assert service.main.app.state.registry._cache == {}
    assert create_app is service.main.create_app
