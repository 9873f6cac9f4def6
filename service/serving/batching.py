"""The render process's batching, without sockets: requests in, finished answers (or per-request failures) out.

A request names a model version and the SHA-256 of the weights the API resolved it to, and gives its rows (seeds
or latents, with their labels and MAD-GAN generator indices) and the form of its answer
(service/serving/encoding.py). `Batching` holds requests until `batch_rows`
rows wait or the oldest has waited `max_wait_s` (Triton's `max_queue_delay`); `render()` then runs each
model's waiting rows through `LoadedModel.render`, in padded forwards of exactly `batch_rows` rows, so that an
image depends on its own row only, never on what it was batched with. A model version that cannot be loaded,
or whose weights are not the ones asked for, or a render that raises, fails the requests concerned and no others.
Models are kept by the registry (bounded, service/serving/registry.py), not here: `load` is asked every time.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from service.serving.encoding import Form, finish
from service.serving.registry import LoadedModel, ModelNotFound
from training.latents import latent_from_seed, latents_from_seeds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Seeds:
    """Rows given by their seeds: the latents are drawn where the forward runs (training/latents.py)."""

    seeds: list[int]


Rows = torch.Tensor | Seeds
"""A request's rows: N×latent_dim float32 latents, or N seeds."""


def latents_of(rows: Rows, latent_dim: int) -> torch.Tensor:
    if not isinstance(rows, Seeds):
        return rows
    if len(rows.seeds) == 1:  # the common case, without a stack
        return latent_from_seed(rows.seeds[0], latent_dim).unsqueeze(0)
    return latents_from_seeds(rows.seeds, latent_dim)


@dataclass(frozen=True)
class Request:
    rid: int  # the caller's id for it, returned with its answer
    name: str
    version: int
    rows: Rows
    labels: list[int] | None = None  # conditional models: one class per row
    generators: list[int] | None = None  # MAD-GAN models: one generator index per row
    form: Form = "grid"
    duration_ms: int = 100  # animations: how long each image shows
    sha256: str | None = None  # the weights to render with (the API resolved them): no others; None: any

    @property
    def n(self) -> int:
        return len(self.rows.seeds) if isinstance(self.rows, Seeds) else int(self.rows.shape[0])


@dataclass(frozen=True)
class Answer:
    rid: int
    output: list[bytes] | bytes  # `finish(request.form, images)`


@dataclass(frozen=True)
class Failure:
    rid: int
    kind: Literal["model", "render"]  # model: the version could not be loaded; render: the forward or encoding raised
    message: str


@dataclass
class Rendered:
    """What one `render()` made: an answer or a failure per request, and the real rows of each forward run."""

    outcomes: list[Answer | Failure] = field(default_factory=list)
    forwards: list[int] = field(default_factory=list)


@dataclass
class _Waiting:
    request: Request
    model: LoadedModel


class Batching:
    """`load(name, version[, sha256])` gives a model (ModelRegistry.get: cheap for a loaded one, which it keeps
    within its bounds); asked for every request, so that a model the registry dropped is not held here."""

    def __init__(
        self,
        load: Callable[..., LoadedModel],
        batch_rows: int,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        if batch_rows < 1 or max_wait_s < 0:
            raise ValueError(f"batch_rows {batch_rows} must be ≥ 1 and max_wait_s {max_wait_s} ≥ 0")
        self.batch_rows = batch_rows
        self.max_wait_s = max_wait_s
        self._load = load
        self._clock = clock
        self._waiting: list[_Waiting] = []
        self._rows = 0
        self._oldest = 0.0  # when the oldest waiting request arrived

    @property
    def waiting(self) -> int:
        """Requests added and not rendered yet."""
        return len(self._waiting)

    def model(self, name: str, version: int, sha256: str | None = None) -> LoadedModel:
        """The model version (with exactly the weights `sha256` when given), loaded (and warmed up) on first
        use. Raises ModelNotFound."""
        model = self._load(name, version) if sha256 is None else self._load(name, version, sha256)
        if sha256 is not None and model.weights_sha256 != sha256:  # a loader that cannot honour it: refused
            raise ModelNotFound(name, version, [], reason="its weights are not the ones the request names")
        return model

    def add(self, request: Request) -> Failure | None:
        """Queue a request; a failure at once (nothing queued) when its model version cannot be loaded."""
        try:
            model = self.model(request.name, request.version, request.sha256)
        except ModelNotFound as e:
            return Failure(request.rid, "model", str(e))
        problem = _mismatch(request, model)
        if problem is not None:  # refused alone, rather than failing the forward it would share
            return Failure(request.rid, "render", f"{model.name} v{model.version}: {problem}")
        if not self._waiting:
            self._oldest = self._clock()
        self._waiting.append(_Waiting(request, model))
        self._rows += request.n
        return None

    def wait_s(self) -> float | None:
        """How long until `due()` unless more rows come: None when nothing waits, 0 when due now."""
        if not self._waiting:
            return None
        if self._rows >= self.batch_rows:
            return 0.0
        return max(0.0, self._oldest + self.max_wait_s - self._clock())

    def due(self) -> bool:
        """Something waits, and a forward's worth of rows or the oldest request's wait is up."""
        return bool(self._waiting) and (
            self._rows >= self.batch_rows or self._clock() >= self._oldest + self.max_wait_s
        )

    def render(self) -> Rendered:
        """Render and encode every waiting request, each model's rows together."""
        by_model: dict[int, list[_Waiting]] = {}
        for w in self._waiting:
            by_model.setdefault(id(w.model), []).append(w)
        self._waiting, self._rows = [], 0
        rendered = Rendered()
        for group in by_model.values():
            self._render_group(group, rendered)
        return rendered

    def _render_group(self, group: list[_Waiting], rendered: Rendered) -> None:
        model = group[0].model
        try:
            latents = torch.cat([latents_of(w.request.rows, model.latent_dim) for w in group])
            labels = join_columns([w.request.labels for w in group])
            generators = join_columns([w.request.generators for w in group])
            images = model.render(latents, labels, generators)
        except Exception as e:  # a broken model or a bad request: these requests fail, the others are served
            log.exception("rendering %d request(s) of %s v%d failed", len(group), model.name, model.version)
            rendered.outcomes += [Failure(w.request.rid, "render", f"rendering failed: {e!r}") for w in group]
            return
        total = int(latents.shape[0])
        rendered.forwards += [min(model.batch_rows, total - start) for start in range(0, total, model.batch_rows)]
        at = 0
        for w in group:
            r = w.request
            try:
                rendered.outcomes.append(Answer(r.rid, finish(r.form, images[at : at + r.n], r.duration_ms)))
            except Exception as e:
                log.exception("encoding request %d failed", r.rid)
                rendered.outcomes.append(Failure(r.rid, "render", f"encoding failed: {e!r}"))
            at += r.n


def _mismatch(request: Request, model: LoadedModel) -> str | None:
    n = request.n
    if n == 0:
        return "a request needs at least one row"
    if not isinstance(request.rows, Seeds) and tuple(request.rows.shape) != (n, model.latent_dim):
        return f"latents of shape {tuple(request.rows.shape)}, not {n}×{model.latent_dim}"
    for what, column, wanted in (
        ("labels", request.labels, model.num_classes is not None),
        ("generator indices", request.generators, model.num_generators is not None),
    ):
        if (column is not None) != wanted:
            return f"{what} {'missing' if wanted else 'given'}"
        if column is not None and len(column) != n:
            return f"{len(column)} {what} for {n} rows"
    return None


def join_columns(parts: list[list[int] | None]) -> list[int] | None:
    """The labels (or generator indices) of a forward's requests: all present, or all absent."""
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts):
        raise ValueError("requests with and without labels / generator indices cannot share a forward")
    return [v for p in parts if p is not None for v in p]
