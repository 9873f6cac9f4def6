"""Helpers shared by the API tests (a module, not the conftest, so test files can import them)."""

from dataclasses import dataclass, field
from pathlib import Path

import torch

from training.checkpoint import prefixed, publish, save
from training.models import MLPGenerator, MLPGeneratorConfig, config_to_json

LATENT_DIM = 8
DEFAULT_MODEL = "tiny"


def publish_tiny_model(
    models_dir: Path, name: str, *, weights_seed: int = 0, latent_dim: int = LATENT_DIM, epoch: int = 1
) -> int:
    """Publish a tiny random MLP generator as the next version of `name`; returns its version."""
    torch.manual_seed(weights_seed)
    cfg = MLPGeneratorConfig(latent_dim=latent_dim, hidden=(16,), image_shape=(1, 28, 28))
    generator = MLPGenerator(cfg)
    staging = models_dir.parent / "staging" / f"{name}-{weights_seed}-{epoch}"
    metadata = {
        "generator": config_to_json(cfg),
        "latent_dim": latent_dim,
        "image_shape": list(cfg.image_shape),
        "value_range": [-1, 1],
        "dataset": "mnist",
        "epoch": epoch,
        "step": 10 * epoch,
        "losses": {"d": 1.25, "g": 0.75},
        "train_config": {"epochs": epoch, "dataset": "mnist"},
        "model_name": name,
    }
    save(staging / "ckpt", prefixed(generator, "generator"), metadata)
    return publish(models_dir, name, staging / "ckpt")


@dataclass
class FakeSender:
    sent: list[str] = field(default_factory=list)
    error: Exception | None = None

    def __call__(self, job_id: str) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append(job_id)


@dataclass
class FakeBrokerCheck:
    error: Exception | None = None

    def __call__(self) -> str:
        if self.error is not None:
            raise self.error
        return "fake broker answers"
