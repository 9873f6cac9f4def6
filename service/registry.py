"""The models the API can serve, loaded lazily, cached, and picked up without a restart.

Two places are searched, in order: `settings.models_dir` (models trained by the worker, on the shared
volume) and `settings.bundled_models_dir` (read-only, shipped with the code). A name is served from the
first place that has any version of it, so training a model named like a bundled one shadows the bundled
one rather than mixing their version numbers.

Hot reload: a name never seen before is looked up on disk at once; the version list of a known name is
re-read at most every `rescan_interval_s` (one `listdir`), so a version published by the worker becomes
the latest within about a second. A version that fails to load is logged once and skipped: the newest
loadable version keeps being served.
"""

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from service.settings import Settings
from training.checkpoint import CheckpointError, list_versions, load_generator, load_metadata, model_stem
from training.config import NAME_PATTERN
from training.images import to_uint8
from training.latents import latents_from_seeds

log = logging.getLogger(__name__)

Source = Literal["volume", "bundled"]
RESCAN_INTERVAL_S = 1.0


class ModelNotFound(KeyError):
    """No such model or version, or none of its versions can be loaded (`reason` says why)."""

    def __init__(self, name: str, version: int | None, available: list[str], reason: str | None = None):
        super().__init__(name)
        self.name = name
        self.version = version
        self.available = available
        self.reason = reason

    def __str__(self) -> str:
        what = f"model {self.name!r}" + (f" version {self.version}" if self.version is not None else "")
        if self.reason:
            return f"{what} cannot be served: {self.reason}"
        return f"{what} does not exist; available models: {', '.join(self.available) or 'none'}"


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: int
    generator: nn.Module
    meta: dict[str, Any]
    latent_dim: int
    image_shape: tuple[int, int, int]
    value_range: tuple[float, float]
    source: Source
    stem: Path

    def render(self, latents: torch.Tensor) -> torch.Tensor:
        """N latents → N×C×H×W uint8 images, deterministically (eval mode, float32, CPU).

        One forward per latent, so that an image depends on its own seed only and not on the batch it was
        rendered in (a matmul's rounding may change with the batch size)."""
        with torch.inference_mode():
            out = torch.cat([self.generator(z.unsqueeze(0).to(torch.float32)) for z in latents])
        return to_uint8(out, self.value_range)

    def render_seeds(self, seeds: list[int]) -> torch.Tensor:
        return self.render(latents_from_seeds(seeds, self.latent_dim))


@dataclass
class _Listing:
    checked_at: float
    source: Source | None
    root: Path | None
    versions: list[int]


@dataclass
class _Failure:
    signature: tuple[int, ...]
    reason: str


@dataclass
class ModelRegistry:
    roots: list[tuple[Path, Source]]
    rescan_interval_s: float = RESCAN_INTERVAL_S
    clock: Callable[[], float] = time.monotonic
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _cache: dict[tuple[str, int], LoadedModel] = field(default_factory=dict, repr=False)
    _listings: dict[str, _Listing] = field(default_factory=dict, repr=False)
    _failures: dict[Path, _Failure] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> "ModelRegistry":
        return cls([(settings.models_dir, "volume"), (settings.bundled_models_dir, "bundled")], **kwargs)

    # --- lookup ---------------------------------------------------------------------------------------

    def get(self, name: str, version: int | None = None) -> LoadedModel:
        """The model `name` at `version` (the newest loadable one when None). Raises ModelNotFound."""
        if not re.fullmatch(NAME_PATTERN, name):
            raise ModelNotFound(name, version, self.names())
        with self._lock:
            listing = self._listing(name, want=version)
            if listing.root is None or listing.source is None or not listing.versions:
                raise ModelNotFound(name, version, self.names())
            if version is not None:
                if version not in listing.versions:
                    raise ModelNotFound(name, version, self.names(), reason=f"it has versions {listing.versions} only")
                model = self._load(name, version, listing.root, listing.source)
                if isinstance(model, _Failure):
                    raise ModelNotFound(name, version, self.names(), reason=model.reason)
                return model
            reasons = []
            for v in sorted(listing.versions, reverse=True):
                model = self._load(name, v, listing.root, listing.source)
                if isinstance(model, LoadedModel):
                    return model
                reasons.append(f"version {v}: {model.reason}")
            raise ModelNotFound(name, None, self.names(), reason="; ".join(reasons))

    def _listing(self, name: str, want: int | None) -> _Listing:
        now = self.clock()
        listing = self._listings.get(name)
        fresh = listing is not None and listing.versions and 0 <= now - listing.checked_at < self.rescan_interval_s
        # A version asked for by number and not yet known is a cache miss too: look now, not in a second.
        if fresh and listing is not None and (want is None or want in listing.versions):
            return listing
        listing = _Listing(now, None, None, [])
        for root, source in self.roots:
            versions = list_versions(root, name)
            if versions:
                listing = _Listing(now, source, root, versions)
                break
        previous = self._listings.get(name)
        if previous and previous.versions and listing.versions and max(listing.versions) > max(previous.versions):
            log.info("model %s: found version %d (%s)", name, max(listing.versions), listing.source)
        self._listings[name] = listing
        return listing

    def _load(self, name: str, version: int, root: Path, source: Source) -> "LoadedModel | _Failure":
        key = (name, version)
        cached = self._cache.get(key)
        if cached is not None and cached.stem.parent.parent.parent == root:
            return cached
        stem = model_stem(root, name, version)
        signature = _signature(stem)
        failure = self._failures.get(stem)
        if failure is not None and failure.signature == signature:
            return failure  # already logged; retried only when the files change
        started = time.perf_counter()
        try:
            generator, meta = load_generator(stem, "cpu")
            model = _loaded(name, version, generator, meta, source, stem)
            _warm_up(model)
        except (CheckpointError, KeyError, TypeError, ValueError, RuntimeError) as e:
            reason = str(e) if isinstance(e, CheckpointError) else f"{stem}: unusable checkpoint: {e!r}"
            self._failures[stem] = _Failure(signature, reason)
            log.error("model %s version %d (%s) cannot be loaded and is skipped: %s", name, version, source, reason)
            return self._failures[stem]
        self._failures.pop(stem, None)
        self._cache[key] = model
        log.info(
            "model %s version %d loaded from %s in %.2f s (latent %d, image %s)",
            name,
            version,
            source,
            time.perf_counter() - started,
            model.latent_dim,
            "×".join(map(str, model.image_shape)),
        )
        return model

    # --- listing --------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every servable-looking name (has at least one version directory), volume first, de-duplicated."""
        return sorted(self._scan())

    def _scan(self) -> dict[str, tuple[Path, Source, list[int]]]:
        found: dict[str, tuple[Path, Source, list[int]]] = {}
        for root, source in self.roots:
            try:
                children = sorted(p.name for p in root.iterdir() if p.is_dir())
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in children:
                if name in found or not re.fullmatch(NAME_PATTERN, name):
                    continue
                versions = list_versions(root, name)
                if versions:
                    found[name] = (root, source, versions)
        return found

    def list_models(self) -> list[dict[str, Any]]:
        """A summary per model, from metadata only (no weights are loaded)."""
        return [_summary(name, root, source, versions) for name, (root, source, versions) in self._scan().items()]

    def describe(self, name: str) -> dict[str, Any]:
        """The summary of `name` plus one entry per version. Raises ModelNotFound."""
        found = self._scan().get(name) if re.fullmatch(NAME_PATTERN, name) else None
        if found is None:
            raise ModelNotFound(name, None, self.names())
        root, source, versions = found
        summary = _summary(name, root, source, versions)
        summary["version_info"] = [_version_info(model_stem(root, name, v), v) for v in versions]
        return summary


def _signature(stem: Path) -> tuple[int, ...]:
    sig: list[int] = []
    for path in (stem.with_suffix(".json"), stem.with_suffix(".safetensors")):
        try:
            st = path.stat()
            sig += [st.st_mtime_ns, st.st_size, st.st_ino]
        except OSError:
            sig += [-1, -1, -1]
    return tuple(sig)


def _loaded(
    name: str, version: int, generator: nn.Module, meta: dict[str, Any], source: Source, stem: Path
) -> LoadedModel:
    spec = meta.get("generator", {})
    latent_dim = int(meta.get("latent_dim", spec["latent_dim"]))
    c, h, w = (int(x) for x in meta.get("image_shape", spec["image_shape"]))
    lo, hi = (float(x) for x in meta.get("value_range", (-1.0, 1.0)))
    if latent_dim < 1 or not lo < hi:
        raise ValueError(f"latent_dim {latent_dim} and value_range [{lo}, {hi}] make no sense")
    return LoadedModel(name, version, generator.float().eval(), meta, latent_dim, (c, h, w), (lo, hi), source, stem)


def _warm_up(model: LoadedModel) -> None:
    """One forward at load time: fails now on a generator whose shapes do not match its metadata (rather
    than on a user's request) and pays the first-call allocation cost up front."""
    images = model.render_seeds([0])
    if tuple(images.shape[1:]) != model.image_shape:
        raise ValueError(
            f"generator makes images of shape {tuple(images.shape[1:])}, metadata says {model.image_shape}"
        )


def _training(meta: dict[str, Any], stem: Path) -> dict[str, Any]:
    config = meta.get("train_config") or {}
    try:
        created = datetime.fromtimestamp(stem.with_suffix(".json").stat().st_mtime, UTC)
    except OSError:
        created = None
    losses = meta.get("losses") or {}
    return {
        "dataset": meta.get("dataset", config.get("dataset")),
        "epochs": config.get("epochs", meta.get("epochs")),
        "epoch": meta.get("epoch"),
        "step": meta.get("step"),
        "losses": {k: float(v) for k, v in losses.items() if isinstance(v, int | float)},
        "created_at": created,
    }


def _version_info(stem: Path, version: int) -> dict[str, Any]:
    info: dict[str, Any] = {"version": version, "has_samples": (stem.parent / "samples.png").exists()}
    try:
        meta = load_metadata(stem)
    except CheckpointError as e:
        return {**info, "error": str(e)}
    spec = meta.get("generator") or {}
    return {
        **info,
        "latent_dim": meta.get("latent_dim", spec.get("latent_dim")),
        "image_shape": meta.get("image_shape", spec.get("image_shape")),
        "value_range": meta.get("value_range", [-1.0, 1.0]),
        "training": _training(meta, stem),
    }


def _summary(name: str, root: Path, source: Source, versions: list[int]) -> dict[str, Any]:
    latest = max(versions)
    info = _version_info(model_stem(root, name, latest), latest)
    return {
        "name": name,
        "source": source,
        "latest_version": latest,
        "versions": versions,
        "latent_dim": info.get("latent_dim"),
        "image_shape": info.get("image_shape"),
        "value_range": info.get("value_range"),
        "training": info.get("training"),
        "error": info.get("error"),
    }
