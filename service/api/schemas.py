"""Request and response bodies of the API (the job record itself is `core.jobs.JobRecord`)."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FiniteFloat, model_validator

from core import recipes
from core.jobs import EpochRecord, JobRecord
from core.model_names import Visibility
from core.records import JobStatus
from core.train_config import NAME_PATTERN, TrainConfig
from core.workers import Resources, WorkerInfo
from service.background.webhooks import MAX_URL_LENGTH, url_problem
from training.latents import MAX_SEED

MAX_LATENT_DIM = 4096  # TrainConfig's own bound on latent_dim

Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description=f"0 … {MAX_SEED} (2³² − 1).", examples=[42])]
ModelRef = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN, description="Model name; the server's default model when omitted.", examples=["mnist-mlp"]
    ),
]
Version = Annotated[int, Field(ge=1, description="Model version; the latest when omitted.", examples=[1])]
Label = Annotated[
    int,
    Field(
        ge=0,
        description="Class-conditional models only: the class of every image (0 … num_classes − 1); "
        "when omitted, the image of seed s is of class s mod num_classes.",
        examples=[3],
    ),
]


class GenerateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # JSON's types as the schema states them: `true` is no count, "5" no seed
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {"seed": 42},
                {"seed": 0, "count": 16, "model": "mnist-mlp"},
                {"latent": [0.0] * 8, "model": "my-digits", "version": 2},
            ]
        },
    )

    seed: Seed | None = Field(
        None, description="Seed of the (first) latent; a random one when neither it nor `latent` is given."
    )
    latent: list[FiniteFloat] | None = Field(
        None,
        min_length=1,
        max_length=MAX_LATENT_DIM,
        description="An explicit latent z: exactly the model's latent size of finite numbers. "
        "Excludes `seed`, and `count` > 1.",
    )
    model: ModelRef | None = None
    version: Version | None = None
    count: int = Field(1, ge=1, description="Images to generate (seeds seed … seed+count−1), as one grid PNG.")
    label: Label | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "GenerateRequest":
        if self.seed is not None and self.latent is not None:
            raise ValueError("give either `seed` or `latent`, not both")
        if self.latent is not None and self.count != 1:
            raise ValueError("`count` > 1 needs a seed (consecutive seeds make the grid); a `latent` makes one image")
        return self


def _webhook_url(url: str) -> str:
    if problem := url_problem(url):
        raise ValueError(f"the webhook {problem}")
    return url


WebhookURL = Annotated[
    str,
    Field(min_length=1, max_length=MAX_URL_LENGTH, json_schema_extra={"format": "uri"}),
    AfterValidator(_webhook_url),
]


class TrainRequest(TrainConfig):
    """The body of POST /train: a training job (`TrainConfig`, stored as the job's and the model's config) and,
    apart from it, where to say when the job ends."""

    webhook: WebhookURL | None = Field(
        None,
        description="An http(s) URL called (POST, JSON, HMAC-signed) once the job succeeds, fails or is cancelled, "
        "retried with back-off until it answers 2xx. Its host must be one the server allows "
        "(GANSERVE_WEBHOOK_ALLOWED_HOSTS); see docs/operations.md, Webhooks.",
        examples=["https://hooks.example.com/ganserve"],
    )

    resources: Resources | None = Field(
        None,
        description='What the job needs of a worker: `{"gpus": N}`, N GPUs on one worker (0: a CPU worker). Left '
        "out: 1 GPU when a live GPU worker is advertised (GET /workers), else the CPU. 422 when no advertised worker "
        "could ever run it; with no worker advertised at all, the job is queued and waits for one.",
        examples=[{"gpus": 1}],
    )

    visibility: Visibility | None = Field(
        None,
        description="Who is served the model once published, used only when this job's `model_name` is claimed "
        "for the first time (by this job): `public` (every caller of /generate) or `private` (this key, `admin` "
        "keys and keys granted read access). Left out: the server's GANSERVE_MODEL_VISIBILITY. A name this key "
        "already owns keeps its visibility (its owner changes it).",
        examples=["private"],
    )

    @model_validator(mode="before")
    @classmethod
    def _default_recipe(cls, data: Any) -> Any:
        # A job submitted over HTTP naming neither a recipe nor an architecture gets its dataset's default recipe
        # (TrainConfig does this only for a validation context that says "submitted", which FastAPI cannot pass).
        return recipes.resolve(data, submitted=True)

    def train_config(self) -> TrainConfig:
        """The job's configuration, without the webhook, the resources and the name's visibility."""
        return TrainConfig.model_validate_json(self.model_dump_json(exclude={"webhook", "resources", "visibility"}))


class GeneratedImages(BaseModel):
    """The `Accept: application/json` answer of /generate."""

    model: str
    version: int
    seeds: list[int] | None = Field(description="The seed of each image; null for an explicit latent.")
    images: list[str] = Field(description="One base64-encoded PNG per image, in seed order.")
    labels: list[int] | None = Field(
        None, description="Class-conditional models: the class of each image; null otherwise."
    )
    generators: list[int] | None = Field(
        None, description="MAD-GAN models: the generator (seed mod k) of each image; null otherwise."
    )


class JobView(JobRecord):
    """A job's record as the API answers it: the record, and what is true of it now."""

    waiting_for: str | None = Field(
        None,
        description="A queued job that no live worker can take: what it waits for (e.g. `a gpu worker with ≥2 "
        "devices`); null otherwise. Worked out when the record is read, from GET /workers' rows.",
    )


class JobList(BaseModel):
    jobs: list[JobView]
    count: int


class WorkerList(BaseModel):
    workers: list[WorkerInfo]
    count: int
    live: dict[str, int] = Field(description="Live workers by class (`cpu`, `gpu`).")


class JobMetrics(BaseModel):
    id: str
    status: JobStatus
    extractor: str | None = Field(
        None,
        description="Feature space of the job's FID/KID/precision/recall (`mnist-cnn-v1`, `inception-v3-compat`) "
        "or `toy-mode-metrics`; FIDs measured in different ones are not comparable.",
    )
    evaluation_skipped: str | None = Field(None, description="Why the job measures no sample quality, if not.")
    eval_every: int | None = Field(
        description="Epochs between evaluations (and one after the last); null: the default budget schedule, at "
        "most 10 % of the job's wall time spent evaluating (the last epoch normally included)."
    )
    history: list[EpochRecord]


class TrainingSummary(BaseModel):
    dataset: str | None = None
    epochs: int | None = Field(None, description="Epochs the job was asked for.")
    epoch: int | None = Field(None, description="Epochs completed when this version was saved.")
    step: int | None = Field(None, description="Generator steps completed.")
    losses: dict[str, float] = Field(default_factory=dict, description="Final losses.")
    created_at: datetime | None = None
    recipe: str | None = Field(None, description="The recipe the job named or was given (GET /recipes); null: none.")


class GenerationInfo(BaseModel):
    """What a client needs to generate from a model version (shared by versions and model summaries)."""

    latent_dim: int | None = None
    image_shape: list[int] | None = None
    value_range: list[float] | None = None
    training: TrainingSummary | None = None
    kind: Literal["image", "points"] | None = Field(
        None,
        description="`image`, or `points` for toy models (sampled with "
        "`ganserve sample NAME --seeds 0-999 --out points.npy`).",
    )
    sample_shape: list[int] | None = Field(None, description="Shape of one sample: C×H×W, or D for points.")
    architecture: str | None = Field(None, description="`mlp`, `dcgan` or `mad-gan`.")
    conditional: bool | None = Field(None, description="Whether /generate takes a `label`.")
    num_classes: int | None = Field(None, description="Conditional models: labels are 0 … num_classes − 1.")
    num_generators: int | None = Field(None, description="MAD-GAN: the number of generators k.")
    error: str | None = Field(None, description="Why this version's metadata cannot be read, if it cannot.")


class ModelVersionInfo(GenerationInfo):
    version: int
    has_samples: bool = False
    weights_sha256: str | None = Field(None, description="SHA-256 of the served weights file.")
    available: bool = Field(
        True,
        description="False when this version cannot be served (its weights do not match their SHA-256, or cannot "
        "be read or rebuilt); `reason` says why. A version not yet tried is listed available.",
    )
    reason: str | None = Field(None, description="Why the version cannot be served (no file path is named).")
    evaluations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Results of POST /models/{name}/evaluate on these weights, newest first: FID, KID, IS, "
        "precision/recall, coverage, nearest-neighbour distances, each with its extractor and n.",
    )


class ModelCard(BaseModel):
    """A model's card in brief: how it was trained and how good its samples are, next to what real data scores.
    Figures are measured, never estimated: null where nothing was measured."""

    recipe: str | None = Field(
        None,
        description="The recipe of the served version's training job (GET /recipes/{name}); for a bundled model "
        "without one in its training config, its card's. Null: none was named.",
        examples=["mnist-dcgan"],
    )
    fid: float | None = Field(None, description="FID of the served version's samples (lower is better).")
    n: int | None = Field(None, description="Generated images measured, against as many real ones.")
    extractor: str | None = Field(
        None, description="The feature space of `fid`, `precision` and `recall`.", examples=["mnist-cnn-v1"]
    )
    precision: float | None = Field(None, description="Share of generated images on the real manifold.")
    recall: float | None = Field(None, description="Share of real images on the generated manifold.")
    fid_floor: float | None = Field(
        None,
        description="FID of held-out real images against the training images at the same `n` and `extractor`: "
        "what real data scores, the floor for `fid`. Null: not measured at that n.",
    )
    source: str | None = Field(
        None,
        description="Where the figures come from: a bundled model's card (its path, e.g. "
        "`service/bundled/mnist-mlp/README.md`, not served over HTTP), or `evaluation` (the newest "
        "POST /models/{name}/evaluate result of the served version, listed by GET /models/{name}). Null: none.",
    )


class ModelSummary(GenerationInfo):
    name: str
    source: Literal["volume", "bundled"]
    latest_version: int | None = Field(
        description="The newest version that can be served (what /generate serves without a `version`); null when "
        "none can."
    )
    versions: list[int]
    available: bool = Field(True, description="Some version can be served; false: `reason` says why none can.")
    reason: str | None = Field(None, description="Why no version can be served (no file path is named).")
    owner: str | None = Field(
        None, description="The API key's name that owns the model name; null for bundled and unclaimed names."
    )
    visibility: Literal["public", "private"] = Field(
        "public", description="`public`: served to every caller; `private`: its owner, admin keys and grantees."
    )
    card: ModelCard = Field(
        default_factory=ModelCard, description="The served version's recipe and sample quality, in brief."
    )


class ModelDetail(ModelSummary):
    version_info: list[ModelVersionInfo]


class ModelList(BaseModel):
    models: list[ModelSummary]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Check(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    checks: dict[str, Check]


class RouteStats(BaseModel):
    route: str = Field(description="The route's path template; `unmatched` for requests no route matched.")
    method: str
    count: int = Field(description="Requests answered since the process started.")
    errors: int = Field(description="Of which answered 5xx.")
    p50_ms: float | None = Field(description="Median duration, estimated from the histogram's buckets.")
    p99_ms: float | None = Field(description="99th percentile, likewise (at most the largest finite bucket, 30 s).")


class RunningJob(BaseModel):
    id: str
    model_name: str
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    total_steps: int | None = None
    fraction: float | None = None
    images_per_sec: float | None = None
    eta_seconds: float | None = None


class Stats(BaseModel):
    """A quick look at one API process (`GET /metrics` has the same numbers for Prometheus)."""

    started_at: datetime
    uptime_s: float
    requests: list[RouteStats] = Field(description="This process's requests, by route and method.")
    images_generated: int = Field(description="Images /generate answered with, cached ones included.")
    forwards: int = Field(description="Generator forwards run by this API process's render process.")
    mean_batch_rows: float | None = Field(description="Real rows per forward (before padding); null before any.")
    models_loaded: list[str] = Field(description="`name:version` of every model in this process's memory.")
    jobs: dict[str, int] = Field(description="Training jobs on the volume, by status.")
    running_jobs: list[RunningJob]
    evaluations: dict[str, int] = Field(description="Evaluation jobs on the volume, by status.")


class VisibilityChange(BaseModel):
    """PATCH /models/{name}: who is served the model's versions."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"visibility": "private"}]})

    visibility: Visibility = Field(
        description="`public`: every caller of /generate; `private`: its owner, `admin` keys and the keys granted "
        "read access (PUT /models/{name}/grants/{key})."
    )


class ModelAccess(BaseModel):
    """Who a model name belongs to and who may be served it (core/model_names.py)."""

    name: str
    owner: str | None = Field(
        description="The API key's name that claimed the name (its first publisher); null: the operator's (published "
        "not over HTTP), which only `admin` keys change."
    )
    visibility: Visibility
    grants: list[str] = Field(description="The keys granted read access: a private model is served to them too.")
    created_at: datetime = Field(description="When the name was claimed.")


class RecipeList(BaseModel):
    """GET /recipes: every recipe a job may name (core/recipes.py)."""

    recipes: list[recipes.Recipe]
    defaults: dict[str, str] = Field(
        description="Dataset → the recipe a job on it gets when it names neither a recipe nor an architecture; a "
        "dataset not listed keeps TrainConfig's own defaults.",
        examples=[{"mnist": "mnist-mlp"}],
    )
