import math

import pytest
import torch

from training import toy
from training.metrics import mode_metrics


@pytest.mark.parametrize(("name", "n_modes", "sigma"), [("ring-2d", 8, 0.01), ("grid-2d", 25, 0.05)])
def test_mixture_definitions(name: str, n_modes: int, sigma: float) -> None:
    dist = toy.TOY[name]
    assert dist.n_modes == n_modes and dist.dim == 2 and dist.sigma == sigma


def test_ring_means_are_on_the_unit_circle_at_equal_angles() -> None:
    means = toy.TOY["ring-2d"].means
    assert torch.allclose(means.norm(dim=1), torch.ones(8, dtype=torch.float64))
    assert torch.allclose(means[2], torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-12)  # 2π·2/8


def test_grid_means_cover_the_lattice() -> None:
    means = toy.TOY["grid-2d"].means
    assert sorted(map(tuple, means.tolist())) == [(x, y) for x in range(-4, 5, 2) for y in range(-4, 5, 2)]


@pytest.mark.parametrize("name", sorted(toy.TOY))
def test_samples_have_the_mixture_statistics(name: str) -> None:
    dist = toy.TOY[name]
    x = toy.sample(name, 50_000, seed=1)
    assert x.shape == (50_000, dist.dim) and x.dtype == torch.float32
    nearest = torch.cdist(x.double(), dist.means).argmin(dim=1)
    residual = x.double() - dist.means[nearest]
    assert residual.std(dim=0) == pytest.approx([dist.sigma] * dist.dim, rel=0.03)
    assert residual.mean(dim=0).abs().max() < 0.03 * dist.sigma
    counts = torch.bincount(nearest, minlength=dist.n_modes).double()
    expected = len(x) / dist.n_modes
    assert (counts - expected).abs().max() < 5 * math.sqrt(expected)  # uniform over components


def test_samples_are_deterministic_by_seed() -> None:
    assert torch.equal(toy.sample("grid-2d", 100, 7), toy.sample("grid-2d", 100, 7))
    assert not torch.equal(toy.sample("grid-2d", 100, 7), toy.sample("grid-2d", 100, 8))


def test_gaussian_1d_is_documented_choice() -> None:
    x = toy.sample("gaussian-1d", 100_000, 0)
    assert x.mean().item() == pytest.approx(4.0, abs=0.01) and x.std().item() == pytest.approx(0.5, rel=0.01)


def test_density_integrates_to_one() -> None:
    xs = torch.linspace(0, 8, 4001).unsqueeze(1)
    assert torch.trapezoid(toy.density("gaussian-1d", xs), dx=8 / 4000).item() == pytest.approx(1.0, abs=1e-6)


def test_unknown_distribution() -> None:
    with pytest.raises(ValueError, match="unknown toy distribution"):
        toy.sample("spiral", 10, 0)


# --- PacGAN mode metrics ---------------------------------------------------------------------------------


def test_all_modes_exactly_hit() -> None:
    means = toy.TOY["ring-2d"].means.float()
    m = mode_metrics(means.repeat(10, 1), "ring-2d")
    assert (m.modes_captured, m.n_modes, m.high_quality_fraction) == (8, 8, 1.0)
    assert m.reverse_kl == pytest.approx(0.0, abs=1e-12)


def test_collapse_onto_one_mode() -> None:
    one = toy.TOY["ring-2d"].means[3].float().repeat(100, 1)
    m = mode_metrics(one, "ring-2d")
    assert m.modes_captured == 1 and m.high_quality_fraction == 1.0
    assert m.reverse_kl == pytest.approx(math.log(8))


def test_samples_four_sigma_away_are_not_high_quality() -> None:
    dist = toy.TOY["grid-2d"]
    offset = torch.tensor([4 * dist.sigma, 0.0], dtype=torch.float64)
    m = mode_metrics((dist.means + offset).float(), "grid-2d")
    assert m.high_quality_fraction == 0.0 and m.modes_captured == 0
    assert m.reverse_kl == pytest.approx(0.0, abs=1e-9)  # all samples still count towards the histogram


def test_true_samples_score_like_the_data() -> None:
    m = mode_metrics(toy.sample("grid-2d", 2500, 0), "grid-2d")
    assert m.modes_captured == 25 and m.high_quality_fraction > 0.98 and m.reverse_kl < 0.02


def test_half_good_half_far() -> None:
    means = toy.TOY["ring-2d"].means.float()
    far = means * 1.5  # 0.5 from its mode = 50σ
    m = mode_metrics(torch.cat([means[:4], far[4:]]), "ring-2d")
    assert m.modes_captured == 4 and m.high_quality_fraction == 0.5


def test_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="N×2"):
        mode_metrics(torch.zeros(5, 3), "ring-2d")
