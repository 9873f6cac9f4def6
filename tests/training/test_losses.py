import math

import pytest
import torch

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
    value = p_data * torch.nn.functional.softplus(-logits) + p_g * torch.nn.functional.softplus(logits)
    best = torch.sigmoid(logits[value.argmin()]).item()
    assert best == pytest.approx(p_data / (p_data + p_g), abs=1e-2)


def test_registry() -> None:
    assert set(losses.GENERATOR_LOSSES) == {"minimax", "non-saturating"}
    assert losses.generator_loss("minimax") is losses.generator_minimax
    with pytest.raises(ValueError, match="unknown generator loss"):
        losses.generator_loss("wasserstein")
