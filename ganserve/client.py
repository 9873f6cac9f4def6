"""A typed Python client of the ganserve API, on httpx.

    from ganserve import Client

    with Client("http://127.0.0.1:8000", api_key="gsk_…") as api:
        api.generate(seed=42).save("digit.png")
        job = api.wait(api.train({"model_name": "my-digits", "epochs": 5}).id)

Only what the server offers, typed: every answer with a known shape comes back as one of the models below,
every error answer as a `GanserveError` carrying the server's `{"error", "message", "detail"}`. Datasets are
the exception: they come back as the server's JSON objects (dicts), as the datasets API contract has them.

Light on purpose: httpx and pydantic (and `core.train_config`, which is pydantic only), never torch or
FastAPI, so a script that only talks to a server starts at once. The response models therefore mirror the
server's (service/api/schemas.py, core/jobs.py, core/evaluations.py) rather than import them;
tests/cli/test_client.py checks that every field here is one the server sends. They keep unknown fields
(`extra="allow"`), so a newer server does not break an older client.
"""

import base64
import itertools
import os
import secrets
import stat
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field

from core.train_config import TrainConfig

DEFAULT_URL = "http://127.0.0.1:8000"
SERVER_ENV = "GANSERVE_SERVER"
API_KEY_ENV = "GANSERVE_API_KEY"
DEFAULT_TIMEOUT_S = 30.0
DATASET_ANSWER_TIMEOUT_S = 600.0  # the server decodes every image of an upload before it answers
UPLOAD_CHUNK = 256 * 1024  # bytes read from disk and sent at a time
MAX_SEED = 2**32 - 1  # training.latents.MAX_SEED, repeated here to keep torch out of the client

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


# --- errors ---------------------------------------------------------------------------------------------


class GanserveError(Exception):
    """An error answer of the server (`status` its HTTP status, `code` its `error`), or no answer at all
    (`status` None)."""

    def __init__(
        self, status: int | None, code: str, message: str, detail: Any = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.retry_after = retry_after  # seconds, from `Retry-After` (429, 503)

    def __str__(self) -> str:
        return self.message if self.status is None else f"{self.message} (HTTP {self.status} {self.code})"


class ServerUnreachable(GanserveError):
    """Nothing answers at the URL (connection refused, unknown host)."""


class WaitTimeout(GanserveError):
    """`wait` gave up before the job finished; the job itself goes on."""


class LeftOut(UserWarning):
    """Entries of a folder that an upload does not include: symbolic links (never followed) and anything that is
    not a regular file."""


# --- what the server answers ----------------------------------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Health(_Answer):
    status: str


class Check(_Answer):
    ok: bool
    detail: str


class Readiness(_Answer):
    status: str
    checks: dict[str, Check]


class TrainingSummary(_Answer):
    dataset: str | None = None
    epochs: int | None = None
    epoch: int | None = None
    step: int | None = None
    losses: dict[str, float] = Field(default_factory=dict)
    created_at: datetime | None = None


class _GenerationInfo(_Answer):
    latent_dim: int | None = None
    image_shape: list[int] | None = None
    value_range: list[float] | None = None
    training: TrainingSummary | None = None
    kind: str | None = None  # `image`, or `points` for toy models (not rendered by /generate)
    sample_shape: list[int] | None = None
    architecture: str | None = None
    conditional: bool | None = None
    num_classes: int | None = None
    num_generators: int | None = None
    error: str | None = None


class ModelVersion(_GenerationInfo):
    version: int
    has_samples: bool = False
    weights_sha256: str | None = None
    available: bool = True  # False: this version cannot be served (`reason` says why)
    reason: str | None = None
    evaluations: list[dict[str, Any]] = Field(default_factory=list)  # metrics, newest first; keys vary by extractor


class ModelSummary(_GenerationInfo):
    name: str
    source: str  # `volume` or `bundled`
    latest_version: int | None  # the newest servable version; None when none can be served (`reason` says why)
    versions: list[int]
    available: bool = True
    reason: str | None = None
    owner: str | None = None  # the key that owns the name; None for bundled and unclaimed names
    visibility: str = "public"  # or `private`


class RecipeQuality(_Answer):
    """What a recipe reached on the server's project: metrics of one run and where they are written down."""

    metrics: dict[str, float]
    samples: int
    feature_space: str
    run: str
    source: str


class Recipe(_Answer):
    """A named set of training defaults a job may name with `"recipe"`: the fields it sets (a job's own win)."""

    name: str
    description: str
    datasets: list[str]
    sets: dict[str, Any]
    quality: RecipeQuality | None = None  # None: not measured yet (`quality_note`)
    quality_note: str = ""


class RecipeList(_Answer):
    recipes: list[Recipe]
    defaults: dict[str, str] = Field(default_factory=dict)  # dataset → the recipe a job naming none gets


class ModelDetail(ModelSummary):
    version_info: list[ModelVersion]


class ModelAccess(_Answer):
    """Who a model name belongs to and who may be served it (PATCH /models/{name}, /models/{name}/grants)."""

    name: str
    owner: str | None  # an API key's name; None: the operator's (published not over HTTP)
    visibility: str  # `public` or `private`
    grants: list[str] = Field(default_factory=list)  # keys granted read access
    created_at: datetime


class Progress(_Answer):
    epoch: int = 0
    epochs: int
    step: int = 0
    total_steps: int
    fraction: float = 0.0
    images_per_sec: float | None = None
    eta_seconds: float | None = None


class Epoch(_Answer):
    epoch: int
    step: int
    losses: dict[str, float | None]
    evaluation: dict[str, Any] | None = None


class PublishedModel(_Answer):
    name: str
    version: int


class JobResources(_Answer):
    """The GPUs a job asked for (or the server chose: `requested` false) and the queue it was sent to; `gpus`
    None: any worker (it was sent before any worker had advertised itself)."""

    gpus: int | None
    queue: str
    requested: bool


class Worker(_Answer):
    """A worker process as it advertises itself (GET /workers)."""

    name: str
    worker_class: Literal["cpu", "gpu"] = Field(alias="class")
    devices: list[int]
    queues: list[str]
    host: str
    pid: int
    started_at: datetime
    last_seen: datetime
    live: bool


class Job(_Answer):
    """A training job's record (GET /train/{id})."""

    id: str
    status: Status
    config: TrainConfig
    progress: Progress | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict)
    samples: list[str] = Field(default_factory=list)
    history: list[Epoch] = Field(default_factory=list)
    evaluation_skipped: str | None = None
    model: PublishedModel | None = None
    error: str | None = None
    resources: JobResources | None = None
    waiting_for: str | None = Field(None, description="A queued job no live worker can take: what it waits for.")
    attempts: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class Evaluation(_Answer):
    """An evaluation job (POST /models/{name}/evaluate); `result` holds the metrics once it succeeded."""

    id: str
    status: Status
    model: str
    version: int
    stage: str | None = None
    result: dict[str, Any] | None = None
    nearest_neighbours_png: str | None = None
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class GeneratedImage:
    """One PNG from /generate (a grid when `count` > 1) and what made it, from the answer's headers."""

    png: bytes
    model: str
    version: int
    seed: int | None  # the (first) seed; None for an explicit latent
    labels: list[int] | None = None  # class-conditional models: the class of each image
    generators: list[int] | None = None  # MAD-GAN: the generator of each image

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.write_bytes(self.png)
        return path


def _ints(header: str | None) -> list[int] | None:
    return None if header is None else [int(x) for x in header.split(",") if x]


class _Images(_Answer):  # the `Accept: application/json` answer of /generate
    model: str
    version: int
    seeds: list[int] | None
    images: list[str]
    labels: list[int] | None = None
    generators: list[int] | None = None


InterpolationFormat = Literal["png", "apng", "gif"]


@dataclass(frozen=True)
class Interpolation:
    """The answer of /interpolate: a PNG strip, an APNG or a GIF (`media_type` says which) and what made it."""

    data: bytes
    media_type: str  # image/png, image/apng or image/gif
    model: str
    version: int
    seeds: tuple[int, int]  # from, to
    label: int | None = None  # class-conditional models: the class of every frame
    generator: int | None = None  # MAD-GAN: the generator of every frame

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.write_bytes(self.data)
        return path


# --- the client -----------------------------------------------------------------------------------------

Polled = TypeVar("Polled", Job, Evaluation)


class Client:
    """`base_url`: default `GANSERVE_SERVER`, else http://127.0.0.1:8000. `api_key`: default
    `GANSERVE_API_KEY`; sent as `Authorization: Bearer <key>`. `http`: an httpx.Client to use instead of
    making one (e.g. FastAPI's TestClient, for the app in-process); it is then the caller's to close."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        http: httpx.Client | None = None,
    ):
        self.api_key = api_key or os.environ.get(API_KEY_ENV) or None
        self._auth = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._owned = http is None
        self._http = http or httpx.Client(
            base_url=(base_url or os.environ.get(SERVER_ENV) or DEFAULT_URL).rstrip("/"), timeout=timeout
        )
        self.base_url = str(self._http.base_url).rstrip("/")
        self.timeout = timeout
        self.sleep: Callable[[float], None] = time.sleep  # replaced by tests to step jobs between polls

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r}, api_key={'…' if self.api_key else None})"

    # --- transport ---

    def _request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        answer_timeout: float | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """`answer_timeout`: seconds to wait for the answer once the request is sent, when the server works
        longer than `timeout` before it answers."""
        url = f"{self.base_url}{path}"
        if answer_timeout is not None:
            kw["timeout"] = httpx.Timeout(self.timeout, read=answer_timeout)
        try:
            response = self._http.request(method, path, headers={**self._auth, **(headers or {})}, **kw)
        except httpx.ConnectError as e:
            raise ServerUnreachable(
                None, "unreachable", f"no ganserve at {self.base_url} ({e}): start it with `ganserve serve`"
            ) from None
        except httpx.TimeoutException as e:
            waited = answer_timeout if answer_timeout is not None and isinstance(e, httpx.ReadTimeout) else self.timeout
            raise GanserveError(None, "timeout", f"{method} {url} got no answer within {waited:g} s") from None
        except httpx.TransportError as e:
            raise GanserveError(None, "transport_error", f"{method} {url} failed: {type(e).__name__}: {e}") from None
        if response.is_error:
            raise _error(response)
        return response

    def _get(self, path: str, **kw: Any) -> httpx.Response:
        return self._request("GET", path, **kw)

    # --- health ---

    def health(self) -> Health:
        """Liveness: the process answers."""
        return Health.model_validate_json(self._get("/healthz").content)

    def ready(self) -> Readiness:
        """Readiness: the broker answers and the default model loads (a 503 raises, code `not_ready`)."""
        return Readiness.model_validate_json(self._get("/readyz").content)

    # --- models and images ---

    def models(self) -> list[ModelSummary]:
        return [ModelSummary.model_validate(m) for m in self._get("/models").json()["models"]]

    def model(self, name: str) -> ModelDetail:
        """One model with all its versions and their evaluations."""
        return ModelDetail.model_validate_json(self._get(f"/models/{_seg(name)}").content)

    def generate(
        self,
        seed: int | None = None,
        latent: list[float] | None = None,
        model: str | None = None,
        version: int | None = None,
        count: int = 1,
        label: int | None = None,
    ) -> GeneratedImage:
        """One PNG: the image of `seed` (random when neither it nor `latent` is given), or a grid of seeds
        seed … seed+count−1. By seed it is GET /generate (cacheable, same bytes for the same seed, model and
        version); an explicit latent is POSTed."""
        if latent is not None:
            body = _without_none(latent=latent, model=model, version=version, count=count, label=label)
            response = self._request("POST", "/generate", json=body, headers={"Accept": "image/png"})
        else:
            params = _without_none(seed=seed, model=model, version=version, count=count, label=label)
            response = self._get("/generate", params=params, headers={"Accept": "image/png"})
        h = response.headers
        seed_header = h.get("x-seed")
        return GeneratedImage(
            png=response.content,
            model=h["x-model"],
            version=int(h["x-model-version"]),
            seed=None if seed_header is None else int(seed_header),
            labels=_ints(h.get("x-labels")),
            generators=_ints(h.get("x-generators")),
        )

    def images(
        self,
        seed: int | None = None,
        count: int = 1,
        model: str | None = None,
        version: int | None = None,
        label: int | None = None,
    ) -> list[GeneratedImage]:
        """Seeds seed … seed+count−1 as one PNG each, in one request (the JSON answer of /generate); each
        equals `generate(seed=s)`'s. `count` is bounded by the server's GANSERVE_MAX_COUNT."""
        params = _without_none(seed=seed, model=model, version=version, count=count, label=label)
        answer = _Images.model_validate_json(
            self._get("/generate", params=params, headers={"Accept": "application/json"}).content
        )
        seeds = answer.seeds or [None] * len(answer.images)
        return [
            GeneratedImage(
                png=base64.b64decode(png),
                model=answer.model,
                version=answer.version,
                seed=s,
                labels=None if answer.labels is None else [answer.labels[i]],
                generators=None if answer.generators is None else [answer.generators[i]],
            )
            for i, (s, png) in enumerate(zip(seeds, answer.images, strict=True))
        ]

    def interpolate(
        self,
        from_seed: int,
        to_seed: int,
        steps: int = 8,
        model: str | None = None,
        version: int | None = None,
        label: int | None = None,
        format: InterpolationFormat = "png",
        duration_ms: int = 100,
    ) -> Interpolation:
        """GET /interpolate: `steps` images on the slerp from seed `from_seed`'s latent to `to_seed`'s, both ends
        included (the first and last are `generate(seed=…)`'s images), as a strip PNG (`format="png"`), or an
        animated PNG (`"apng"`) or GIF (`"gif"`) showing each frame for `duration_ms`."""
        params = _without_none(
            model=model, version=version, steps=steps, label=label, format=format, duration_ms=duration_ms
        )
        response = self._get("/interpolate", params={"from": from_seed, "to": to_seed, **params})
        h = response.headers
        first, last = (int(s) for s in h["x-seeds"].split(","))
        return Interpolation(
            data=response.content,
            media_type=h["content-type"].split(";")[0].strip(),
            model=h["x-model"],
            version=int(h["x-model-version"]),
            seeds=(first, last),
            label=None if h.get("x-label") is None else int(h["x-label"]),
            generator=None if h.get("x-generator") is None else int(h["x-generator"]),
        )

    # --- training ---

    def train(self, config: Mapping[str, Any] | TrainConfig, idempotency_key: str | None = None) -> Job:
        """Queue a training job (the body of POST /train: a TrainConfig, plus `webhook` if wanted); needs a key
        with scope `train`. A retry with the same `idempotency_key` returns the first job instead of a second."""
        body = config.model_dump(mode="json", exclude_unset=True) if isinstance(config, TrainConfig) else dict(config)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return Job.model_validate_json(self._request("POST", "/train", json=body, headers=headers).content)

    def recipes(self) -> RecipeList:
        """The recipes a training job may name (GET /recipes), with what each sets and the quality it reached, and
        the default recipe of each dataset."""
        return RecipeList.model_validate_json(self._get("/recipes").content)

    def recipe(self, name: str) -> Recipe:
        """One recipe (GET /recipes/{name}); a GanserveError 404 `recipe_not_found` names the known ones."""
        return Recipe.model_validate_json(self._get(f"/recipes/{_seg(name)}").content)

    def workers(self) -> list[Worker]:
        """Every worker that advertised itself, with `live`; needs a key with scope `admin`."""
        return [Worker.model_validate(w) for w in self._get("/workers").json()["workers"]]

    def jobs(self) -> list[Job]:
        """Every training job, newest first."""
        return [Job.model_validate(j) for j in self._get("/train").json()["jobs"]]

    def job(self, job_id: str) -> Job:
        return Job.model_validate_json(self._get(f"/train/{_seg(job_id)}").content)

    def cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once; a running one stops at its next step (409 once finished)."""
        return Job.model_validate_json(self._request("DELETE", f"/train/{_seg(job_id)}").content)

    def wait(
        self,
        job_id: str,
        poll_s: float = 2.0,
        timeout_s: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll a training job until it succeeds, fails or is cancelled; `on_progress` sees every record
        polled. Raises WaitTimeout after `timeout_s` (the job goes on)."""
        return self._poll(lambda: self.job(job_id), f"job {job_id}", poll_s, timeout_s, on_progress)

    # --- evaluation ---

    def evaluate(
        self, model: str, version: int | None = None, n: int | None = None, extractor: str | None = None
    ) -> Evaluation:
        """Queue an evaluation of `model` (default its newest version) on the worker: n generated images
        (seeds 0..n−1) against n training images; the server's defaults where None. Needs the model's owner's key
        (scope `train`) or scope `admin`."""
        body = _without_none(version=version, n=n, extractor=extractor)
        return Evaluation.model_validate_json(
            self._request("POST", f"/models/{_seg(model)}/evaluate", json=body).content
        )

    def evaluation(self, model: str, evaluation_id: str) -> Evaluation:
        return Evaluation.model_validate_json(
            self._get(f"/models/{_seg(model)}/evaluations/{_seg(evaluation_id)}").content
        )

    def wait_evaluation(
        self,
        model: str,
        evaluation_id: str,
        poll_s: float = 2.0,
        timeout_s: float | None = None,
        on_progress: Callable[[Evaluation], None] | None = None,
    ) -> Evaluation:
        """Poll an evaluation until it finishes (see `wait`)."""
        return self._poll(
            lambda: self.evaluation(model, evaluation_id), f"evaluation {evaluation_id}", poll_s, timeout_s, on_progress
        )

    # --- a model's owner: visibility and grants (its owner's key, scope `train`, or an admin key) ---

    def set_visibility(self, model: str, visibility: str) -> ModelAccess:
        """Make `model` `public` (served to every caller) or `private` (its owner, admin keys and the keys granted
        read access)."""
        r = self._request("PATCH", f"/models/{_seg(model)}", json={"visibility": visibility})
        return ModelAccess.model_validate_json(r.content)

    def model_access(self, model: str) -> ModelAccess:
        """Its owner, visibility and the keys granted read access."""
        return ModelAccess.model_validate_json(self._get(f"/models/{_seg(model)}/grants").content)

    def grant(self, model: str, key_name: str) -> ModelAccess:
        """Serve `model` to the API key named `key_name` even while it is private (granting again changes nothing)."""
        return ModelAccess.model_validate_json(
            self._request("PUT", f"/models/{_seg(model)}/grants/{_seg(key_name)}").content
        )

    def revoke_grant(self, model: str, key_name: str) -> ModelAccess:
        """Take that key's read access away (404 `grant_not_found` when it had none)."""
        return ModelAccess.model_validate_json(
            self._request("DELETE", f"/models/{_seg(model)}/grants/{_seg(key_name)}").content
        )

    # --- datasets ---

    def upload_dataset(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        image_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """POST /datasets (scope `train`): a folder of images (class sub-folders → labels) or a file as it is
        (a .zip, .tar, .tar.gz or .tgz of images, or MNIST IDX files); the new dataset's JSON. A folder is first
        archived to a temporary .tar (`archive_folder`; what it leaves out is a `LeftOut` warning). The body is
        streamed from disk; `progress(sent, total)` sees the bytes sent, from 0 to the body's length, after
        which the server decodes every image before it answers (up to DATASET_ANSWER_TIMEOUT_S).
        `image_size`: the server centre-crops and resizes every image to it."""
        path = Path(path)
        if not path.is_dir():
            return self._upload(path, name, image_size, progress)
        with tempfile.TemporaryDirectory(prefix="ganserve-upload-") as tmp:
            archive = Path(tmp) / f"{path.resolve().name or 'dataset'}.tar"
            left_out = archive_folder(path, archive)
            if left_out:
                shown = ", ".join(left_out[:5]) + (" …" if len(left_out) > 5 else "")
                warnings.warn(
                    f"left out {len(left_out)} entr{'y' if len(left_out) == 1 else 'ies'} of {path} that "
                    f"{'is' if len(left_out) == 1 else 'are'} not a regular file (links are not followed): "
                    f"{shown}; copy the files themselves in to include them",
                    LeftOut,
                    stacklevel=2,
                )
            return self._upload(archive, name, image_size, progress)

    def _upload(
        self, file: Path, name: str | None, image_size: int | None, progress: Callable[[int, int], None] | None
    ) -> dict[str, Any]:
        headers, body = multipart(file, _without_none(name=name, image_size=image_size), progress)
        response = self._request(
            "POST", "/datasets", content=body, headers=headers, answer_timeout=DATASET_ANSWER_TIMEOUT_S
        )
        return response.json()

    def datasets(self) -> list[dict[str, Any]]:
        """The caller's uploaded datasets (an admin key: everyone's)."""
        return self._get("/datasets").json()["datasets"]

    def dataset(self, id_or_name: str) -> dict[str, Any]:
        return self._get(f"/datasets/{_seg(id_or_name)}").json()

    def dataset_preview(self, dataset_id: str) -> bytes:
        """A PNG grid of the dataset's first images."""
        return self._get(f"/datasets/{_seg(dataset_id)}/preview.png").content

    def delete_dataset(self, dataset_id: str) -> None:
        """Refused (409 `dataset_in_use`, naming the jobs) while a queued or running job uses it."""
        self._request("DELETE", f"/datasets/{_seg(dataset_id)}")

    def _poll(
        self,
        fetch: Callable[[], Polled],
        what: str,
        poll_s: float,
        timeout_s: float | None,
        on_progress: Callable[[Polled], None] | None,
    ) -> Polled:
        started = time.monotonic()
        while True:
            record = fetch()
            if on_progress is not None:
                on_progress(record)
            if record.finished:
                return record
            if timeout_s is not None and time.monotonic() - started >= timeout_s:
                raise WaitTimeout(
                    None,
                    "timeout",
                    f"{what} is still {record.status} after {timeout_s:g} s; it goes on on the server",
                    detail={"id": record.id, "status": record.status},
                )
            self.sleep(poll_s)


# --- uploads --------------------------------------------------------------------------------------------


def archive_folder(folder: Path, target: Path) -> list[str]:
    """Write `folder`'s regular files to the tar `target`, each under its path relative to `folder` (so class
    sub-folders stay), in sorted order, with their bytes, size, mode and time as they are (no owner names).
    Links are never followed: neither a file's nor a folder's. One file at a time, in chunks, and no list of
    members, so memory stays flat however big the folder. Returns what it left out (relative paths)."""
    left_out: list[str] = []
    with target.open("wb") as out:
        for path, relative in _walk(folder, left_out):
            info = tarfile.TarInfo(relative)
            with path.open("rb") as src:
                st = os.fstat(src.fileno())
                info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), stat.S_IMODE(st.st_mode)
                out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
                _copy_exactly(src, out, st.st_size, path)
            out.write(bytes(-st.st_size % tarfile.BLOCKSIZE))
        out.write(bytes(2 * tarfile.BLOCKSIZE))  # the end-of-archive marker
        out.write(bytes(-out.tell() % tarfile.RECORDSIZE))
    return left_out


def _walk(folder: Path, left_out: list[str], prefix: str = "") -> Iterator[tuple[Path, str]]:
    with os.scandir(folder) as listing:
        entries = sorted(listing, key=lambda e: e.name)
    for entry in entries:
        relative = f"{prefix}{entry.name}"
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), left_out, f"{relative}/")
        elif entry.is_file(follow_symlinks=False):
            yield Path(entry.path), relative
        else:
            left_out.append(relative)


def _copy_exactly(src: BinaryIO, out: BinaryIO, size: int, path: Path) -> None:
    """`size` bytes of `src` to `out` (what the tar header promised, even if the file grows meanwhile)."""
    for chunk in _chunks(src, size, path):
        out.write(chunk)


def _chunks(src: BinaryIO, size: int, path: Path) -> Iterator[bytes]:
    left = size
    while left > 0:
        chunk = src.read(min(UPLOAD_CHUNK, left))
        if not chunk:
            raise OSError(f"{path} got shorter while it was read ({size - left} of {size} bytes); try again")
        left -= len(chunk)
        yield chunk


def multipart(
    file: Path, fields: Mapping[str, Any], progress: Callable[[int, int], None] | None = None
) -> tuple[dict[str, str], Iterator[bytes]]:
    """A `multipart/form-data` body: the text `fields`, then `file` in the field `file`. Its headers (with the
    Content-Length, known up front) and its bytes in chunks, read from disk as they are taken;
    `progress(sent, total)` is told after each chunk is taken (httpx takes the next one once it has written the
    last), from (0, total) to (total, total)."""
    boundary = f"ganserve-{secrets.token_hex(16)}"
    text = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{_param(k)}"\r\n\r\n{v}\r\n' for k, v in fields.items()
    )
    text += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{_param(file.name)}"\r\n'
        f"Content-Type: {_media_type(file.name)}\r\n\r\n"
    )
    head, tail = text.encode(), f"\r\n--{boundary}--\r\n".encode()
    size = file.stat().st_size
    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(head) + size + len(tail)),
    }
    return headers, _body(head, file, size, tail, progress or (lambda sent, total: None))


def _body(head: bytes, file: Path, size: int, tail: bytes, progress: Callable[[int, int], None]) -> Iterator[bytes]:
    total = len(head) + size + len(tail)
    progress(0, total)
    sent = 0
    with file.open("rb") as src:
        for chunk in itertools.chain([head], _chunks(src, size, file), [tail]):
            yield chunk
            sent += len(chunk)
            progress(sent, total)


_MEDIA_TYPES = {
    ".zip": "application/zip",
    ".tar": "application/x-tar",
    ".tgz": "application/gzip",
    ".gz": "application/gzip",
}


def _media_type(filename: str) -> str:
    return _MEDIA_TYPES.get(Path(filename).suffix.lower(), "application/octet-stream")


def _param(value: str) -> str:
    """A name in a Content-Disposition parameter, as browsers write it (HTML's form encoding): UTF-8 as it is,
    quotes and line breaks percent-encoded."""
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _error(response: httpx.Response) -> GanserveError:
    """The server's `{"error", "message", "detail"}`; something readable from any other error answer (a
    proxy's HTML page, say)."""
    retry_after = _seconds(response.headers.get("retry-after"))
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(body.get("message"), str):
        return GanserveError(response.status_code, body["error"], body["message"], body.get("detail"), retry_after)
    text = " ".join(response.text.split())[:200] or response.reason_phrase
    where = f"{response.request.method} {response.request.url}"
    return GanserveError(response.status_code, f"http_{response.status_code}", f"{where}: {text}", None, retry_after)


def _seconds(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None  # an HTTP date: not worth parsing here


def _seg(value: str) -> str:
    """One path segment, whatever the caller passed (the server refuses odd names with a 404 of its own)."""
    return quote(value, safe="")


def _without_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}
