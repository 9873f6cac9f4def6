"""The registry's bounds and what it refuses to serve (service/serving/registry.py), without HTTP: loaded versions
bounded by count and bytes (least recently used out), unknown names remembered for a while and not without limit,
a version whose weights are damaged listed unavailable (no path in any reason), a model identified by its
weights' SHA-256, and the pinned default."""

import random
import string
from pathlib import Path

import pytest
from svc_support import published_stem

from core.db import connect
from core.settings import Settings
from service.serving import registry as registry_module
from service.serving.registry import ModelNotFound, ModelRegistry, weight_bytes


@pytest.fixture(autouse=True)
def migrated(settings: Settings) -> None:
    """The volume's database exists (as the API's start-up makes it) before any lookup."""
    connect(settings.effective_database_url)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_count_bound_unloads_the_least_recently_used(settings: Settings, publish_model) -> None:
    for name in ("a", "b", "c"):
        publish_model(name)
    registry = ModelRegistry.from_settings(settings, max_models=2)
    a = registry.get("a")
    registry.get("b")
    assert registry.get("a") is a  # a used again: b is now the least recently used
    registry.get("c")
    assert registry.loaded() == [("a", 1), ("c", 1)]
    registry.get("b")  # loaded again (a, the least recently used, goes)
    assert registry.loaded() == [("b", 1), ("c", 1)]
    assert registry.get("a") is not a  # a fresh load: the old one was let go


def test_byte_bound_unloads_the_oldest(settings: Settings, publish_model) -> None:
    publish_model("first")
    publish_model("second")
    size = weight_bytes(ModelRegistry.from_settings(settings).get("first").generator)
    registry = ModelRegistry.from_settings(settings, max_bytes=size + size // 2)  # room for one, not two
    registry.get("first")
    registry.get("second")
    assert registry.loaded() == [("second", 1)]
    # One model larger than the bound alone is still served (it is what was asked for), and alone.
    tight = ModelRegistry.from_settings(settings, max_bytes=1)
    assert tight.get("first").name == "first" and tight.loaded() == [("first", 1)]


def test_the_bounds_come_from_the_settings(settings: Settings) -> None:
    bounded = settings.model_copy(
        update={"model_cache_max_models": 3, "model_cache_max_bytes": 2**21, "unknown_model_ttl_s": 7.5}
    )
    registry = ModelRegistry.from_settings(bounded)
    assert (registry.max_models, registry.max_bytes, registry.unknown_ttl_s) == (3, 2**21, 7.5)


def test_an_unknown_name_is_remembered_for_the_ttl_only(settings: Settings, publish_model) -> None:
    clock = Clock()
    registry = ModelRegistry.from_settings(settings, clock=clock, unknown_ttl_s=5.0)
    with pytest.raises(ModelNotFound):
        registry.get("ghost")
    publish_model("ghost")
    clock.now += 4.9
    with pytest.raises(ModelNotFound):  # still remembered as unknown: the database is not asked again
        registry.get("ghost")
    clock.now += 0.2
    assert registry.get("ghost").name == "ghost"


def test_a_flood_of_unknown_names_does_not_grow_memory(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "UNKNOWN_NAMES_MAX", 16)
    registry = ModelRegistry.from_settings(settings)
    rng = random.Random(0)
    for _ in range(200):
        name = "".join(rng.choices(string.ascii_lowercase, k=12))
        with pytest.raises(ModelNotFound):
            registry.get(name)
        assert registry.get_if_ready(name) is None
    assert len(registry._unknown) == 16
    assert registry._listings == {} and registry.loaded() == []


def damage(settings: Settings, name: str, version: int) -> Path:
    weights = published_stem(settings, name, version).with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    return weights


def test_a_damaged_version_is_listed_unavailable_without_its_path(settings: Settings, publish_model) -> None:
    publish_model("spoilt")
    assert publish_model("spoilt", weights_seed=9) == 2
    weights = damage(settings, "spoilt", 2)
    registry = ModelRegistry.from_settings(settings)
    (summary,) = [m for m in registry.list_models() if m["name"] == "spoilt"]
    assert summary["latest_version"] == 1 and summary["available"] and summary["versions"] == [1, 2]
    info = {v["version"]: v for v in registry.describe("spoilt")["version_info"]}
    assert info[1]["available"] and info[1]["reason"] is None
    assert not info[2]["available"] and "SHA-256" in info[2]["reason"]
    assert registry.get("spoilt").version == 1
    with pytest.raises(ModelNotFound) as refused:
        registry.get("spoilt", 2)
    for text in (info[2]["reason"], str(refused.value)):
        assert str(weights) not in text and str(settings.checkpoint_dir) not in text and "/" not in text


def test_a_model_with_no_servable_version_has_no_latest(settings: Settings, publish_model) -> None:
    publish_model("ruined")
    damage(settings, "ruined", 1)
    registry = ModelRegistry.from_settings(settings)
    (summary,) = [m for m in registry.list_models() if m["name"] == "ruined"]
    assert summary["latest_version"] is None and not summary["available"]
    assert "version 1" in summary["reason"] and "/" not in summary["reason"]


def test_other_weights_than_asked_are_never_served(settings: Settings, publish_model) -> None:
    publish_model("exact")
    registry = ModelRegistry.from_settings(settings)
    model = registry.get("exact")
    assert registry.get("exact", 1, model.weights_sha256) is model
    with pytest.raises(ModelNotFound, match="not the ones the request was resolved to"):
        registry.get("exact", 1, "0" * 64)


def test_the_default_is_pinned_to_its_version(settings: Settings, publish_model) -> None:
    publish_model(settings.default_model)
    publish_model(settings.default_model, weights_seed=3)
    registry = ModelRegistry.from_settings(settings)
    assert registry.get_default().version == settings.default_model_version == 1
    assert registry.get(settings.default_model).version == 2  # naming it without a version: the newest
    pinned = ModelRegistry.from_settings(settings.model_copy(update={"default_model_version": 2}))
    assert pinned.get_default().version == 2
    missing = ModelRegistry.from_settings(settings.model_copy(update={"default_model_version": 9}))
    with pytest.raises(ModelNotFound):
        missing.get_default()


def test_a_flood_of_missing_version_numbers_asks_the_database_once_each_ttl(
    settings: Settings, publish_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "UNKNOWN_NAMES_MAX", 16)
    publish_model("real")
    clock = Clock()
    registry = ModelRegistry.from_settings(settings, clock=clock, unknown_ttl_s=5.0)
    registry.get("real")
    registry.names()  # the scan a 404's list of names comes from, cached for the rescan interval
    (published,) = [c for c in registry.catalogues if c.source == "volume"]
    asked: list[str] = []
    weights = published.weights
    monkeypatch.setattr(published, "weights", lambda name: asked.append(name) or weights(name))
    for _ in range(3):
        with pytest.raises(ModelNotFound, match=r"versions \[1\] only"):
            registry.get("real", 99)
    assert len(asked) == 1  # looked up once; then remembered as missing
    for version in range(100, 200):
        with pytest.raises(ModelNotFound):
            registry.get("real", version)
    assert len(registry._missing) == 16
    assert publish_model("real", weights_seed=1) == 2
    clock.now += 5.0  # the listing (rescan interval) and the memory of version 2's absence have lapsed
    assert registry.get("real", 2).version == 2


def test_the_pinned_default_is_never_unloaded_by_other_models(settings: Settings, publish_model) -> None:
    for name in (settings.default_model, "x", "y", "z"):
        publish_model(name)
    registry = ModelRegistry.from_settings(settings, max_models=2)
    default = registry.get_default()
    for name in ("x", "y", "z"):
        registry.get(name)
    assert registry.loaded() == [(settings.default_model, 1), ("z", 1)]
    assert registry.get_default() is default
