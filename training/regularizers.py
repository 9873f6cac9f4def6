"""Discriminator regularizers, each composable with every objective, behind one object the loop calls.

`prepare(config, total_steps)` reads `config.regularizers` once; the loop then calls
`apply_to_discriminator(d)` after building D, `perturb(x, step)` on every input D sees (real and fake, in D
steps and in the G step), and adds `d_penalty(...)`'s terms to D's loss.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from core.train_config import R1, R2, InstanceNoise, SpectralNorm, TrainConfig, WeightDecay
from training import losses

SPECTRAL_NORM_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)


@dataclass(frozen=True)
class InstanceNoiseSchedule:
    """σ(step) = sigma·(1 − step/anneal_steps), floored at 0 (Sønderby et al. 2016; Arjovsky & Bottou 2017):
    overlapping the noised supports gives D a gradient everywhere early on, and the noise is gone by the end."""

    sigma: float
    anneal_steps: int

    def sigma_at(self, step: int) -> float:
        return self.sigma * max(0.0, 1.0 - step / max(1, self.anneal_steps))


@dataclass(frozen=True)
class Regularization:
    noise: InstanceNoiseSchedule | None = None
    r1_gamma: float | None = None
    r2_gamma: float | None = None
    weight_decay: float | None = None
    spectral_norm: bool = False

    def apply_to_discriminator(self, d: nn.Module) -> nn.Module:
        if self.spectral_norm:
            apply_spectral_norm(d)
        return d

    def perturb(self, x: torch.Tensor, step: int, rng: torch.Generator | None = None) -> torch.Tensor:
        if self.noise is None:
            return x
        sigma = self.noise.sigma_at(step)
        if sigma == 0.0:
            return x
        return x + sigma * torch.randn(x.shape, generator=rng, device=x.device, dtype=x.dtype)

    def d_penalty(
        self,
        d: nn.Module | Callable[..., torch.Tensor],
        real: torch.Tensor,
        fake: torch.Tensor,
        real_labels: torch.Tensor | None = None,
        fake_labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The penalty terms to add to D's loss, by name (for reporting); empty when none apply."""
        terms: dict[str, torch.Tensor] = {}
        if self.r1_gamma is not None:
            terms["r1"] = gradient_norm_penalty(d, real, real_labels, self.r1_gamma)
        if self.r2_gamma is not None:
            terms["r2"] = gradient_norm_penalty(d, fake, fake_labels, self.r2_gamma)
        if self.weight_decay is not None and isinstance(d, nn.Module):
            terms["weight_decay"] = self.weight_decay * weight_sq_norm(d)
        return terms

    @property
    def penalty_names(self) -> tuple[str, ...]:
        named = (("r1", self.r1_gamma), ("r2", self.r2_gamma), ("weight_decay", self.weight_decay))
        return tuple(name for name, value in named if value is not None)


def prepare(config: TrainConfig, total_steps: int) -> Regularization:
    """The configured regularizers; instance noise anneals over `total_steps` G steps unless told otherwise."""
    kwargs: dict[str, object] = {}
    for reg in config.regularizers:
        match reg:
            case InstanceNoise():
                kwargs["noise"] = InstanceNoiseSchedule(reg.sigma, reg.anneal_steps or total_steps)
            case R1():
                kwargs["r1_gamma"] = reg.gamma
            case R2():
                kwargs["r2_gamma"] = reg.gamma
            case WeightDecay():
                kwargs["weight_decay"] = reg.coefficient
            case SpectralNorm():
                kwargs["spectral_norm"] = True
    return Regularization(**kwargs)  # type: ignore[arg-type]


def gradient_norm_penalty(
    d: nn.Module | Callable[..., torch.Tensor], x: torch.Tensor, labels: torch.Tensor | None, gamma: float
) -> torch.Tensor:
    """(γ/2)·E‖∇ₓD(x)‖² (Mescheder et al. 2018): R1 on real samples, R2 on generated ones."""
    return 0.5 * gamma * losses.input_gradient_sq_norm(d, x, labels).mean()


def weight_sq_norm(d: nn.Module) -> torch.Tensor:
    """Σ‖W‖² over D's weight matrices and kernels; biases and norm scales are left free, as in the usual
    decoupled practice, since shrinking them does not limit D's slope."""
    weights = [p for p in d.parameters() if p.dim() >= 2]
    if not weights:
        return torch.zeros(())
    return torch.stack([w.square().sum() for w in weights]).sum()


def apply_spectral_norm(d: nn.Module) -> nn.Module:
    """Reparametrise every linear/conv weight of D as W/σ_max(W), σ_max estimated by one power iteration
    per forward pass in train mode (Miyato et al. 2018)."""
    for module in list(d.modules()):
        if isinstance(module, SPECTRAL_NORM_LAYERS):
            spectral_norm(module)
    return d
