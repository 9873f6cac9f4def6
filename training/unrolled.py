"""Unrolled GAN (Metz et al. 2017): the discriminator a generator step is taken against when
`unrolled_steps` is set, D after k differentiable steps of its own optimiser, with D itself left untouched.

`g_step` (training/step.py) calls `unrolled_discriminator` with its `Step`; this module only reads it.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call

from training import losses
from training.nets import call_g

if TYPE_CHECKING:
    from training.step import Step

UNROLL_EPS = 1e-8  # inside the √ of the unrolled update, so a zero gradient does not give an infinite derivative

DFn = Callable[..., torch.Tensor]


def unrolled_discriminator(s: "Step") -> DFn:
    """D after `unrolled_steps` differentiable optimisation steps on a functional copy of its parameters
    (Metz et al. 2017, eq. 4–6), as a function D_K(x, labels).

    What is differentiated: θ_0 is D's current parameters, detached (G cannot move them). Each unrolled step
    draws a fresh real batch and a fresh fake batch G(z) *with* its graph to G, and applies D's own update
    rule (Adam or RMSprop, continuing from copies of D's optimiser moments) with `create_graph=True`, so
    θ_K is a differentiable function of G's parameters through every fake batch of the unroll. G's loss on
    D_K then back-propagates both through D_K(G(z)) directly and through θ_K(G). D's parameters, buffers and
    optimiser state are only read: the copy's buffers are clones, and every update is out of place.
    The unrolled steps use the objective's loss (and WGAN clipping) only; penalties (gp, R1, R2) and
    instance noise are left out of the unroll to avoid third-order derivatives."""
    d, opt = s.nets.d, s.nets.opt_d
    names = [n for n, _ in d.named_parameters()]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in d.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in d.named_buffers()}
    moments = _optimizer_moments(opt, d)

    def d_at(theta: dict[str, torch.Tensor]) -> DFn:
        def fn(x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
            args = (x,) if labels is None else (x, labels)
            return functional_call(d, (theta, buffers), args)

        return fn

    for _ in range(s.config.unrolled_steps):
        real, real_labels = s.random_real_batch()
        z, fake_labels, gen = s.fake_inputs(s.batch)
        fake = call_g(s.nets.g, z, fake_labels, gen)
        d_k = d_at(params)
        loss = s.d_objective(losses.call_d(d_k, real, real_labels), losses.call_d(d_k, fake, fake_labels), gen)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
        params = _unrolled_update(opt, params, dict(zip(names, grads, strict=True)), moments)
        if s.config.clip_value is not None:
            c = s.config.clip_value
            params = {n: p.clamp(-c, c) for n, p in params.items()}
    return d_at(params)


@dataclass
class _Moments:
    """Copies of D's optimiser state, advanced out of place along the unroll."""

    step: int
    first: dict[str, torch.Tensor]  # Adam's m (zeros for RMSprop, unused)
    second: dict[str, torch.Tensor]  # Adam's v / RMSprop's square average


def _optimizer_moments(opt: torch.optim.Optimizer, d: nn.Module) -> _Moments:
    step, first, second = 0, {}, {}
    for name, p in d.named_parameters():
        state = opt.state.get(p, {})
        step = int(state["step"]) if "step" in state else step  # the one host sync of an unrolled G step
        first[name] = state["exp_avg"].detach().clone() if "exp_avg" in state else torch.zeros_like(p)
        sq = state.get("exp_avg_sq", state.get("square_avg"))
        second[name] = sq.detach().clone() if sq is not None else torch.zeros_like(p)
    return _Moments(step, first, second)


def _unrolled_update(
    opt: torch.optim.Optimizer, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], m: _Moments
) -> dict[str, torch.Tensor]:
    """One out-of-place step of D's own rule. Differs from torch's only in ε under the √ (not after it):
    √v has an infinite derivative at v = 0, which a dead unit's zero gradient would otherwise hit."""
    group = opt.param_groups[0]
    lr = float(group["lr"])
    m.step += 1
    out = {}
    for name, p in params.items():
        g = grads[name]
        if isinstance(opt, torch.optim.Adam):
            b1, b2 = group["betas"]
            m.first[name] = b1 * m.first[name] + (1 - b1) * g
            m.second[name] = b2 * m.second[name] + (1 - b2) * g * g
            m_hat = m.first[name] / (1 - b1**m.step)
            v_hat = m.second[name] / (1 - b2**m.step)
            out[name] = p - lr * m_hat / (torch.sqrt(v_hat + UNROLL_EPS**2) + group["eps"])
        else:
            alpha = group.get("alpha", 0.99)
            m.second[name] = alpha * m.second[name] + (1 - alpha) * g * g
            out[name] = p - lr * g / (torch.sqrt(m.second[name] + UNROLL_EPS**2) + group["eps"])
    return out
