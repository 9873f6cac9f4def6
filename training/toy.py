"""The toy distributions: Gaussian mixtures small enough to train on a laptop core in a minute, with
known modes so that mode collapse can be counted (training/metrics.py).

- `ring-2d`: 8 Gaussians, means on the unit circle at angles 2πi/8, σ = 0.01 — the ring of the
  Unrolled GAN, VEEGAN and PacGAN experiments.
- `grid-2d`: 25 Gaussians, means on {−4, −2, 0, 2, 4}², σ = 0.05 — the grid of VEEGAN and PacGAN.
- `gaussian-1d`: a single Gaussian N(4, 0.5²) for Goodfellow et al. (2014), Figure 1. The paper draws
  its curves without numbers; this project picks mean 4, σ 0.5 so that p_data sits visibly away from
  the latent's N(0, 1) and G has to move mass, not just reshape it.

Components are chosen uniformly. Samples are generated with NumPy's PCG64 `default_rng(seed)`, so a
seed names the same points on every machine.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ToyDistribution:
    means: torch.Tensor  # K×D float64: one row per mixture component
    sigma: float  # the isotropic standard deviation of every component

    @property
    def n_modes(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])


def _ring(n_modes: int = 8, radius: float = 1.0) -> torch.Tensor:
    angles = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    return torch.stack([radius * torch.cos(angles), radius * torch.sin(angles)], dim=1)


def _grid(values: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0)) -> torch.Tensor:
    axis = torch.tensor(values, dtype=torch.float64)
    xs, ys = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


TOY: dict[str, ToyDistribution] = {
    "ring-2d": ToyDistribution(_ring(), 0.01),
    "grid-2d": ToyDistribution(_grid(), 0.05),
    "gaussian-1d": ToyDistribution(torch.tensor([[4.0]], dtype=torch.float64), 0.5),
}


def get(name: str) -> ToyDistribution:
    try:
        return TOY[name]
    except KeyError:
        raise ValueError(f"unknown toy distribution {name!r}; known: {sorted(TOY)}") from None


def sample(name: str, n: int, seed: int) -> torch.Tensor:
    """`n` points of distribution `name` as float32 n×D, the same for the same seed everywhere."""
    dist = get(name)
    rng = np.random.default_rng(seed)
    components = rng.integers(0, dist.n_modes, size=n)
    noise = rng.standard_normal((n, dist.dim))
    points = dist.means.numpy()[components] + dist.sigma * noise
    return torch.from_numpy(points.astype(np.float32))


def density(name: str, x: torch.Tensor) -> torch.Tensor:
    """The mixture's density at the points x (M×D), for plots: the mean of the components' densities."""
    dist = get(name)
    x = x.to(torch.float64)
    sq = torch.cdist(x, dist.means).pow(2)
    norm = (2 * math.pi * dist.sigma**2) ** (dist.dim / 2)
    return (torch.exp(-sq / (2 * dist.sigma**2)) / norm).mean(dim=1)
