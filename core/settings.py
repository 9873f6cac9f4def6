"""Every knob of ganserve, read once from `GANSERVE_*` environment variables (or a `.env` file).

The API, the worker, the `make run` launcher and the CLI all build their settings here, so one variable
means the same thing everywhere.
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.keys import ApiKeyEntry
from core.secrets import read_secret, with_password

BUNDLED_MODELS_DIR = Path(__file__).resolve().parents[1] / "service" / "bundled"  # package data of service/

# Rows per generator forward. Measured on the bundled mnist-mlp (100 → 128 → 256 → 512 → 1024 → 784), one
# thread of an AMD EPYC (AVX2), torch 2.14.1: 0.35 / 0.96 / 1.38 / 2.18 / 3.72 ms per forward of
# 1 / 8 / 16 / 32 / 64 rows (0.35 / 0.12 / 0.086 / 0.068 / 0.058 ms per row). 16 rows get most of the
# per-row gain while a lone request, padded to the full batch, pays 1.4 ms rather than 3.7 ms at 64.
BATCH_MAX = 16


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GANSERVE_", env_file=".env", extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis used as the Celery broker.")
    broker_url: str | None = Field(
        None,
        description="Overrides the broker (e.g. `filesystem://`); `make run` sets it when no Redis answers.",
    )
    database_url: str | None = Field(
        None,
        description="The database of record (jobs, evaluations, keys, webhooks' outbox): a SQLAlchemy URL such as "
        "`postgresql+psycopg://user:pass@host/ganserve`; default an embedded SQLite file, "
        "`<GANSERVE_CHECKPOINT_DIR>/ganserve.db`.",
    )
    storage_url: str | None = Field(
        None,
        description="Where blobs live (checkpoints, published models, sample grids, datasets): `file:///path` or "
        "`s3://bucket/prefix`; default the volume, `file://<GANSERVE_CHECKPOINT_DIR>`.",
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="The S3 API's address for `s3://` storage other than AWS (MinIO, Ceph …); credentials come "
        "from the standard AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY variables.",
    )
    cache_dir: Path | None = Field(
        None,
        description="This process's cache of blobs fetched from remote storage (models it serves, datasets and "
        "checkpoints it trains from); default `<GANSERVE_CHECKPOINT_DIR>/cache`.",
    )
    cache_max_bytes: int = Field(
        10 * 2**30, ge=0, description="The most the blob cache holds; the least recently used go first."
    )
    checkpoint_dir: Path = Field(
        Path("var"),
        description="This process's working folder. On one box it is the state too: the SQLite database and the blobs "
        "(by default). With GANSERVE_DATABASE_URL and GANSERVE_STORAGE_URL elsewhere it is private scratch (a run "
        "being trained, the blob cache).",
    )
    data_root: Path = Field(Path("data"), description="Built-in datasets are read from `<data_root>/<dataset>/`.")
    host: str = Field("127.0.0.1", description="Address the API binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port the API binds.")
    default_model: str = Field("mnist-dcgan-conditional", description="Model served when a request names none.")
    bundled_models_dir: Path = Field(BUNDLED_MODELS_DIR, description="Read-only models shipped with the code.")
    device: str = Field("auto", description="Worker device: `auto` (CUDA when present), `cpu` or `cuda[:N]`.")
    max_count: int = Field(64, ge=1, le=1024, description="Most images one /generate call may return.")
    inception_weights: Path | None = Field(
        None,
        description="torch-fidelity's Inception-v3 weights file, for FID on images other than MNIST; read from "
        "the environment by the worker and the CLI (training/features.py). Never downloaded.",
    )
    log_level: str = Field("info")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="The API's log lines: `text` (human-readable) or `json` (one object a line, with the request id, "
        "and an access line per request).",
    )
    # --- serving /generate (service/serving/render_process.py, service/api/caching.py; docs/operations.md) ---
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="API server processes `ganserve api` starts (uvicorn `--workers`); each loads its own "
        "models and runs its own render process.",
    )
    batch_max: int = Field(
        BATCH_MAX,
        ge=1,
        le=1024,
        description="Rows of every generator forward: /generate requests are batched up to this many latents and "
        "a short batch is padded, so an image never depends on what it was batched with. Changing it may change "
        "the low-order bits of the floats, and so, rarely, a pixel.",
    )
    batch_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="How long a /generate forward may wait for more requests to fill its batch, in milliseconds "
        "(from the arrival of the oldest request in it), like Triton's `max_queue_delay`. 0: none; under load "
        "batches still fill with the requests that arrive while a forward runs, and a lone request is not "
        "delayed (measured: benchmarks/README.md).",
    )
    render_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="torch's intra-op threads in each render process. One leaves the other cores to the API "
        "processes (and their clients); raise it for a large model on a host with cores to spare. Part of a "
        "deployment, like `batch_max`: the threads may change the floats' low-order bits.",
    )
    png_cache_size: int = Field(
        1024, ge=0, description="Encoded /generate answers (by seed) kept in each API process's memory; 0 = off."
    )
    # --- faults: heartbeats and the reaper (worker/tasks.py, service/background/reaper.py; docs/architecture.md) ---
    heartbeat_s: float = Field(
        5.0, gt=0, description="How often the worker writes the running job's `heartbeat_at`, in seconds."
    )
    stale_after_s: float = Field(
        60.0,
        gt=0,
        description="A running job whose heartbeat has not changed for this long has lost its worker: the API "
        "re-queues it (keep it several times `heartbeat_s`).",
    )
    max_attempts: int = Field(
        3, ge=1, description="Most times a job is started; a job whose worker vanishes on the last one fails."
    )
    # --- hung work: the worker's watch over a job's process (worker/job_process.py; docs/operations.md) ---
    stall_after_s: float = Field(
        900.0,
        gt=0,
        description="A job whose process completes no training step and reports nothing for this long is hung: "
        "the worker kills that process and re-queues the job (fails it on its last attempt). Longer than the "
        "slowest data loading, evaluation or checkpoint of your jobs.",
    )
    stop_grace_s: float = Field(
        30.0,
        gt=0,
        description="How long a job's process may take to stop after a cancel, a shutdown or its max_runtime_s "
        "before the worker kills it.",
    )
    max_runtime_s: int = Field(
        7 * 24 * 3600,
        ge=1,
        description="The longest a job's attempt may run, in seconds: the default of a job's `max_runtime_s`, and "
        "its cap.",
    )
    # --- workers: resource classes, what they advertise (core/workers.py, worker/registry.py; docs/operations.md) ---
    devices: str | None = Field(
        None,
        description="The CUDA device ids `ganserve worker` trains on, comma-separated (`0,1`): a worker of class gpu. "
        "Empty: a CPU worker (class cpu), whatever the machine has. Unset: every device torch sees (none: cpu), or "
        "cpu when GANSERVE_DEVICE is `cpu`.",
    )
    gpus_per_worker: int = Field(
        1,
        ge=1,
        le=64,
        description="Devices per worker process: `ganserve worker` starts one process per group of this many of "
        "GANSERVE_DEVICES (`0,1,2,3` with 2: devices 0,1 and 2,3), which takes jobs asking for up to that many GPUs.",
    )
    worker_heartbeat_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="How often each worker refreshes its row in the `workers` table (GET /workers); a worker "
        "silent for 3 times this long is not live.",
    )
    # --- security and limits (service/security/auth.py, service/security/limits.py; docs/operations.md) ---
    api_keys: list[ApiKeyEntry] = Field(
        [],
        description='API keys as a JSON list of {"name", "sha256", "scopes"} (the SHA-256 of the key, never the '
        "key). Merged with the keys in the database (`ganserve keys`); on a name in both, the database's wins.",
    )
    first_key: bool = Field(
        True,
        description="`ganserve serve` (`make run`) makes an admin key on a first start with no key at all and "
        "prints it once; `false`: never. `ganserve api` (the Docker image) never does.",
    )
    public_generate: bool = Field(
        True, description="`false`: /generate and GET /models also need a key (scope `generate`)."
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body; larger ones get 413.")
    rate_limit_per_min: int = Field(
        600,
        ge=0,
        description="Requests per minute per API key; 429 beyond; 0 = off. Anonymous callers are counted per client "
        "IP instead (`rate_limit_per_ip_per_min`; behind a load balancer set `trusted_proxies`).",
    )
    max_queued_per_key: int = Field(
        8, ge=1, description="Training jobs one key may have queued or running at once; 429 beyond."
    )
    max_epochs: int = Field(10_000, ge=1, description="Most `epochs` a training job may ask for.")
    max_steps: int = Field(10_000_000, ge=1, description="Most `steps` a training job may ask for.")
    # --- tenants and bounded resources (issue 18; docs/operations.md, "Many users") ---
    default_model_version: int = Field(
        1,
        ge=1,
        description="The version of `default_model` that requests naming no model get: pinned, so that publishing "
        "never changes what anonymous users see until an operator changes this.",
    )
    model_visibility: Literal["public", "private"] = Field(
        "public",
        description="Visibility of a newly claimed model name: `public` (served to every caller of /generate) or "
        "`private` (its owner, `admin` keys and keys granted read access only). The owner can change it.",
    )
    model_cache_max_models: int = Field(
        8, ge=1, description="Most model versions one process (API, render process) keeps loaded; LRU beyond."
    )
    model_cache_max_bytes: int = Field(
        2 * 2**30, ge=2**20, description="Most bytes of weights one process keeps loaded; LRU beyond."
    )
    unknown_model_ttl_s: float = Field(
        5.0, gt=0, le=3600, description="How long a lookup of a model name that does not exist is remembered."
    )
    max_model_parameters: int = Field(
        100_000_000, ge=1, description="Most parameters (G and D together) a training job's networks may have (422)."
    )
    keep_checkpoints: int = Field(
        3, ge=1, description="Newest epoch checkpoints a job keeps (plus its best-by-FID one); a job may ask for fewer."
    )
    max_keep_checkpoints: int = Field(
        20, ge=1, description="Most epoch checkpoints a job may ask to keep (`keep_checkpoints` in POST /train; 422)."
    )
    storage_quota_bytes: int = Field(
        20 * 2**30,
        ge=0,
        description="Bytes of object storage one key's datasets, checkpoints and models may use (413 on upload, "
        "429 on POST /train beyond it); 0 = unlimited.",
    )
    metrics_public: bool = Field(
        False, description="`true`: GET /metrics on the API's port is open to all; `false`: it needs an `admin` key."
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Also serve /metrics, without a key, on this port of `metrics_host`; 0 = off."
    )
    metrics_host: str = Field("127.0.0.1", description="Address the /metrics port binds.")
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses or CIDR networks of the load balancers in front of the API: their "
        "X-Forwarded-For names the client that rate limits and logs use. Empty: the connection's peer is the client.",
    )
    rate_limit_per_ip_per_min: int = Field(
        600, ge=0, description="Requests per minute per client IP without a key; 429 beyond; 0 = off."
    )
    secrets_dir: Path | None = Field(
        None,
        description="A folder of generated secrets (`ganserve secrets init`; docker-compose.yml mounts one): its "
        "redis_password goes into GANSERVE_REDIS_URL and a redis:// GANSERVE_BROKER_URL, its postgres_password "
        "into GANSERVE_DATABASE_URL, when the URL carries no password (one in the URL wins). S3's secret is in "
        "its `aws-credentials`, the standard AWS file: set AWS_SHARED_CREDENTIALS_FILE to it (AWS_* variables win).",
    )
    # --- uploaded datasets (POST /datasets: training/dataset_archive.py; docs/api.md, Datasets) ---
    dataset_max_bytes: int = Field(
        512 * 2**20,
        ge=1024,
        description="Largest dataset archive POST /datasets accepts, in bytes (413 beyond, counted as it arrives).",
    )
    dataset_max_images: int = Field(200_000, ge=1, description="Most images one uploaded dataset may hold (413).")
    dataset_max_image_pixels: int = Field(
        4096 * 4096,
        ge=1,
        description="Most pixels one image of an upload may have, checked before it is decoded (a decompression "
        "bomb is a 422, not a full memory).",
    )
    dataset_max_decoded_bytes: int = Field(
        4 * 2**30,
        ge=1024,
        description="Most bytes an upload may unpack to, and its images decode to, in all (413): bounds the "
        "upload's scratch disk and a worker's memory for the dataset.",
    )
    # --- webhooks (service/background/webhooks.py; docs/operations.md) ---
    webhook_allowed_hosts: str = Field(
        "",
        description="Hosts a job's `webhook` may call, comma-separated: a name (`hooks.example.com`), `*.suffix` "
        "(any name under `suffix`) or an IP address (which may then be a private one). Empty: webhooks refused.",
    )
    webhook_secret: SecretStr | None = Field(
        None, description="Key of the HMAC-SHA256 signature on every webhook call; webhooks are refused while unset."
    )
    webhook_allow_private: bool = Field(
        False,
        description="Let an allowed host name resolve to a loopback, private, link-local or other non-public "
        "address (receivers on the internal network); otherwise such a call is refused.",
    )
    webhook_max_attempts: int = Field(8, ge=1, le=30, description="Calls of a webhook before it is given up.")
    webhook_backoff_s: float = Field(
        1.0, gt=0, le=3600, description="Wait before a webhook's first retry, doubled after each (at most 1 h)."
    )

    @model_validator(mode="after")
    def _passwords_from_secrets_dir(self) -> "Settings":
        # Filled in here, once, so that every reader of these URLs (Celery, the limiter, the engine) gets them.
        if self.secrets_dir is not None:
            redis_password = read_secret(self.secrets_dir, "redis_password")
            self.redis_url = with_password(self.redis_url, redis_password)
            if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")):
                self.broker_url = with_password(self.broker_url, redis_password)
            if self.database_url:
                self.database_url = with_password(self.database_url, read_secret(self.secrets_dir, "postgres_password"))
        return self

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def webhook_allowed_host_list(self) -> list[str]:
        return [h.strip().lower() for h in self.webhook_allowed_hosts.split(",") if h.strip()]

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or self.checkpoint_dir.resolve().as_uri()

    @property
    def effective_cache_dir(self) -> Path:
        return self.cache_dir or self.checkpoint_dir / "cache"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.checkpoint_dir / 'ganserve.db').resolve()}"

    @property
    def submissions_dir(self) -> Path:
        return self.checkpoint_dir / "submissions"

    @property
    def jobs_dir(self) -> Path:
        return self.checkpoint_dir / "jobs"

    @property
    def evaluations_dir(self) -> Path:
        return self.checkpoint_dir / "evaluations"

    @property
    def broker_dir(self) -> Path:
        return self.checkpoint_dir / "broker"


@lru_cache
def get_settings() -> Settings:
    return Settings()
