import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from training.latents import MAX_SEED, interpolation_latents, latent_from_seed, latents_from_seeds, slerp


def test_seed_seven_gives_known_values() -> None:
    # RandomState's Gaussian stream is frozen by NumPy's compatibility policy, so these never change.
    z = latent_from_seed(7, 4)
    assert z.dtype == torch.float32
    assert z.tolist() == pytest.approx([1.6905257, -0.4659374, 0.0328202, 0.4075163], abs=1e-6)


def test_same_seed_same_latent_and_prefix_property() -> None:
    assert torch.equal(latent_from_seed(123, 100), latent_from_seed(123, 100))
    assert torch.equal(latent_from_seed(123, 100)[:10], latent_from_seed(123, 10))
    assert not torch.equal(latent_from_seed(1, 100), latent_from_seed(2, 100))


def test_batch_matches_singles() -> None:
    batch = latents_from_seeds([0, 5, 9], 16)
    assert batch.shape == (3, 16)
    assert torch.equal(batch[1], torch.from_numpy(np.random.RandomState(5).randn(16).astype(np.float32)))


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1])
def test_out_of_range_seed(seed: int) -> None:
    with pytest.raises(ValueError, match="seed must be"):
        latent_from_seed(seed, 4)


def test_reused_state_draws_what_a_fresh_one_draws() -> None:
    """The per-thread RandomState is re-seeded, not rebuilt: interleaved seeds and sizes (and a seed drawn twice
    after others) must each give exactly a fresh `RandomState(seed)`'s draw, on any thread."""
    import threading

    def check(seeds: list[int]) -> None:
        for seed in seeds:
            for dim in (1, 7, 100):
                expected = np.random.RandomState(seed).randn(dim).astype(np.float32)
                assert torch.equal(latent_from_seed(seed, dim), torch.from_numpy(expected))

    check([3, 2**32 - 1, 0, 3])
    errors: list[BaseException] = []
    threads = [threading.Thread(target=lambda: _catch(check, [11, 12, 11], errors)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def _catch(fn, arg, errors: list[BaseException]) -> None:
    try:
        fn(arg)
    except BaseException as e:  # surfaced by the test's thread
        errors.append(e)


# --- slerp and interpolation_latents ---------------------------------------------------------------------

seeds = st.integers(0, MAX_SEED)


def _angle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x.double(), y.double()
    return torch.arccos((x @ y / (x.norm() * y.norm())).clamp(-1, 1))


@given(seed_from=seeds, seed_to=seeds, steps=st.integers(2, 64), dim=st.integers(1, 300))
@settings(max_examples=60, deadline=None)
def test_interpolation_ends_are_exactly_the_seeds_latents(seed_from: int, seed_to: int, steps: int, dim: int) -> None:
    z = interpolation_latents(seed_from, seed_to, steps, dim)
    assert z.shape == (steps, dim) and z.dtype == torch.float32
    assert torch.equal(z[0], latent_from_seed(seed_from, dim))
    assert torch.equal(z[-1], latent_from_seed(seed_to, dim))
    assert torch.isfinite(z).all()


@given(
    seed_from=seeds,
    seed_to=seeds,
    dim=st.integers(256, 1024),
    t=st.lists(st.floats(0, 1), min_size=1, max_size=8),
)
@settings(max_examples=60, deadline=None)
def test_slerp_keeps_the_norm_where_a_line_loses_it(seed_from: int, seed_to: int, dim: int, t: list[float]) -> None:
    """Between two high-dimensional Gaussian latents slerp stays on their shell (norm within that of the ends,
    up to a percent), where the straight line's midpoint falls well inside it (norm ≈ 1/√2 of theirs)."""
    assume(seed_from != seed_to)
    a, b = latent_from_seed(seed_from, dim), latent_from_seed(seed_to, dim)
    lo, hi = min(a.norm(), b.norm()).item(), max(a.norm(), b.norm()).item()
    norms = slerp(a, b, torch.tensor(t)).norm(dim=1)
    assert (norms >= 0.99 * lo).all() and (norms <= 1.01 * hi).all(), (norms, lo, hi)
    assert ((a + b) / 2).norm().item() < 0.85 * lo


@given(seed_from=seeds, seed_to=seeds, dim=st.integers(2, 600), t=st.lists(st.floats(0, 1), min_size=2, max_size=10))
@settings(max_examples=60, deadline=None)
def test_slerp_moves_monotonically_at_constant_angular_speed(
    seed_from: int, seed_to: int, dim: int, t: list[float]
) -> None:
    """As t grows the point turns away from a and towards b; between latents of one norm, by the angle t·Ω."""
    a, b = latent_from_seed(seed_from, dim), latent_from_seed(seed_to, dim)
    omega = _angle(a, b).item()
    assume(0.01 < omega < math.pi - 0.01)  # nearly parallel or opposite: the straight-line fallback
    ts = sorted(t)
    points = slerp(a, b, torch.tensor(ts, dtype=torch.float64))
    from_a = [_angle(a, p).item() for p in points]
    to_b = [_angle(b, p).item() for p in points]
    tolerance = 1e-3  # float32 output
    assert all(x <= y + tolerance for x, y in itertools.pairwise(from_a))
    assert all(x >= y - tolerance for x, y in itertools.pairwise(to_b))
    ua, ub = a / a.norm(), b / b.norm()
    on_the_sphere = [_angle(ua, p).item() for p in slerp(ua, ub, torch.tensor(ts, dtype=torch.float64))]
    assert on_the_sphere == pytest.approx([s * omega for s in ts], abs=tolerance)


def test_slerp_of_a_number_is_one_latent_and_its_ends_are_exact() -> None:
    a, b = latent_from_seed(1, 16), latent_from_seed(2, 16)
    assert slerp(a, b, 0.5).shape == (16,)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    assert slerp(a, b, torch.tensor([0.0, 0.5, 1.0])).shape == (3, 16)


def test_parallel_opposite_and_zero_latents_fall_back_to_the_line() -> None:
    a = latent_from_seed(3, 32)
    ts = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(slerp(a, a, ts), a.expand(4, -1))  # the same latent: every frame is it
    assert torch.allclose(slerp(a, 2 * a, ts)[2], 1.5 * a)
    assert torch.allclose(slerp(a, -a, ts)[2], torch.zeros(32), atol=1e-6)
    zero = torch.zeros(32)
    assert torch.allclose(slerp(zero, a, ts)[1], 0.25 * a)
    assert torch.isfinite(slerp(zero, zero, ts)).all()


@pytest.mark.parametrize("steps", [-1, 0, 1])
def test_an_interpolation_needs_both_ends(steps: int) -> None:
    with pytest.raises(ValueError, match="at least 2 steps"):
        interpolation_latents(1, 2, steps, 8)


def test_slerp_wants_two_vectors_of_one_size() -> None:
    with pytest.raises(ValueError, match="1-D latents"):
        slerp(torch.zeros(3), torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match="1-D latents"):
        slerp(torch.zeros(2, 3), torch.zeros(2, 3), 0.5)
