"""The models that can be served, loaded lazily, cached, and picked up without a restart; `LoadedModel.render`
is the forward every image served goes through. The API process holds a registry (to check requests against
a model, and for GET /models), its render process another (to run them), and `ganserve sample` a third.

Two catalogues are searched (service/serving/catalogues.py): the bundled models shipped with the code, then the
published versions (database rows, files in object storage). A bundled name is the bundled catalogue's alone:
versions published under it (before its claim was refused, core/model_names.py) are ignored and logged once, so
what the bundled name serves never changes. Another name is served from the first catalogue that has it.

A loaded model is identified by (name, version, the SHA-256 of its weights) everywhere it is cached: here, in
the render process (which is asked for those weights, service/serving/wire.py) and in the API's answer cache
and ETags (service/api/caching.py). A (name, version) that comes to name other weights is another model, never
served under the old one's ETag. At most `max_models` versions and `max_bytes` of weights stay loaded (least
recently used dropped beyond); a name with no version, and a version number a name does not have, are
remembered for `unknown_ttl_s`, at most UNKNOWN_NAMES_MAX of each.

Hot reload: a name never seen before is looked up at once; the version list of a known name is read again at
most every `rescan_interval_s`, so a version published by a worker becomes the latest within about a second.
A version that fails to load (its weights do not match their SHA-256, or cannot be read or rebuilt) is logged
once, listed as unavailable (with a reason that names no path) and skipped: the newest loadable version keeps
being served. Who may be served a name (its claim, core/model_names.py) is read with the listing, at most every
`rescan_interval_s`, never per request.
"""

import contextlib
import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from math import inf
from pathlib import Path
from typing import Any, Literal

import torch
from sqlalchemy.exc import OperationalError
from torch import nn

from core.db import DatabaseUnavailable, database
from core.evaluations import EvaluationStore
from core.model_names import ModelName, ModelNames, reserved_names
from core.model_versions import ModelVersions
from core.settings import BATCH_MAX, Settings
from core.storage import BlobCache, open_storage
from core.train_config import NAME_PATTERN
from service.serving.catalogues import Catalogue, Entry, FolderCatalogue, Source, StoreCatalogue
from training.checkpoint import CheckpointError, load_generator, load_metadata
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
        """The generator of each seed: MAD-GAN's seed % k, or an AdaGAN mixture's component by its weights."""
        return seed_generators(seeds, self.num_generators, getattr(self.generator, "mixture_weights", None))

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
    versions: dict[int, str]  # version → the SHA-256 of its weights, as its catalogue records it


@dataclass
class _Failure:
    signature: tuple[Any, ...]
    reason: str  # says why, without a path or a bucket: it reaches clients (404s, GET /models)


UNKNOWN_NAMES_MAX = 1024  # unknown names remembered at once: a flood of random names cannot grow memory
Key = tuple[str, int, str]  # (name, version, weights' SHA-256): what identifies a loaded model


@dataclass
class ModelRegistry:
    catalogues: list[Catalogue]
    rescan_interval_s: float = RESCAN_INTERVAL_S
    clock: Callable[[], float] = time.monotonic
    max_models: int = 8  # loaded versions kept (least recently used dropped beyond), Settings.model_cache_max_models
    max_bytes: int = 2 * 2**30  # bytes of weights kept loaded, Settings.model_cache_max_bytes
    unknown_ttl_s: float = 5.0  # how long a name with no version is remembered as such (Settings.unknown_model_ttl_s)
    reserved: frozenset[str] = frozenset()  # the bundled names: served from the bundled catalogue only
    names_store: ModelNames | None = None  # who may be served which name (claims); None: every name is public
    default: tuple[str, int] | None = None  # the pinned default model (Settings.default_model[_version])
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # Loaded models by (name, version, weights' SHA-256), least recently used first: a (name, version) whose
    # record now names other weights is another key, never served for the old one.
    _cache: "OrderedDict[Key, LoadedModel]" = field(default_factory=OrderedDict, repr=False)
    _sizes: dict[Key, int] = field(default_factory=dict, repr=False)
    _rescan_claims: dict[str, float] = field(default_factory=dict, repr=False)  # see get_if_ready
    _listings: dict[str, _Listing] = field(default_factory=dict, repr=False)  # names with versions only
    _unknown: "OrderedDict[str, float]" = field(default_factory=OrderedDict, repr=False)  # name → when looked up
    _missing: "OrderedDict[tuple[str, int], float]" = field(default_factory=OrderedDict, repr=False)  # likewise
    _failures: dict[tuple[int, str, int], _Failure] = field(default_factory=dict, repr=False)
    _verified: dict[tuple[int, str, int], tuple[Any, ...]] = field(default_factory=dict, repr=False)
    _scanned: tuple[float, dict[str, tuple[Catalogue, dict[int, str]]]] | None = field(default=None, repr=False)
    _ignored: set[str] = field(default_factory=set, repr=False)  # published names a bundled one hides (logged)
    _claims: tuple[float, dict[str, ModelName]] | None = field(default=None, repr=False)
    evaluations: EvaluationStore | None = None  # where evaluation results are filed, shown by `describe`
    batch_rows: int = BATCH_MAX  # the rows of every forward of the models it loads (LoadedModel.sample)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> "ModelRegistry":
        """The bundled models, then the published versions (the settings' database and storage): a bundled name
        is served from the bundled catalogue alone, whatever was published under it."""
        kwargs.setdefault("batch_rows", settings.batch_max)
        kwargs.setdefault("max_models", settings.model_cache_max_models)
        kwargs.setdefault("max_bytes", settings.model_cache_max_bytes)
        kwargs.setdefault("unknown_ttl_s", settings.unknown_model_ttl_s)
        kwargs.setdefault("default", (settings.default_model, settings.default_model_version))
        reserved = reserved_names(settings.bundled_models_dir)
        store = published(settings)
        kwargs.setdefault("names_store", ModelNames(store.rows.db, reserved))
        bundled = FolderCatalogue(settings.bundled_models_dir, "bundled")
        return cls([bundled, store], reserved=reserved, **kwargs)

    # --- lookup ---------------------------------------------------------------------------------------

    def get(self, name: str, version: int | None = None, sha256: str | None = None) -> LoadedModel:
        """The model `name` at `version` (the newest loadable one when None). With `sha256` (the render process,
        asked by the API) only a model with exactly those weights: another is a ModelNotFound, never served in
        its place. Raises ModelNotFound."""
        if not re.fullmatch(NAME_PATTERN, name):
            raise ModelNotFound(name, version, self.names())
        with self._lock:
            if sha256 and version is not None and (model := self._hit((name, version, sha256))) is not None:
                return model  # those very weights: whatever the name resolves to now, they are what was asked
            listing = self._listing(name, want=version, sha256=sha256)
            if listing.catalogue is None or not listing.versions:
                raise ModelNotFound(name, version, self.names())
            if version is not None:
                if version not in listing.versions:
                    have = sorted(listing.versions)
                    raise ModelNotFound(name, version, self.names(), reason=f"it has versions {have} only")
                expected = listing.versions[version]
                if sha256 and expected != sha256:
                    raise ModelNotFound(name, version, self.names(), reason=CHANGED)
                model = self._load(name, version, expected, listing.catalogue)
                if isinstance(model, _Failure):
                    raise ModelNotFound(name, version, self.names(), reason=model.reason)
                if sha256 and model.weights_sha256 != sha256:
                    raise ModelNotFound(name, version, self.names(), reason=CHANGED)
                return model
            reasons = []
            for v in sorted(listing.versions, reverse=True):
                model = self._load(name, v, listing.versions[v], listing.catalogue)
                if isinstance(model, LoadedModel):
                    return model
                reasons.append(f"version {v}: {model.reason}")
            raise ModelNotFound(name, None, self.names(), reason="; ".join(reasons))

    def get_default(self) -> LoadedModel:
        """The pinned default model (Settings.default_model at default_model_version), what a request naming
        no model is served; for /readyz, which fails when it cannot be. Raises ModelNotFound."""
        if self.default is None:
            raise ModelNotFound("", None, [], reason="this registry has no default model")
        return self.get(*self.default)

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
        versions = listing.versions
        if version is not None:
            return self._hit((name, version, versions[version])) if version in versions else None
        for v in sorted(versions, reverse=True):
            model = self._hit((name, v, versions[v]))
            if model is not None:
                return model
            if (id(listing.catalogue), name, v) not in self._failures:
                return None  # not loaded yet: `get` loads it
        return None

    def loaded(self) -> list[tuple[str, int]]:
        """(name, version) of every model in memory (for GET /stats); lock-free, like `get_if_ready`."""
        return sorted({(name, version) for name, version, _ in list(self._cache)})

    def _hit(self, key: Key) -> LoadedModel | None:
        model = self._cache.get(key)
        if model is not None:
            with contextlib.suppress(KeyError):  # dropped by another thread a moment ago: it was still right
                self._cache.move_to_end(key)
        return model

    def _listing(self, name: str, want: int | None, sha256: str | None = None) -> _Listing:
        now = self.clock()
        listing = self._listings.get(name)
        fresh = listing is not None and 0 <= now - listing.checked_at < self.rescan_interval_s
        # A version asked for by number and not yet known (or known with other weights than asked) is a cache
        # miss too: look now, not in a second.
        if (
            fresh
            and listing is not None
            and (want is None or want in listing.versions)
            and (not sha256 or want is None or listing.versions.get(want) == sha256)
        ):
            return listing
        if (
            listing is not None
            and want is not None
            and not sha256  # the API found that version: the render process looks again
            and want not in listing.versions
            and 0 <= now - self._missing.get((name, want), -inf) < self.unknown_ttl_s
        ):
            return listing  # that number was looked for a moment ago and not found: not asked again yet
        if listing is None and name in self._unknown and 0 <= now - self._unknown[name] < self.unknown_ttl_s:
            return _Listing(now, None, {})  # looked up a moment ago and not found: not asked again yet
        previous = listing
        try:
            listing = _Listing(now, None, {})
            for catalogue in self._catalogues_for(name):
                versions = catalogue.weights(name)
                if versions:
                    listing = _Listing(now, catalogue, versions)
                    break
        except (DatabaseUnavailable, OperationalError) as e:
            if previous is None:
                raise
            # The database does not answer: what was listed goes on being served, and is asked about again later.
            log.warning("model %s: the database does not answer (%s); serving what was listed", name, e)
            listing = _Listing(now, previous.catalogue, previous.versions)
        if previous and listing.versions and max(listing.versions) > max(previous.versions):
            log.info("model %s: found version %d", name, max(listing.versions))
        self._rescan_claims.pop(name, None)
        if not listing.versions:
            self._listings.pop(name, None)
            self._unknown[name] = now
            self._unknown.move_to_end(name)
            while len(self._unknown) > UNKNOWN_NAMES_MAX:
                self._unknown.popitem(last=False)
            return listing
        self._unknown.pop(name, None)
        self._listings[name] = listing
        if want is not None and want not in listing.versions:
            self._missing[(name, want)] = now
            self._missing.move_to_end((name, want))
            while len(self._missing) > UNKNOWN_NAMES_MAX:
                self._missing.popitem(last=False)
        if self.names_store is not None and not self.claims_fresh():
            # The claims with the listing, while the database answers: served from memory during an outage.
            with contextlib.suppress(DatabaseUnavailable, OperationalError):
                self.claims()
        return listing

    def _catalogues_for(self, name: str) -> list[Catalogue]:
        """A bundled name is the bundled catalogue's alone: what is published under it is never served."""
        if name in self.reserved:
            return [c for c in self.catalogues if c.source == "bundled"]
        return self.catalogues

    def _load(self, name: str, version: int, expected: str, catalogue: Catalogue) -> "LoadedModel | _Failure":
        cached = self._hit((name, version, expected))
        if cached is not None:
            return cached
        where = (id(catalogue), name, version)
        signature = catalogue.signature(name, version)
        failure = self._failures.get(where)
        if failure is not None and failure.signature == signature:
            return failure  # already logged; retried only when the version's files change
        started = time.perf_counter()
        try:
            stem = catalogue.stem(name, version)
            model = load_model(stem, name, version, catalogue.source, self.batch_rows)
            if expected and model.weights_sha256 != expected:
                raise CheckpointError(f"its weights' SHA-256 is not {expected[:12]}…, the one its record names")
        except CheckpointError as e:
            reason = public_reason(str(e))
            self._failures[where] = _Failure(signature, reason)
            log.error(
                "model %s version %d (%s) cannot be loaded and is skipped: %s", name, version, catalogue.source, e
            )
            return self._failures[where]
        self._failures.pop(where, None)
        self._verified[where] = signature
        key = (name, version, model.weights_sha256)
        self._cache[key] = model
        self._sizes[key] = weight_bytes(model.generator)
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
        self._evict(keep=key)
        return model

    def _evict(self, keep: Key) -> None:
        """Least recently used models out until at most `max_models` and `max_bytes` are held. The one just
        loaded stays (even alone above `max_bytes`: it is being served), and so does the pinned default model,
        which every request naming no model needs: a flood of other versions cannot make it reload."""
        while len(self._cache) > self.max_models or sum(self._sizes.values()) > self.max_bytes:
            victim = next((k for k in self._cache if k != keep and k[:2] != self.default), None)
            if victim is None:
                return
            self._cache.pop(victim, None)
            size = self._sizes.pop(victim, 0)
            log.info("model %s version %d unloaded (least recently used; %d bytes of weights)", *victim[:2], size)

    # --- access ---------------------------------------------------------------------------------------

    def claims(self) -> dict[str, ModelName]:
        """Every claimed name (owner, visibility, grantees), read again at most every `rescan_interval_s`; while
        the database does not answer, what was read last (nothing read yet: DatabaseUnavailable)."""
        now = self.clock()
        current = self._claims
        if self.names_store is None:
            return {}
        if current is not None and 0 <= now - current[0] < self.rescan_interval_s:
            return current[1]
        try:
            claims = self.names_store.all()
        except (DatabaseUnavailable, OperationalError) as e:
            if current is None:
                raise DatabaseUnavailable(f"the model names cannot be read: {e}") from None
            log.warning("model names: the database does not answer (%s); using what was read", e)
            claims = current[1]
        self._claims = (now, claims)
        return claims

    def claims_fresh(self) -> bool:
        """`claims()` would not read the database (the event loop may call it)."""
        current = self._claims
        return self.names_store is None or (
            current is not None and 0 <= self.clock() - current[0] < self.rescan_interval_s
        )

    def claim(self, name: str) -> ModelName | None:
        """Who `name` belongs to; None for a bundled name and a name nobody claimed (both public)."""
        return None if name in self.reserved else self.claims().get(name)

    def readable(self, name: str, key: str | None, *, admin: bool = False) -> bool:
        """May `key` (None: anonymous) be served `name` and see it listed (core/model_names.py)."""
        claim = self.claim(name)
        return claim is None or claim.readable_by(key, admin=admin)

    # --- listing --------------------------------------------------------------------------------------

    def names(self, key: str | None = None, *, admin: bool = True) -> list[str]:
        """Every name with at least one version (the readable ones when `admin` is False)."""
        return sorted(n for n in self._scan() if admin or self.readable(n, key))

    def _scan(self) -> dict[str, tuple[Catalogue, dict[int, str]]]:
        """Every name and its versions, read again at most every `rescan_interval_s` (a 404's list of names
        does not cost a full scan)."""
        now = self.clock()
        scanned = self._scanned
        if scanned is not None and 0 <= now - scanned[0] < self.rescan_interval_s:
            return scanned[1]
        found: dict[str, tuple[Catalogue, dict[int, str]]] = {}
        for catalogue in self.catalogues:
            for name in catalogue.names():
                if name in found or (name in self.reserved and catalogue.source != "bundled"):
                    if name in self.reserved and catalogue.source != "bundled" and name not in self._ignored:
                        self._ignored.add(name)
                        log.warning(
                            "model %s: versions published under this bundled model's name are ignored; the bundled "
                            "model is served",
                            name,
                        )
                    continue
                if versions := catalogue.weights(name):
                    found[name] = (catalogue, versions)
        self._scanned = (now, found)
        return found

    def list_models(self, key: str | None = None, *, admin: bool = True) -> list[dict[str, Any]]:
        """A summary per model `key` may read (every one for `admin`), from metadata (no weights loaded; the
        newest version's weights are checked against their SHA-256 once)."""
        return [
            self._summary(name, catalogue, versions)
            for name, (catalogue, versions) in self._scan().items()  # the bundled first, each by name
            if admin or self.readable(name, key)
        ]

    def describe(self, name: str, key: str | None = None, *, admin: bool = True) -> dict[str, Any]:
        """The summary of `name` plus one entry per version. Raises ModelNotFound (also for a name `key` may
        not read: its existence is not told)."""
        found = self._scan().get(name) if re.fullmatch(NAME_PATTERN, name) else None
        if found is None or not (admin or self.readable(name, key)):
            raise ModelNotFound(name, None, self.names(key, admin=admin))
        catalogue, versions = found
        summary = self._summary(name, catalogue, versions)
        summary["version_info"] = [
            {
                **_version_info(catalogue.entry(name, v), v),
                **_availability(self._unavailable(name, v, versions[v], catalogue, check=False)),
            }
            for v in sorted(versions)
        ]
        for info in summary["version_info"]:
            if info["version"] == summary["latest_version"]:
                info.update(available=True, reason=None)
        if self.evaluations is not None:
            for info in summary["version_info"]:
                info["evaluations"] = self.evaluations.results(name, info["version"], info.get("weights_sha256"))
        return summary

    def _unavailable(self, name: str, version: int, sha256: str, catalogue: Catalogue, *, check: bool) -> str | None:
        """Why the version cannot be served (None: it can, or it has not been tried and `check` is False). With
        `check`, a version not tried yet has its weights checked against their SHA-256 (once per change of its
        files): a corrupt or unreadable version is listed as such before anyone asks for it."""
        if sha256 and (name, version, sha256) in self._cache:
            return None
        where = (id(catalogue), name, version)
        failure, verified = self._failures.get(where), self._verified.get(where)
        if failure is None and verified is None and not check:
            return None
        signature = catalogue.signature(name, version)
        if failure is not None and failure.signature == signature:
            return failure.reason
        if verified is not None and verified == signature:
            return None
        if not check:
            return None
        try:
            verify_weights(catalogue.stem(name, version), sha256)
        except CheckpointError as e:
            log.error(
                "model %s version %d (%s) cannot be loaded and is skipped: %s", name, version, catalogue.source, e
            )
            self._failures[where] = _Failure(signature, public_reason(str(e)))
            return self._failures[where].reason
        self._failures.pop(where, None)
        self._verified[where] = signature
        return None

    def _summary(self, name: str, catalogue: Catalogue, versions: dict[int, str]) -> dict[str, Any]:
        """The model's summary; its `latest_version` is the newest version that can be served (what /generate
        serves without a version), None when none can."""
        latest, reasons = None, []
        with self._lock:
            for v in sorted(versions, reverse=True):
                reason = self._unavailable(name, v, versions[v], catalogue, check=True)
                if reason is None:
                    latest = v
                    break
                reasons.append(f"version {v}: {reason}")
        shown = latest if latest is not None else max(versions)
        info = _version_info(catalogue.entry(name, shown), shown)
        claim = self.claim(name)
        return {
            "name": name,
            "source": catalogue.source,
            "latest_version": latest,
            "versions": sorted(versions),
            "available": latest is not None,
            "reason": None if latest is not None else "; ".join(reasons),
            "owner": claim.owner if claim is not None else None,
            "visibility": claim.visibility if claim is not None else "public",
            "latent_dim": info.get("latent_dim"),
            "image_shape": info.get("image_shape"),
            "value_range": info.get("value_range"),
            "training": info.get("training"),
            "error": info.get("error"),
            **{k: info.get(k) for k in GENERATION_FIELDS},
            # Not in the API's summary: which weights `latest_version`'s evaluations must have measured (its card).
            "weights_sha256": versions[latest] if latest is not None else None,
        }


CHANGED = (
    "its weights are not the ones the request was resolved to (a version published again under that number); "
    "send the request again"
)


def _availability(reason: str | None) -> dict[str, Any]:
    return {"available": reason is None, "reason": reason}


_PATH = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://[^\s'\":,;]*|(?<![\w.])/[^\s'\":,;]+)")


def public_reason(reason: str) -> str:
    """A load failure's reason as clients may read it: every path and URL (the volume's, a bucket's) replaced by
    what it was, the file's kind (the log keeps the full message)."""

    def kind(match: re.Match[str]) -> str:
        text = match.group(0)
        if text.endswith(".safetensors"):
            return "the weights file"
        if text.endswith(".json"):
            return "the metadata file"
        return "the checkpoint"

    return _PATH.sub(kind, reason)


def weight_bytes(module: nn.Module) -> int:
    """The bytes a module's parameters and buffers hold (what a loaded model costs, for the cache's bound)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def verify_weights(stem: Path, sha256: str) -> None:
    """The weights file of checkpoint `stem` is readable and has SHA-256 `sha256` (its metadata's when "").
    Raises CheckpointError."""
    expected = sha256 or str(load_metadata(stem).get("sha256", ""))
    path = stem.with_suffix(".safetensors")
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:
        raise CheckpointError(f"{path} is not readable: {e.strerror}") from None
    if digest.hexdigest() != expected:
        raise CheckpointError(f"{path} has SHA-256 {digest.hexdigest()[:12]}…, its record says {expected[:12]}…")


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
        "recipe": config.get("recipe"),
    }


def _version_info(entry: Entry, version: int) -> dict[str, Any]:
    info: dict[str, Any] = {"version": version, "has_samples": entry.has_samples}
    meta = entry.meta
    if meta is None:
        return {**info, "error": public_reason(entry.error or "its metadata cannot be read")}
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
