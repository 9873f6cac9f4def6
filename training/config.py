"""The training job's configuration: one pydantic model for the body of `POST /train`, the CLI's
`--config job.json` and the worker's task, validated once at the edge."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# Every name that becomes a path on the volume must match this (no slashes, no dot-dot, no hidden files).
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
ModelName = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        description="Lower-case letters, digits, '.', '_' and '-'; starts with a letter or digit; ≤ 64 chars.",
        examples=["my-digits"],
    ),
]


class TrainConfig(BaseModel):
    """A GAN training run. Defaults are the seeds' reference recipe (MLP G and D, batch 128, z of 100,
    Adam 2e-4, non-saturating generator loss), plus a tanh output on data scaled to [-1, 1]."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: ModelName
    dataset: Literal["mnist"] = Field("mnist", description="Dataset read from `<data_root>/<dataset>/`.")
    max_samples: int | None = Field(
        None, ge=1, le=10_000_000, description="Use at most this many images (the first ones, in file order)."
    )
    epochs: int = Field(1, ge=1, le=10_000, description="Passes over the (possibly limited) dataset.")
    batch_size: int = Field(128, ge=1, le=8192)
    latent_dim: int = Field(100, ge=1, le=4096, description="Size of z.")
    lr: float = Field(2e-4, gt=0, le=1.0, description="Adam learning rate for both networks.")
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas (DCGAN's 0.5 for β1).")
    d_steps: int = Field(1, ge=1, le=100, description="Algorithm 1's k: discriminator steps per G step.")
    loss: Literal["non-saturating", "minimax"] = Field(
        "non-saturating",
        description="`non-saturating`: minimise −log D(G(z)); `minimax`: minimise log(1 − D(G(z))).",
    )
    output: Literal["tanh", "linear"] = Field(
        "tanh", description="G's last activation: `tanh` on data in [-1, 1], or the reference's unbounded one."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seeds weights, shuffling and noise.")
    sample_every: int = Field(1, ge=1, description="Write a sample grid (and checkpoint) every N epochs.")
