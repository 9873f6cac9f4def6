"""Hot reload and corrupt checkpoints, through the API (the registry's clock is driven by the test)."""

import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from svc_support import (
    LATENT_DIM,
    NUM_CLASSES,
    NUM_GENERATORS,
    publish_conditional_model,
    publish_generator,
    publish_madgan_model,
    publish_points_model,
    published_stem,
    tiny_image_g,
)

from core.settings import Settings
from service.serving.registry import ModelNotFound, ModelRegistry
from training.architectures import MADGANGenerator


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(served: TestClient, monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The shared app's registry on a clock the test moves (its own again after the test)."""
    c = Clock()
    monkeypatch.setattr(served.app.state.ganserve.registry, "clock", c)  # type: ignore[attr-defined]
    return c


def test_new_model_published_after_startup_is_servable(served: TestClient, clock: Clock, publish_served) -> None:
    assert served.get("/generate", params={"model": "later"}).status_code == 404
    publish_served("later", weights_seed=5)
    # A name not found is remembered as such for GANSERVE_UNKNOWN_MODEL_TTL_S, then looked up again.
    clock.now += served.app.state.ganserve.settings.unknown_model_ttl_s  # type: ignore[attr-defined]
    r = served.get("/generate", params={"model": "later", "seed": 1})
    assert r.status_code == 200
    assert r.headers["x-model"] == "later" and r.headers["x-model-version"] == "1"


def test_new_version_becomes_latest_within_the_rescan_interval(
    served: TestClient, clock: Clock, publish_served
) -> None:
    publish_served("hot")
    ask = {"model": "hot", "seed": 1}
    v1 = served.get("/generate", params=ask)
    assert v1.headers["x-model-version"] == "1"
    assert publish_served("hot", weights_seed=99) == 2
    clock.now += 0.5  # still within the interval: the cached listing is trusted
    assert served.get("/generate", params=ask).headers["x-model-version"] == "1"
    clock.now += 0.6
    v2 = served.get("/generate", params=ask)
    assert v2.headers["x-model-version"] == "2"
    assert v2.content != v1.content
    # An explicit version is always honoured, and a new one is found at once.
    assert served.get("/generate", params={**ask, "version": 1}).content == v1.content
    assert publish_served("hot", weights_seed=7) == 3
    assert served.get("/generate", params={**ask, "version": 3}).headers["x-model-version"] == "3"


def test_new_version_is_picked_up_in_real_time(
    served: TestClient, publish_served, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_served("realtime")
    ask = {"model": "realtime", "seed": 1}
    assert served.get("/generate", params=ask).headers["x-model-version"] == "1"
    publish_served("realtime", weights_seed=99)
    registry = served.app.state.ganserve.registry  # type: ignore[attr-defined]
    monkeypatch.setattr(registry, "rescan_interval_s", 0.2)  # keep the test fast
    time.sleep(0.25)
    assert served.get("/generate", params=ask).headers["x-model-version"] == "2"


def corrupt(settings: Settings, name: str, version: int) -> None:
    published_stem(settings, name, version).with_suffix(".safetensors").write_bytes(b"not a safetensors file")


def test_corrupt_new_version_keeps_the_previous_one(
    served: TestClient, clock: Clock, publish_served, served_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    publish_served("spoilt")
    ask = {"model": "spoilt", "seed": 1}
    good = served.get("/generate", params=ask).content
    assert publish_served("spoilt", weights_seed=99) == 2
    corrupt(served_settings, "spoilt", 2)
    clock.now += 2
    r = served.get("/generate", params=ask)
    assert r.status_code == 200 and r.headers["x-model-version"] == "1" and r.content == good
    assert any("cannot be loaded" in rec.getMessage() and "SHA-256" in rec.getMessage() for rec in caplog.records)
    explicit = served.get("/generate", params={**ask, "version": 2})
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


def test_bundled_name_is_never_shadowed_by_a_published_one(
    settings: Settings, publish_model, caplog: pytest.LogCaptureFixture
) -> None:
    """A version published under a bundled name (before such claims were refused) is ignored, logged once: the
    bundled model is served and listed, with its own weights."""
    from svc_support import publish_tiny_model

    publish_tiny_model(settings.bundled_models_dir, "shipped", weights_seed=1)
    publish_tiny_model(settings.bundled_models_dir, "both", weights_seed=1)
    publish_model("both", weights_seed=2)
    publish_model("both", weights_seed=3)
    registry = ModelRegistry.from_settings(settings)
    assert registry.get("shipped").source == "bundled"
    both = registry.get("both")
    assert both.source == "bundled" and both.version == 1
    with pytest.raises(ModelNotFound, match=r"versions \[1\] only"):
        registry.get("both", 2)
    listed = {m["name"]: m for m in registry.list_models()}
    assert listed["both"]["source"] == "bundled" and listed["both"]["versions"] == [1]
    registry.rescan_interval_s = 0.0  # scanned again: still logged once
    registry.list_models()
    ignored = [r for r in caplog.records if "both" in r.getMessage() and "ignored" in r.getMessage()]
    assert len(ignored) == 1
    assert registry.get("shipped").latent_dim == LATENT_DIM
    with pytest.raises(ModelNotFound):
        registry.get("../shipped")


def test_loaded_model_is_cached(settings: Settings, publish_model) -> None:
    publish_model("cached")
    registry = ModelRegistry.from_settings(settings)
    assert registry.get("cached") is registry.get("cached")
    assert registry.get("cached", 1) is registry.get("cached")


def test_unreadable_metadata_is_reported(settings: Settings, publish_model, tmp_path: Path) -> None:
    """A version's JSON damaged in storage: it is not served (the reason says why), and it is still described,
    from the metadata its database row holds."""
    publish_model("badmeta")
    published_stem(settings, "badmeta", 1).with_suffix(".json").write_text("{")
    registry = ModelRegistry.from_settings(settings)
    with pytest.raises(ModelNotFound, match="not readable JSON"):
        registry.get("badmeta")
    assert registry.describe("badmeta")["version_info"][0]["latent_dim"] == LATENT_DIM


def test_registry_reads_kind_classes_and_generators(settings: Settings) -> None:
    publish_conditional_model(settings)
    publish_madgan_model(settings)
    publish_points_model(settings)
    registry = ModelRegistry.from_settings(settings)
    cond, mad, ring = registry.get("cond"), registry.get("mad"), registry.get("ring")
    assert cond.conditional and cond.num_classes == NUM_CLASSES and cond.num_generators is None
    assert mad.num_generators == NUM_GENERATORS and not mad.conditional and mad.kind == "image"
    assert ring.kind == "points" and ring.image_shape == (2,)
    assert ring.sample_seeds([0, 1]).shape == (2, 2)
    assert cond.labels_for([3, 4], None) == [0, 1] and cond.labels_for([3, 4], 2) == [2, 2]
    assert mad.generators_for([0, 4, 5]) == [0, 1, 2]
    with pytest.raises(ValueError):
        cond.labels_for([0], NUM_CLASSES)
    with pytest.raises(ValueError):
        mad.labels_for([0], 0)


def test_old_metadata_is_an_unconditional_image_model(settings: Settings, publish_model) -> None:
    publish_model("old")
    model = ModelRegistry.from_settings(settings).get("old")
    assert model.kind == "image" and model.num_classes is None and model.num_generators is None


def test_generator_count_contradicting_metadata_is_refused(settings: Settings) -> None:
    torch.manual_seed(0)
    g = MADGANGenerator(tiny_image_g().spec, 2)
    publish_generator(settings, "liar", g, num_generators=5)
    with pytest.raises(ModelNotFound, match="metadata says 5"):
        ModelRegistry.from_settings(settings).get("liar")


def test_a_corrupt_version_is_listed_unavailable_and_no_answer_names_a_path(
    client: TestClient, anon: TestClient, publish_model, settings: Settings
) -> None:
    publish_model("tampered")
    ask = {"model": "tampered", "seed": 1}
    good = client.get("/generate", params=ask).content
    assert publish_model("tampered", weights_seed=99) == 2
    weights = published_stem(settings, "tampered", 2).with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")  # its SHA-256 no longer matches its record
    answers = [
        anon.get("/models"),
        anon.get("/models/tampered"),
        anon.get("/generate", params=ask),
        anon.get("/generate", params={**ask, "version": 2}),
        anon.get("/interpolate", params={"model": "tampered", "version": 2, "from": 0, "to": 1}),
        anon.get("/generate", params={"model": "tampered", "version": 3}),
    ]
    for r in answers:
        assert str(settings.checkpoint_dir) not in r.text and str(weights.parent) not in r.text, r.text
    listing, detail, latest, explicit, walk, missing = answers
    (summary,) = [m for m in listing.json()["models"] if m["name"] == "tampered"]
    assert summary["latest_version"] == 1 and summary["versions"] == [1, 2] and summary["available"]
    info = {v["version"]: v for v in detail.json()["version_info"]}
    assert info[1]["available"] and not info[2]["available"] and "SHA-256" in info[2]["reason"]
    assert detail.json()["latest_version"] == 1
    assert latest.status_code == 200 and latest.headers["x-model-version"] == "1" and latest.content == good
    for r in (explicit, walk):
        assert r.status_code == 404 and r.json()["error"] == "model_unavailable" and "SHA-256" in r.json()["message"]
    assert missing.status_code == 404


def test_a_bundled_name_published_over_is_served_from_the_bundle(make_app, settings: Settings) -> None:
    """Versions published under a bundled name (before such claims were refused) are ignored: the bundled
    weights are served under their own ETag, and a toy model published under the name changes nothing."""
    from svc_support import AUTH, publish_tiny_model

    from service.api.caching import etag
    from service.serving.encoding import PNG_LEVEL
    from training.checkpoint import load_metadata, model_stem

    publish_tiny_model(settings.bundled_models_dir, "shipped", weights_seed=1)
    publish_tiny_model(settings, "shipped", weights_seed=2)  # version 1 in the volume, other weights
    publish_points_model(settings, "shipped")  # version 2: a toy model
    bundled_sha = load_metadata(model_stem(settings.bundled_models_dir, "shipped", 1))["sha256"]
    with TestClient(make_app(), headers=AUTH) as c:
        pinned = c.get("/generate", params={"model": "shipped", "version": 1, "seed": 3})
        assert pinned.status_code == 200
        tag = etag("generate/1", "shipped", 1, bundled_sha, 3, 1, None, "png", settings.batch_max, PNG_LEVEL)
        assert pinned.headers["etag"] == tag
        latest = c.get("/generate", params={"model": "shipped", "seed": 3})  # not the toy model's 422
        assert latest.status_code == 200 and latest.content == pinned.content
        assert c.get("/generate", params={"model": "shipped", "version": 2}).status_code == 404
        detail = c.get("/models/shipped").json()
        assert detail["source"] == "bundled" and detail["versions"] == [1] and detail["owner"] is None
        assert detail["version_info"][0]["weights_sha256"] == bundled_sha


def test_a_request_naming_no_model_gets_the_pinned_default_version(
    client: TestClient, publish_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    from svc_support import DEFAULT_MODEL

    monkeypatch.setattr(client.app.state.ganserve.registry, "rescan_interval_s", 0.0)  # type: ignore[attr-defined]
    assert publish_model(DEFAULT_MODEL, weights_seed=5) == 2
    pinned = client.get("/generate", params={"seed": 1})
    assert pinned.status_code == 200 and pinned.headers["x-model-version"] == "1"
    assert pinned.headers["cache-control"] == "no-cache"  # the operator may move the pin
    assert client.get("/interpolate", params={"from": 1, "to": 2}).headers["x-model-version"] == "1"
    named = client.get("/generate", params={"model": DEFAULT_MODEL, "seed": 1})
    assert named.headers["x-model-version"] == "2" and named.content != pinned.content
    assert client.get("/generate", params={"seed": 1, "version": 2}).headers["x-model-version"] == "2"
