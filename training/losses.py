"""GAN objectives, as plain functions of the discriminator's logits, chosen by name from a registry.

With D(x) = σ(l), log D(x) = −softplus(−l) and log(1 − D(x)) = −softplus(l); writing every loss through
softplus keeps it finite where σ saturates (|l| ≳ 17 in float32), which is exactly where the minimax
generator loss loses its gradient (Goodfellow et al. 2014, §3).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor], torch.Tensor]


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


GENERATOR_LOSSES: dict[str, LossFn] = {
    "minimax": generator_minimax,
    "non-saturating": generator_non_saturating,
}


def generator_loss(name: str) -> LossFn:
    try:
        return GENERATOR_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown generator loss {name!r}; known: {sorted(GENERATOR_LOSSES)}") from None
