import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training import losses


def test_zero_logits_give_log_two() -> None:
    zero = torch.zeros(5)
    assert losses.discriminator_bce(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert losses.generator_non_saturating(zero).item() == pytest.approx(math.log(2))
    assert losses.generator_minimax(zero).item() == pytest.approx(-math.log(2))


def test_hand_computed_values() -> None:
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    d_real, d_fake = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))
    expected = -(math.log(d_real) + math.log(1 - d_fake))
    assert losses.discriminator_bce(real, fake).item() == pytest.approx(expected, rel=1e-6)
    assert losses.generator_non_saturating(fake).item() == pytest.approx(-math.log(d_fake), rel=1e-6)
    assert losses.generator_minimax(fake).item() == pytest.approx(math.log(1 - d_fake), rel=1e-6)


def test_saturated_logits_stay_finite() -> None:
    huge = torch.tensor([-200.0, 200.0])
    for value in (
        losses.discriminator_bce(huge, huge),
        losses.generator_non_saturating(huge),
        losses.generator_minimax(huge),
    ):
        assert torch.isfinite(value)
    # D certain and wrong on both sides costs about |logit| per term, not inf.
    assert losses.discriminator_bce(torch.tensor([-50.0]), torch.tensor([50.0])).item() == pytest.approx(100.0)


def _grad(fn: losses.LossFn, logit: float) -> float:
    x = torch.tensor([logit], requires_grad=True)
    fn(x).backward()
    assert x.grad is not None
    return x.grad.item()


def test_minimax_gradient_vanishes_where_non_saturating_does_not() -> None:
    # Early in training D rejects fakes confidently (very negative logits): Goodfellow et al.'s §3 argument.
    minimax, non_saturating = _grad(losses.generator_minimax, -20.0), _grad(losses.generator_non_saturating, -20.0)
    assert abs(minimax) < 1e-8
    assert non_saturating == pytest.approx(-1.0, abs=1e-6)
    # Both push the same way: raising the fake's logit lowers the generator loss.
    assert _grad(losses.generator_minimax, 0.0) < 0 and _grad(losses.generator_non_saturating, 0.0) < 0


def test_optimal_discriminator_minimises_bce() -> None:
    # Pointwise, D*(x) = p_data / (p_data + p_g) minimises p_data·(−log D) + p_g·(−log(1 − D)).
    p_data, p_g = 0.7, 0.2
    logits = torch.linspace(-5, 5, 2001)
    value = p_data * F.softplus(-logits) + p_g * F.softplus(logits)
    best = torch.sigmoid(logits[value.argmin()]).item()
    assert best == pytest.approx(p_data / (p_data + p_g), abs=1e-2)


def _normal_pdf(x: torch.Tensor, mu: float, sd: float) -> torch.Tensor:
    return torch.exp(-0.5 * ((x - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))


def test_trained_discriminator_recovers_d_star() -> None:
    # Two fixed 1-D densities, p_data = N(0, 1) and p_g = N(1, 1): D* = p_data/(p_data + p_g) = σ(½ − x), so a
    # D trained with the BCE loss on their samples should match σ(½ − x) where both have mass.
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    d = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(d.parameters(), lr=1e-2)
    for _ in range(250):
        real = torch.randn(512, 1, generator=gen)
        fake = torch.randn(512, 1, generator=gen) + 1.0
        loss = losses.discriminator_bce(d(real).squeeze(1), d(fake).squeeze(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.tensor([[-1.0], [0.0], [0.5], [1.0], [2.0]])
    p_data, p_g = _normal_pdf(x, 0.0, 1.0), _normal_pdf(x, 1.0, 1.0)
    with torch.no_grad():
        assert torch.allclose(torch.sigmoid(d(x)), p_data / (p_data + p_g), atol=0.05)


def test_wasserstein_hinge_and_least_squares_values() -> None:
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0])
    w = losses.objective("wasserstein")
    assert w.d_loss(real, fake).item() == pytest.approx(-1.0 - 2.0)  # mean f(fake) − mean f(real)
    assert w.g_loss(fake).item() == pytest.approx(1.0)
    hinge = losses.objective("hinge")
    assert hinge.d_loss(torch.tensor([2.0]), torch.tensor([-2.0])).item() == 0.0  # both beyond the margin
    assert hinge.d_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(2.0)
    assert hinge.g_loss(fake).item() == pytest.approx(1.0)
    ls = losses.objective("least-squares")
    # ½·mean((1−1)², (3−1)²) + ½·mean((−2)², 0²) = ½·2 + ½·2
    assert ls.d_loss(real, fake).item() == pytest.approx(2.0)
    assert ls.g_loss(fake).item() == pytest.approx(0.5 * (9 + 1) / 2)
    assert ls.d_loss(torch.ones(3), torch.zeros(3)).item() == 0.0  # the 0-1 coding's optimum


def test_gradient_penalty_of_a_linear_critic() -> None:
    # f(x) = w·x has ∇f = w everywhere, so the penalty is (‖w‖ − 1)² on any interpolate.
    w = torch.tensor([3.0, 4.0])

    def critic(x: torch.Tensor) -> torch.Tensor:
        return x @ w

    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    lam = 10.0
    assert (lam * losses.gradient_penalty(critic, real, fake)).item() == pytest.approx(lam * (5.0 - 1.0) ** 2)


def test_madgan_losses() -> None:
    k = 3
    uniform = torch.zeros(4, k + 1)
    gen = torch.arange(4) % k
    assert losses.madgan_d_loss(uniform, uniform, gen).item() == pytest.approx(2 * math.log(k + 1))
    assert losses.madgan_g_loss(uniform).item() == pytest.approx(math.log(k + 1))
    assert losses.madgan_g_loss(uniform, saturating=True).item() == pytest.approx(math.log(k / (k + 1)))
    assert torch.isfinite(losses.madgan_g_loss(torch.tensor([[0.0, 0.0, 0.0, -300.0]])))
    # P(real) from the (k+1)-way logits: uniform → 1/(k+1).
    assert torch.sigmoid(losses.realness(uniform)).mean().item() == pytest.approx(1 / (k + 1))


def test_registry() -> None:
    assert set(losses.OBJECTIVES) == {"minimax", "non-saturating", "wasserstein", "wgan-gp", "hinge", "least-squares"}
    assert losses.objective("minimax").g_loss is losses.generator_minimax
    assert losses.objective("non-saturating").d_loss is losses.discriminator_bce
    assert losses.generator_loss("minimax") is losses.generator_minimax
    with pytest.raises(ValueError, match=r"unknown objective .*known: .*hinge"):
        losses.objective("vanilla")
    with pytest.raises(ValueError, match="unknown generator loss"):
        losses.generator_loss("wasserstein")
