"""GAN objectives, as plain functions of the discriminator's raw outputs, chosen by name from a registry.

With D(x) = σ(l), log D(x) = −softplus(−l) and log(1 − D(x)) = −softplus(l); writing every loss through
softplus keeps it finite where σ saturates (|l| ≳ 17 in float32), which is exactly where the minimax
generator loss loses its gradient (Goodfellow et al. 2014, §3). The critic objectives (wasserstein,
wgan-gp, hinge, least-squares) read the same raw output as an unbounded score.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor], torch.Tensor]
PairLossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """One GAN objective: D minimises `d_loss(D(x), D(G(z)))`, G minimises `g_loss(D(G(z)))`."""

    name: str
    d_loss: PairLossFn
    g_loss: LossFn
    probabilistic: bool  # σ(output) is D's probability of "real"; the critics' outputs are plain scores


def discriminator_bce(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """−[log D(x) + log(1 − D(G(z)))], the discriminator's side of the minimax value V(D, G)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_minimax(fake_logits: torch.Tensor) -> torch.Tensor:
    """log(1 − D(G(z))): the generator's side of V(D, G). Saturates early in training, when D rejects
    G's samples with confidence and the gradient of log(1 − σ(l)) vanishes as l → −∞."""
    return -F.softplus(fake_logits).mean()


def generator_non_saturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """−log D(G(z)): the same fixed point as minimax, with strong gradients early on (the paper's advice)."""
    return F.softplus(-fake_logits).mean()


def critic_wasserstein(real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
    """E f(G(z)) − E f(x): minimising it maximises the Kantorovich–Rubinstein dual (Arjovsky et al. 2017)."""
    return fake_out.mean() - real_out.mean()


def generator_wasserstein(fake_out: torch.Tensor) -> torch.Tensor:
    return -fake_out.mean()


def discriminator_hinge(real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
    """E relu(1 − D(x)) + E relu(1 + D(G(z))): D stops pushing once a sample is beyond its margin."""
    return F.relu(1.0 - real_out).mean() + F.relu(1.0 + fake_out).mean()


def discriminator_least_squares(real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
    """LSGAN with the 0-1-1 coding (Mao et al. 2017): ½E(D(x) − 1)² + ½E D(G(z))²."""
    return 0.5 * (real_out - 1.0).square().mean() + 0.5 * fake_out.square().mean()


def generator_least_squares(fake_out: torch.Tensor) -> torch.Tensor:
    return 0.5 * (fake_out - 1.0).square().mean()


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("minimax", discriminator_bce, generator_minimax, probabilistic=True),
        Objective("non-saturating", discriminator_bce, generator_non_saturating, probabilistic=True),
        Objective("wasserstein", critic_wasserstein, generator_wasserstein, probabilistic=False),
        # The penalty needs D itself, not only its outputs: the loop adds `gradient_penalty` for this one.
        Objective("wgan-gp", critic_wasserstein, generator_wasserstein, probabilistic=False),
        Objective("hinge", discriminator_hinge, generator_wasserstein, probabilistic=False),
        Objective("least-squares", discriminator_least_squares, generator_least_squares, probabilistic=False),
    )
}
# Kept for callers of the first registry, which knew the two BCE generator losses only.
GENERATOR_LOSSES: dict[str, LossFn] = {
    "minimax": generator_minimax,
    "non-saturating": generator_non_saturating,
}


def objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}") from None


def generator_loss(name: str) -> LossFn:
    try:
        return GENERATOR_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown generator loss {name!r}; known: {sorted(GENERATOR_LOSSES)}") from None


def call_d(d: nn.Module | Callable[..., torch.Tensor], x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """D(x) or D(x, labels): unconditional discriminators need not accept a labels argument at all."""
    return d(x) if labels is None else d(x, labels)


def input_gradient_sq_norm(
    d: nn.Module | Callable[..., torch.Tensor], x: torch.Tensor, labels: torch.Tensor | None
) -> torch.Tensor:
    """‖∇ₓ D(x)‖² per sample, kept in the graph so that a penalty on it trains D (double backprop)."""
    x = x.detach().requires_grad_(True)
    out = realness(call_d(d, x, labels))
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return grad.flatten(1).square().sum(1)


def gradient_penalty(
    d: nn.Module | Callable[..., torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    labels: torch.Tensor | None = None,
    rng: torch.Generator | None = None,
) -> torch.Tensor:
    """E(‖∇D(x̂)‖₂ − 1)² on x̂ = εx + (1 − ε)G(z), ε ~ U[0, 1] per sample (Gulrajani et al. 2017), unweighted:
    the caller multiplies by λ. Conditional critics see the real batch's labels on the interpolates."""
    eps_shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    eps = torch.rand(eps_shape, generator=rng, device=real.device, dtype=real.dtype)
    x_hat = eps * real.detach() + (1.0 - eps) * fake.detach()
    norm = input_gradient_sq_norm(d, x_hat, labels).add(1e-12).sqrt()  # ε keeps √ differentiable at 0
    return (norm - 1.0).square().mean()


def realness(out: torch.Tensor) -> torch.Tensor:
    """D's scalar "real" score per sample: the output itself, or for MAD-GAN's (N, k+1) logits the log-odds
    of the last class ("real") against all generators', so σ of it is P(real)."""
    if out.dim() == 1:
        return out
    return out[:, -1] - torch.logsumexp(out[:, :-1], dim=1)


def madgan_d_loss(real_out: torch.Tensor, fake_out: torch.Tensor, generator: torch.Tensor) -> torch.Tensor:
    """MAD-GAN's D (Ghosh et al. 2018): a (k+1)-way classifier, real → class k, G_i's samples → class i.
    Summing the two means mirrors BCE's two terms, so its scale matches the other objectives'."""
    real_class = torch.full_like(generator, real_out.shape[1] - 1)
    return F.cross_entropy(real_out, real_class) + F.cross_entropy(fake_out, generator)


def madgan_g_loss(fake_out: torch.Tensor, saturating: bool = False) -> torch.Tensor:
    """−log P(real | G_i(z)) (non-saturating), or log(1 − P(real | G_i(z))) for minimax, both via
    log-softmax so they stay finite when D is certain."""
    log_p = torch.log_softmax(fake_out, dim=1)
    if saturating:
        return torch.logsumexp(log_p[:, :-1], dim=1).mean()
    return -log_p[:, -1].mean()
