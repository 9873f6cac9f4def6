"""Discriminator regularizers, each composable with every objective, behind one object the loop calls.

`prepare(config, total_steps)` reads `config.regularizers` once; the loop then calls
`apply_to_discriminator(d)` after building D, `perturb(x, step)` on every input D sees (real and fake, in D
steps and in the G step), and adds `d_penalty(..., step=step)`'s terms to D's loss (the step anneals `roth`'s γ).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from core.train_config import R1, R2, InstanceNoise, Roth, SpectralNorm, TrainConfig, WeightDecay
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
class RothSchedule:
    """γ(step) = gamma·final_fraction^(step/(steps − 1)), held at its last value after `steps` G steps: the
    exponential annealing of Roth et al.'s code (github.com/rothk/Stabilizing_GANs, `--annealing`, which takes
    γ₀ to `decay_factor`·γ₀, 0.01 by default, at the last iteration). final_fraction 1: a constant γ."""

    gamma: float
    final_fraction: float
    steps: int

    def gamma_at(self, step: int) -> float:
        if self.final_fraction == 1.0:
            return self.gamma
        progress = min(1.0, step / max(1, self.steps - 1))
        return self.gamma * self.final_fraction**progress


@dataclass(frozen=True)
class Regularization:
    noise: InstanceNoiseSchedule | None = None
    r1_gamma: float | None = None
    r2_gamma: float | None = None
    roth: RothSchedule | None = None
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
        step: int = 0,
    ) -> dict[str, torch.Tensor]:
        """The penalty terms to add to D's loss at G step `step`, by name (for reporting); empty when none apply."""
        terms: dict[str, torch.Tensor] = {}
        if self.r1_gamma is not None:
            terms["r1"] = gradient_norm_penalty(d, real, real_labels, self.r1_gamma)
        if self.r2_gamma is not None:
            terms["r2"] = gradient_norm_penalty(d, fake, fake_labels, self.r2_gamma)
        if self.roth is not None:
            omega = roth_omega(d, real, fake, real_labels, fake_labels)
            terms["roth"] = 0.5 * self.roth.gamma_at(step) * omega
        if self.weight_decay is not None and isinstance(d, nn.Module):
            terms["weight_decay"] = self.weight_decay * weight_sq_norm(d)
        return terms

    @property
    def penalty_names(self) -> tuple[str, ...]:
        named = (
            ("r1", self.r1_gamma),
            ("r2", self.r2_gamma),
            ("roth", self.roth),
            ("weight_decay", self.weight_decay),
        )
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
            case Roth():
                kwargs["roth"] = RothSchedule(reg.gamma, reg.final_fraction, total_steps)
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


def roth_omega(
    d: nn.Module | Callable[..., torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    real_labels: torch.Tensor | None = None,
    fake_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ω(D; P, Q) = E_P[(1 − D(x))²‖∇ₓψ(x)‖²] + E_Q[D(x)²‖∇ₓψ(x)‖²] for D = σ(ψ) (Roth, Lucchi, Nowozin &
    Hofmann 2017, "Stabilizing Training of GANs through Regularization", NeurIPS; arXiv:1705.09367, and the
    regulariser of their code's README): ψ's input gradient, the quantity a noise-convolved JS game penalises,
    weighted by D's error on each sample, so samples D already classifies right cost little. The weights stay in
    the graph like the gradient (double backprop), as in the authors' code; the caller multiplies by γ/2."""
    return _roth_side(d, real, real_labels, on_real=True) + _roth_side(d, fake, fake_labels, on_real=False)


def _roth_side(
    d: nn.Module | Callable[..., torch.Tensor], x: torch.Tensor, labels: torch.Tensor | None, on_real: bool
) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    logit = losses.realness(losses.call_d(d, x, labels))
    (grad,) = torch.autograd.grad(logit.sum(), x, create_graph=True)
    d_x = torch.sigmoid(logit)
    weight = (1.0 - d_x).square() if on_real else d_x.square()
    return (weight * grad.flatten(1).square().sum(1)).mean()


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
