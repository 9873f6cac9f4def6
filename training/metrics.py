"""Sample-quality metrics. For now the toy mixtures' mode metrics, defined as in PacGAN (Lin et al.
2018, §5) so that our numbers sit beside its Table 1:

- a sample is *high quality* when its distance to the nearest mode mean is under 3σ;
- a mode is *captured* when it is the nearest mean of at least one high-quality sample;
- *reverse KL* is KL(q‖p), q the histogram of ALL samples over their nearest modes (high quality or
  not, as PacGAN does) and p uniform over the modes. Empty bins contribute 0 (q log q → 0), so
  collapse onto one of K modes gives log K.
"""

from dataclasses import dataclass

import torch

from training import toy

HIGH_QUALITY_SIGMAS = 3.0


@dataclass(frozen=True)
class ModeMetrics:
    modes_captured: int
    n_modes: int
    high_quality_fraction: float
    reverse_kl: float


def nearest_modes(samples: torch.Tensor, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the nearest mean, distance to it) for every sample."""
    dist = torch.cdist(samples.to(torch.float64), means.to(torch.float64))
    nearest, index = dist.min(dim=1)
    return index, nearest


def reverse_kl_to_uniform(assigned: torch.Tensor, n_modes: int) -> float:
    """KL(q‖uniform) for q the histogram of mode indices `assigned`."""
    q = torch.bincount(assigned, minlength=n_modes).to(torch.float64) / len(assigned)
    q = q[q > 0]  # q log q → 0: empty modes add nothing
    return float((q * torch.log(q * n_modes)).sum())


def mode_metrics(samples: torch.Tensor, distribution: str) -> ModeMetrics:
    """PacGAN's metrics for generated `samples` (N×D) of the toy mixture `distribution`."""
    dist = toy.get(distribution)
    if samples.dim() != 2 or samples.shape[1] != dist.dim or len(samples) == 0:
        raise ValueError(f"{distribution} samples must be N×{dist.dim} with N ≥ 1, got {tuple(samples.shape)}")
    index, distance = nearest_modes(samples.detach().cpu(), dist.means)
    high_quality = distance / dist.sigma < HIGH_QUALITY_SIGMAS
    return ModeMetrics(
        modes_captured=int(index[high_quality].unique().numel()),
        n_modes=dist.n_modes,
        high_quality_fraction=float(high_quality.double().mean()),
        reverse_kl=reverse_kl_to_uniform(index, dist.n_modes),
    )
