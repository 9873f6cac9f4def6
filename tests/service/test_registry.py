"""Hot reload and corrupt checkpoints, through the API (the registry's clock is driven by the test)."""

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from svc_support import DEFAULT_MODEL, LATENT_DIM

from service.registry import ModelNotFound, ModelRegistry
from service.settings import Settings
from training.checkpoint import model_stem


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(client: TestClient) -> Clock:
    c = Clock()
    client.app.state.registry.clock = c  # type: ignore[attr-defined]
    return c


def test_new_model_published_after_startup_is_servable(client: TestClient, clock: Clock, publish_model) -> None:
    assert client.get("/generate", params={"model": "later"}).status_code == 404
    publish_model("later", weights_seed=5)
    r = client.get("/generate", params={"model": "later", "seed": 1})
    assert r.status_code == 200
    assert r.headers["x-model"] == "later" and r.headers["x-model-version"] == "1"


def test_new_version_becomes_latest_within_the_rescan_interval(client: TestClient, clock: Clock, publish_model) -> None:
    v1 = client.get("/generate", params={"seed": 1})
    assert v1.headers["x-model-version"] == "1"
    assert publish_model(DEFAULT_MODEL, weights_seed=99) == 2
    clock.now += 0.5  # still within the interval: the cached listing is trusted
    assert client.get("/generate", params={"seed": 1}).headers["x-model-version"] == "1"
    clock.now += 0.6
    v2 = client.get("/generate", params={"seed": 1})
    assert v2.headers["x-model-version"] == "2"
    assert v2.content != v1.content
    # An explicit version is always honoured, and a new one is found at once.
    assert client.get("/generate", params={"seed": 1, "version": 1}).content == v1.content
    assert publish_model(DEFAULT_MODEL, weights_seed=7) == 3
    assert client.get("/generate", params={"seed": 1, "version": 3}).headers["x-model-version"] == "3"


def test_new_version_is_picked_up_in_real_time(client: TestClient, publish_model) -> None:
    assert client.get("/generate", params={"seed": 1}).headers["x-model-version"] == "1"
    publish_model(DEFAULT_MODEL, weights_seed=99)
    client.app.state.registry.rescan_interval_s = 0.2  # type: ignore[attr-defined]  # keep the test fast
    time.sleep(0.25)
    assert client.get("/generate", params={"seed": 1}).headers["x-model-version"] == "2"


def corrupt(settings: Settings, name: str, version: int) -> None:
    path = model_stem(settings.models_dir, name, version).with_suffix(".safetensors")
    path.write_bytes(b"not a safetensors file")


def test_corrupt_new_version_keeps_the_previous_one(
    client: TestClient, clock: Clock, publish_model, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    good = client.get("/generate", params={"seed": 1}).content
    assert publish_model(DEFAULT_MODEL, weights_seed=99) == 2
    corrupt(settings, DEFAULT_MODEL, 2)
    clock.now += 2
    r = client.get("/generate", params={"seed": 1})
    assert r.status_code == 200 and r.headers["x-model-version"] == "1" and r.content == good
    assert any("cannot be loaded" in rec.getMessage() and "SHA-256" in rec.getMessage() for rec in caplog.records)
    explicit = client.get("/generate", params={"seed": 1, "version": 2})
    assert explicit.status_code == 404
    assert explicit.json()["error"] == "model_unavailable"
    assert "SHA-256" in explicit.json()["message"]


def test_model_with_only_corrupt_versions_is_404_with_the_reason(client: TestClient, publish_model, settings) -> None:
    publish_model("broken")
    corrupt(settings, "broken", 1)
    r = client.get("/generate", params={"model": "broken"})
    assert r.status_code == 404
    assert r.json()["error"] == "model_unavailable" and "version 1" in r.json()["message"]
    # Listing still works: metadata is intact even though the weights are not.
    assert client.get("/models/broken").status_code == 200


def test_volume_shadows_bundled_and_bundled_is_served(settings: Settings, publish_model) -> None:
    from svc_support import publish_tiny_model

    publish_tiny_model(settings.bundled_models_dir, "shipped", weights_seed=1)
    publish_tiny_model(settings.bundled_models_dir, "both", weights_seed=1)
    publish_model("both", weights_seed=2)
    registry = ModelRegistry.from_settings(settings)
    assert registry.get("shipped").source == "bundled"
    assert registry.get("both").source == "volume"
    assert registry.get("shipped").latent_dim == LATENT_DIM
    with pytest.raises(ModelNotFound):
        registry.get("../shipped")


def test_loaded_model_is_cached(settings: Settings, publish_model) -> None:
    publish_model("cached")
    registry = ModelRegistry.from_settings(settings)
    assert registry.get("cached") is registry.get("cached")
    assert registry.get("cached", 1) is registry.get("cached")


def test_unreadable_metadata_is_reported(settings: Settings, publish_model, tmp_path: Path) -> None:
    publish_model("badmeta")
    model_stem(settings.models_dir, "badmeta", 1).with_suffix(".json").write_text("{")
    registry = ModelRegistry.from_settings(settings)
    with pytest.raises(ModelNotFound, match="not readable JSON"):
        registry.get("badmeta")
    assert registry.describe("badmeta")["version_info"][0]["error"]
