"""The models that can be served, loaded lazily, cached, and picked up without a restart; `LoadedModel.render`
is the forward every image served goes through. The API process holds a registry (to check requests against
a model, and for GET /models), its render process another (to run them), and `ganserve sample` a third.

Two catalogues are searched, in order (service/serving/catalogues.py): the published versions (database rows,
files in object storage) and the bundled models shipped with the code. A name is served from the first that
has any version of it, so training a model named like a bundled one shadows the bundled one rather than mixing
their version numbers.

Hot reload: a name never seen before is looked up at once; the version list of a known name is read again at
most every `rescan_interval_s`, so a version published by a worker becomes the latest within about a second.
A version that fails to load is logged once and skipped: the newest loadable version keeps being served.
"""

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import torch
from sqlalchemy.exc import OperationalError
from torch import nn

from core.db import DatabaseUnavailable, database
from core.evaluations import EvaluationStore
from core.model_versions import ModelVersions
from core.settings import BATCH_MAX, Settings
from core.storage import BlobCache, open_storage
from core.train_config import NAME_PATTERN
from service.serving.catalogues import Catalogue, Entry, FolderCatalogue, Source, StoreCatalogue
from training.checkpoint import CheckpointError, load_generator
from training.images import to_uint8
from training.latents import interpolation_latents, latents_from_seeds, seed_generators, seed_labels

log = logging.getLogger(__name__)

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


Kind = Literal["image", "points"]


@dataclass(frozen=True)
class LoadedModel:
    """A generator ready to serve. `image_shape` is the shape of one sample: C×H×W for `kind="image"`,
    (D,) for toy `"points"` models (which are loaded and listed, but not rendered as images).

    `num_classes` is set for a class-conditional model, `num_generators` (k) for a MAD-GAN. Every forward
    runs on exactly `batch_rows` rows (see `sample`)."""

    name: str
    version: int
    generator: nn.Module
    meta: dict[str, Any]
    latent_dim: int
    image_shape: tuple[int, ...]
    value_range: tuple[float, float]
    source: Source
    stem: Path
    kind: Kind = "image"
    num_classes: int | None = None
    num_generators: int | None = None
    batch_rows: int = BATCH_MAX

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    @property
    def weights_sha256(self) -> str:
        """The SHA-256 of the weights file, verified when it was loaded (training/checkpoint.py)."""
        return str(self.meta.get("sha256", ""))

    def sample(
        self, latents: torch.Tensor, labels: list[int] | None = None, generators: list[int] | None = None
    ) -> torch.Tensor:
        """N latents → N raw samples (float32, the generator's own range), deterministically (eval mode,
        CPU). `labels` (conditional models) and `generators` (MAD-GAN) give one entry per latent.

        Every forward has exactly `batch_rows` rows: the latents are cut into chunks of that many and the last
        one is padded with zero latents (label 0, generator 0), whose outputs are dropped. A matmul's rounding
        changes with the number of rows, but for one shape a row's output depends on that row only, whatever its
        position and the other rows: so a sample depends on its own latent and not on what it was rendered with
        (service/serving/batching.py renders requests together)."""
        with torch.inference_mode():
            return torch.cat(
                [
                    self.generator(z, labels=label, generator=gen)[:k]
                    for z, label, gen, k in self._chunks(latents, labels, generators)
                ]
            )

    def render(
        self, latents: torch.Tensor, labels: list[int] | None = None, generators: list[int] | None = None
    ) -> torch.Tensor:
        """N latents → N×C×H×W uint8 images: `to_uint8(sample(…))`, what /generate encodes."""
        return to_uint8(self.sample(latents, labels, generators), self.value_range)

    def _chunks(
        self, latents: torch.Tensor, labels: list[int] | None, generators: list[int] | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, int]]:
        """(latents, labels, generator indices, rows used) of each forward: `batch_rows` rows, padded."""
        n = latents.shape[0]
        if n == 0:
            raise ValueError("no latents to sample")
        if (labels is not None and len(labels) != n) or (generators is not None and len(generators) != n):
            raise ValueError(f"{n} latents need as many labels / generator indices")
        rows = self.batch_rows
        for start in range(0, n, rows):
            k = min(rows, n - start)
            # A fresh buffer for every chunk, never a view into `latents`: the same alignment every time.
            z = torch.zeros(rows, latents.shape[1], dtype=torch.float32)
            z[:k] = latents[start : start + k]
            label = None if labels is None else _padded(labels[start : start + k], rows)
            gen = None if generators is None else _padded(generators[start : start + k], rows)
            yield z, label, gen, k

    def labels_for(self, seeds: list[int], label: int | None = None) -> list[int] | None:
        try:
            return seed_labels(seeds, self.num_classes, label)
        except ValueError as e:
            raise ValueError(f"model {self.name} version {self.version}: {e}") from None

    def generators_for(self, seeds: list[int]) -> list[int] | None:
        return seed_generators(seeds, self.num_generators)

    def render_seeds(self, seeds: list[int], label: int | None = None) -> torch.Tensor:
        latents = latents_from_seeds(seeds, self.latent_dim)
        return self.render(latents, self.labels_for(seeds, label), self.generators_for(seeds))

    def sample_seeds(self, seeds: list[int], label: int | None = None) -> torch.Tensor:
        latents = latents_from_seeds(seeds, self.latent_dim)
        return self.sample(latents, self.labels_for(seeds, label), self.generators_for(seeds))

    def walk(
        self, seed_from: int, seed_to: int, steps: int, label: int | None = None
    ) -> tuple[torch.Tensor, list[int] | None, list[int] | None]:
        """The rows of the interpolation from seed `seed_from`'s image to `seed_to`'s (/interpolate): latents on
        the slerp between theirs, every frame with the class (or `label`) and generator /generate gives
        `seed_from`, so that the walk stays in one class and one generator's latent space."""
        latents = interpolation_latents(seed_from, seed_to, steps, self.latent_dim)
        return latents, self.labels_for([seed_from] * steps, label), self.generators_for([seed_from] * steps)


def _padded(values: list[int], rows: int) -> torch.Tensor:
    return torch.tensor(values + [0] * (rows - len(values)), dtype=torch.long)


@dataclass
class _Listing:
    checked_at: float
    catalogue: Catalogue | None
    versions: list[int]


@dataclass
class _Failure:
    signature: tuple[Any, ...]
    reason: str


@dataclass
class ModelRegistry:
    catalogues: list[Catalogue]
    rescan_interval_s: float = RESCAN_INTERVAL_S
    clock: Callable[[], float] = time.monotonic
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _cache: dict[tuple[str, int], LoadedModel] = field(default_factory=dict, repr=False)
    # The catalogue each cached model was loaded from, the very object of `catalogues` (compared by identity:
    # cheap, on the event loop of every /generate).
    _loaded_from: dict[tuple[str, int], Catalogue] = field(default_factory=dict, repr=False)
    _rescan_claims: dict[str, float] = field(default_factory=dict, repr=False)  # see get_if_ready
    _listings: dict[str, _Listing] = field(default_factory=dict, repr=False)
    _failures: dict[tuple[int, str, int], _Failure] = field(default_factory=dict, repr=False)
    evaluations: EvaluationStore | None = None  # where evaluation results are filed, shown by `describe`
    batch_rows: int = BATCH_MAX  # the rows of every forward of the models it loads (LoadedModel.sample)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> "ModelRegistry":
        """The published versions (the settings' database and storage), then the bundled models."""
        kwargs.setdefault("batch_rows", settings.batch_max)
        return cls([published(settings), FolderCatalogue(settings.bundled_models_dir, "bundled")], **kwargs)

    # --- lookup ---------------------------------------------------------------------------------------

    def get(self, name: str, version: int | None = None) -> LoadedModel:
        """The model `name` at `version` (the newest loadable one when None). Raises ModelNotFound."""
        if not re.fullmatch(NAME_PATTERN, name):
            raise ModelNotFound(name, version, self.names())
        with self._lock:
            listing = self._listing(name, want=version)
            if listing.catalogue is None or not listing.versions:
                raise ModelNotFound(name, version, self.names())
            if version is not None:
                if version not in listing.versions:
                    raise ModelNotFound(name, version, self.names(), reason=f"it has versions {listing.versions} only")
                model = self._load(name, version, listing.catalogue)
                if isinstance(model, _Failure):
                    raise ModelNotFound(name, version, self.names(), reason=model.reason)
                return model
            reasons = []
            for v in sorted(listing.versions, reverse=True):
                model = self._load(name, v, listing.catalogue)
                if isinstance(model, LoadedModel):
                    return model
                reasons.append(f"version {v}: {model.reason}")
            raise ModelNotFound(name, None, self.names(), reason="; ".join(reasons))

    def get_if_ready(self, name: str, version: int | None = None) -> LoadedModel | None:
        """What `get` returns when that needs no disk and no wait: the version (the newest, when None) is
        loaded and the listing is fresh, or being rescanned by another caller. None otherwise — then call
        `get`, off the event loop, which may scan and load. Never blocks: it takes no lock (a listing and a
        cache entry are each replaced whole, and a dict read is atomic), so a thread loading a model never
        stalls the event loop; at worst it sees the state of a moment ago, which `get` would have returned
        then."""
        listing = self._listings.get(name)
        if listing is None or not listing.versions or listing.catalogue is None:
            return None
        now = self.clock()
        if not 0 <= now - listing.checked_at < self.rescan_interval_s:
            # Stale. One caller is sent to `get` to rescan; until it has, the others are served what was listed
            # a moment ago, rather than all queueing for the registry's lock in threads. A claim not honoured in
            # a few intervals lapses.
            claimed = self._rescan_claims.get(name)
            if claimed is None or not 0 <= now - claimed < 5 * self.rescan_interval_s:
                self._rescan_claims[name] = now
                return None
        wanted = max(listing.versions) if version is None else version
        model = self._cache.get((name, wanted)) if wanted in listing.versions else None
        if model is None or self._loaded_from.get((name, wanted)) is not listing.catalogue:
            return None
        return model

    def loaded(self) -> list[tuple[str, int]]:
        """(name, version) of every model in memory (for GET /stats); lock-free, like `get_if_ready`."""
        return sorted(self._cache)

    def _listing(self, name: str, want: int | None) -> _Listing:
        now = self.clock()
        listing = self._listings.get(name)
        fresh = listing is not None and listing.versions and 0 <= now - listing.checked_at < self.rescan_interval_s
        # A version asked for by number and not yet known is a cache miss too: look now, not in a second.
        if fresh and listing is not None and (want is None or want in listing.versions):
            return listing
        previous = self._listings.get(name)
        try:
            listing = _Listing(now, None, [])
            for catalogue in self.catalogues:
                versions = catalogue.versions(name)
                if versions:
                    listing = _Listing(now, catalogue, versions)
                    break
        except (DatabaseUnavailable, OperationalError) as e:
            if previous is None or not previous.versions:
                raise
            # The database does not answer: what was listed goes on being served, and is asked about again later.
            log.warning("model %s: the database does not answer (%s); serving what was listed", name, e)
            listing = _Listing(now, previous.catalogue, previous.versions)
        if previous and previous.versions and listing.versions and max(listing.versions) > max(previous.versions):
            log.info("model %s: found version %d", name, max(listing.versions))
        self._listings[name] = listing
        self._rescan_claims.pop(name, None)
        return listing

    def _load(self, name: str, version: int, catalogue: Catalogue) -> "LoadedModel | _Failure":
        key = (name, version)
        cached = self._cache.get(key)
        if cached is not None and self._loaded_from.get(key) is catalogue:
            return cached
        where = (id(catalogue), name, version)
        signature = catalogue.signature(name, version)
        failure = self._failures.get(where)
        if failure is not None and failure.signature == signature:
            return failure  # already logged; retried only when the version's files change
        started = time.perf_counter()
        try:
            model = load_model(catalogue.stem(name, version), name, version, catalogue.source, self.batch_rows)
        except CheckpointError as e:
            self._failures[where] = _Failure(signature, str(e))
            log.error(
                "model %s version %d (%s) cannot be loaded and is skipped: %s", name, version, catalogue.source, e
            )
            return self._failures[where]
        self._failures.pop(where, None)
        self._loaded_from[key] = catalogue
        self._cache[key] = model
        log.info(
            "model %s version %d loaded (%s) in %.2f s (latent %d, %s %s)",
            name,
            version,
            catalogue.source,
            time.perf_counter() - started,
            model.latent_dim,
            model.kind,
            "×".join(map(str, model.image_shape)),
        )
        return model

    # --- listing --------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every name with at least one version, the first catalogue's first, de-duplicated."""
        return sorted(self._scan())

    def _scan(self) -> dict[str, tuple[Catalogue, list[int]]]:
        found: dict[str, tuple[Catalogue, list[int]]] = {}
        for catalogue in self.catalogues:
            for name in catalogue.names():
                if name not in found and (versions := catalogue.versions(name)):
                    found[name] = (catalogue, versions)
        return found

    def list_models(self) -> list[dict[str, Any]]:
        """A summary per model, from metadata only (no weights are loaded)."""
        return [_summary(name, catalogue, versions) for name, (catalogue, versions) in self._scan().items()]

    def describe(self, name: str) -> dict[str, Any]:
        """The summary of `name` plus one entry per version. Raises ModelNotFound."""
        found = self._scan().get(name) if re.fullmatch(NAME_PATTERN, name) else None
        if found is None:
            raise ModelNotFound(name, None, self.names())
        catalogue, versions = found
        summary = _summary(name, catalogue, versions)
        summary["version_info"] = [_version_info(catalogue.entry(name, v), v) for v in versions]
        if self.evaluations is not None:
            for info in summary["version_info"]:
                info["evaluations"] = self.evaluations.results(name, info["version"], info.get("weights_sha256"))
        return summary


def published(settings: Settings) -> StoreCatalogue:
    """The published versions of the settings' database (not connected yet: its owner migrates it first) and
    storage."""
    return StoreCatalogue(
        ModelVersions(database(settings.effective_database_url)),
        open_storage(settings.effective_storage_url, settings.s3_endpoint_url),
        BlobCache(settings.effective_cache_dir, settings.cache_max_bytes),
    )


def load_model(stem: Path, name: str, version: int, source: Source, batch_rows: int = BATCH_MAX) -> LoadedModel:
    """The served generator of checkpoint `stem` (its EMA weights when it has them), ready to render and warmed
    up; a run's checkpoint gives what publishing it would serve. Raises CheckpointError, saying why not."""
    try:
        generator, meta = load_generator(stem, "cpu")
        model = _loaded(name, version, generator, meta, source, stem, batch_rows)
        _warm_up(model)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{stem}: unusable checkpoint: {e!r}") from None
    return model


def _loaded(
    name: str,
    version: int,
    generator: nn.Module,
    meta: dict[str, Any],
    source: Source,
    stem: Path,
    batch_rows: int = BATCH_MAX,
) -> LoadedModel:
    spec = meta.get("generator", {})
    base = spec.get("base", spec)  # a MAD-GAN spec wraps the spec of its k generators
    latent_dim = int(meta.get("latent_dim", base["latent_dim"]))
    kind = meta.get("kind", "image")  # metadata from before toy models is always images
    if kind not in ("image", "points"):
        raise ValueError(f"kind {kind!r} is neither 'image' nor 'points'")
    shape = tuple(int(x) for x in _sample_shape(meta, base, kind))
    lo, hi = (float(x) for x in meta.get("value_range", (-1.0, 1.0)))
    if latent_dim < 1 or not lo < hi:
        raise ValueError(f"latent_dim {latent_dim} and value_range [{lo}, {hi}] make no sense")
    generator = generator.float().eval()
    num_classes, num_generators = _num_classes(meta, base), _num_generators(meta, generator)
    return LoadedModel(
        name,
        version,
        generator,
        meta,
        latent_dim,
        shape,
        (lo, hi),
        source,
        stem,
        kind=kind,
        num_classes=num_classes,
        num_generators=num_generators,
        batch_rows=batch_rows,
    )


def _sample_shape(meta: dict[str, Any], base: dict[str, Any], kind: str) -> list[int]:
    shape = meta.get("image_shape") if kind == "image" else None
    shape = shape or meta.get("sample_shape") or base["image_shape"]
    if kind == "image" and len(shape) != 3:
        raise ValueError(f"an image model's samples must be C×H×W, metadata says {shape}")
    return list(shape)


def _num_classes(meta: dict[str, Any], base: dict[str, Any]) -> int | None:
    """The generator's own spec decides (it is what will run); the metadata's fields are the fallback."""
    n = base.get("num_classes")
    if n is None and meta.get("conditional"):
        n = meta.get("num_classes")
    if n is not None and int(n) < 1:
        raise ValueError(f"num_classes {n} makes no sense")
    return None if n is None else int(n)


def _num_generators(meta: dict[str, Any], generator: nn.Module) -> int | None:
    k = getattr(generator, "num_generators", None)
    if k is not None and meta.get("num_generators") not in (None, k):
        raise ValueError(f"the generator has {k} generators, metadata says {meta['num_generators']}")
    return None if k is None else int(k)


def _warm_up(model: LoadedModel) -> None:
    """One forward (of the fixed `batch_rows` shape every request uses) at load time: fails now on a generator
    whose shapes do not match its metadata (rather than on a user's request) and pays the first-call
    allocation cost up front."""
    samples = model.sample_seeds([0])
    if tuple(samples.shape[1:]) != model.image_shape:
        raise ValueError(
            f"generator makes samples of shape {tuple(samples.shape[1:])}, metadata says {model.image_shape}"
        )


def _training(meta: dict[str, Any], created: datetime | None) -> dict[str, Any]:
    config = meta.get("train_config") or {}
    losses = meta.get("losses") or {}
    return {
        "dataset": meta.get("dataset", config.get("dataset")),
        "epochs": config.get("epochs", meta.get("epochs")),
        "epoch": meta.get("epoch"),
        "step": meta.get("step"),
        "losses": {k: float(v) for k, v in losses.items() if isinstance(v, int | float)},
        "created_at": created,
    }


def _version_info(entry: Entry, version: int) -> dict[str, Any]:
    info: dict[str, Any] = {"version": version, "has_samples": entry.has_samples}
    meta = entry.meta
    if meta is None:
        return {**info, "error": entry.error}
    spec = meta.get("generator") or {}
    base = spec.get("base", spec)
    kind = meta.get("kind", "image")
    kind = kind if kind in ("image", "points") else None  # nonsense is reported as unknown, not a 500
    return {
        **info,
        "weights_sha256": meta.get("sha256"),
        "latent_dim": meta.get("latent_dim", base.get("latent_dim")),
        "image_shape": meta.get("image_shape", base.get("image_shape")) if kind == "image" else None,
        "value_range": meta.get("value_range", [-1.0, 1.0]),
        "training": _training(meta, entry.created_at),
        **_generation_info(meta, spec, base, kind),
    }


def _generation_info(
    meta: dict[str, Any], spec: dict[str, Any], base: dict[str, Any], kind: str | None
) -> dict[str, Any]:
    """What a client needs to know to ask for samples: kind, classes, generators, architecture."""
    conditional = bool(meta.get("conditional", base.get("num_classes") is not None))
    # An unconditional model's dataset may have classes, but a client cannot ask for them: report none.
    num_classes = base.get("num_classes", meta.get("num_classes")) if conditional else None
    return {
        "kind": kind,
        "sample_shape": meta.get("sample_shape", base.get("image_shape")),
        "architecture": meta.get("architecture", spec.get("arch")),
        "conditional": conditional,
        "num_classes": num_classes,
        "num_generators": meta.get("num_generators", spec.get("generators")),
    }


GENERATION_FIELDS = ("kind", "sample_shape", "architecture", "conditional", "num_classes", "num_generators")


def _summary(name: str, catalogue: Catalogue, versions: list[int]) -> dict[str, Any]:
    latest = max(versions)
    info = _version_info(catalogue.entry(name, latest), latest)
    return {
        "name": name,
        "source": catalogue.source,
        "latest_version": latest,
        "versions": versions,
        "latent_dim": info.get("latent_dim"),
        "image_shape": info.get("image_shape"),
        "value_range": info.get("value_range"),
        "training": info.get("training"),
        "error": info.get("error"),
        **{k: info.get(k) for k in GENERATION_FIELDS},
    }
