"""Every knob of ganserve, read once from `GANSERVE_*` environment variables (or a `.env` file).

The API, the worker, the `make run` launcher and the CLI all build their settings here, so one variable
means the same thing everywhere.
"""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_MODELS_DIR = Path(__file__).resolve().parent / "bundled"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GANSERVE_", env_file=".env", extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis used as the Celery broker.")
    broker_url: str | None = Field(
        None,
        description="Overrides the broker (e.g. `filesystem://`); `make run` sets it when no Redis answers.",
    )
    checkpoint_dir: Path = Field(
        Path("var"), description="The volume shared by API and worker: jobs, checkpoints, published models."
    )
    data_root: Path = Field(Path("data"), description="Datasets are read from `<data_root>/<dataset>/`.")
    host: str = Field("127.0.0.1", description="Address the API binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port the API binds.")
    default_model: str = Field("mnist-mlp", description="Model served when a request names none.")
    bundled_models_dir: Path = Field(BUNDLED_MODELS_DIR, description="Read-only models shipped with the code.")
    device: str = Field("auto", description="Worker device: `auto` (CUDA when present), `cpu` or `cuda[:N]`.")
    max_count: int = Field(64, ge=1, le=1024, description="Most images one /generate call may return.")
    inception_weights: Path | None = Field(
        None,
        description="torch-fidelity's Inception-v3 weights file, for FID on images other than MNIST; read from "
        "the environment by the worker and the CLI (training/features.py). Never downloaded.",
    )
    log_level: str = Field("info")

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def jobs_dir(self) -> Path:
        return self.checkpoint_dir / "jobs"

    @property
    def models_dir(self) -> Path:
        return self.checkpoint_dir / "models"

    @property
    def evaluations_dir(self) -> Path:
        return self.checkpoint_dir / "evaluations"

    @property
    def broker_dir(self) -> Path:
        return self.checkpoint_dir / "broker"


@lru_cache
def get_settings() -> Settings:
    return Settings()
