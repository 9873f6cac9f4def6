"""Architectures. A model is rebuilt from its checkpoint's JSON alone: `build_generator(meta["generator"])`."""

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn


@dataclass(frozen=True)
class MLPGeneratorConfig:
    """The seeds' generator: z → 128 → 256 → 512 → 1024 → C·H·W, hidden layers Linear → LeakyReLU(0.2) →
    BatchNorm1d. `output="tanh"` bounds images to [-1, 1]; `"linear"` is the reference's unbounded head."""

    latent_dim: int = 100
    hidden: tuple[int, ...] = (128, 256, 512, 1024)
    image_shape: tuple[int, int, int] = (1, 28, 28)
    output: Literal["tanh", "linear"] = "tanh"
    arch: str = field(default="mlp", init=False)


@dataclass(frozen=True)
class MLPDiscriminatorConfig:
    """The seeds' discriminator: C·H·W → 256 → 128 → 1 logit, LeakyReLU(0.2). It returns a logit, not a
    probability, so that every loss can be computed with log-sum-exp stable functions."""

    image_shape: tuple[int, int, int] = (1, 28, 28)
    hidden: tuple[int, ...] = (256, 128)
    arch: str = field(default="mlp", init=False)


class MLPGenerator(nn.Module):
    def __init__(self, cfg: MLPGeneratorConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        width = cfg.latent_dim
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2), nn.BatchNorm1d(h)]
            width = h
        layers.append(nn.Linear(width, math.prod(cfg.image_shape)))
        if cfg.output == "tanh":
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.cfg.image_shape)


class MLPDiscriminator(nn.Module):
    def __init__(self, cfg: MLPDiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        width = math.prod(cfg.image_shape)
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(1)


def config_to_json(cfg: MLPGeneratorConfig | MLPDiscriminatorConfig) -> dict[str, Any]:
    return asdict(cfg)


def build_generator(spec: dict[str, Any]) -> nn.Module:
    spec = dict(spec)
    arch = spec.pop("arch", "mlp")
    if arch != "mlp":
        raise ValueError(f"unknown generator architecture {arch!r}; known: 'mlp'")
    spec["hidden"] = tuple(spec.get("hidden", MLPGeneratorConfig.hidden))
    spec["image_shape"] = tuple(spec.get("image_shape", MLPGeneratorConfig.image_shape))
    return MLPGenerator(MLPGeneratorConfig(**spec))


def build_discriminator(spec: dict[str, Any]) -> nn.Module:
    spec = dict(spec)
    arch = spec.pop("arch", "mlp")
    if arch != "mlp":
        raise ValueError(f"unknown discriminator architecture {arch!r}; known: 'mlp'")
    spec["hidden"] = tuple(spec.get("hidden", MLPDiscriminatorConfig.hidden))
    spec["image_shape"] = tuple(spec.get("image_shape", MLPDiscriminatorConfig.image_shape))
    return MLPDiscriminator(MLPDiscriminatorConfig(**spec))
