"""How a seed becomes a latent — the documented, machine-independent mapping.

    z = numpy.random.RandomState(seed).randn(latent_dim).astype(numpy.float32)

NumPy's legacy `RandomState` (MT19937 and its polar-method Gaussian) is frozen by NumPy's stream-
compatibility policy, so the same seed gives the same z on every platform and NumPy version; it is also
the mapping StyleGAN's `gen_images.py` uses, so a seed means the same thing here as there. Seeds are the
integers 0 … 2³² − 1 (RandomState's range).
"""

import bisect
import itertools
import threading
from collections.abc import Sequence

import numpy as np
import torch

MAX_SEED = 2**32 - 1


_local = threading.local()


def _state() -> np.random.RandomState:
    # Re-seeding one RandomState per thread draws exactly what a new `RandomState(seed)` draws (legacy seeding
    # of an integer is the same `init_genrand` either way; tests/training/test_latents.py checks it), in 3 µs
    # instead of the 160-200 µs it takes to build one: on /generate that was more than the forward itself.
    state = getattr(_local, "state", None)
    if state is None:
        state = _local.state = np.random.RandomState(0)
    return state


def latent_from_seed(seed: int, latent_dim: int) -> torch.Tensor:
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in 0..{MAX_SEED}, got {seed}")
    state = _state()
    state.seed(seed)
    return torch.from_numpy(state.randn(latent_dim).astype(np.float32))


def latents_from_seeds(seeds: list[int], latent_dim: int) -> torch.Tensor:
    return torch.stack([latent_from_seed(s, latent_dim) for s in seeds])


def seed_labels(seeds: Sequence[int], num_classes: int | None, label: int | None = None) -> list[int] | None:
    """A class-conditional model's class for each seed: `label` for all of them, or else `seed % num_classes`,
    so that consecutive seeds cycle through the classes (and a grid `num_classes` wide has one class per
    column). None for an unconditional model. Used by /generate, the CLI and the training sample grids alike."""
    if num_classes is None:
        if label is not None:
            raise ValueError("the model is not class-conditional: it takes no label")
        return None
    if label is not None and not 0 <= label < num_classes:
        raise ValueError(f"label {label} is not one of the model's classes 0…{num_classes - 1}")
    return [label if label is not None else s % num_classes for s in seeds]


def seed_generators(
    seeds: Sequence[int], num_generators: int | None, weights: Sequence[float] | None = None
) -> list[int] | None:
    """The generator each seed picks: MAD-GAN's `seed % k` (seeds s and s + k share one); with `weights` (an
    AdaGAN mixture's), `seed_components`. None for a model of one generator."""
    if num_generators is None:
        return None
    if weights is not None:
        if len(weights) != num_generators:
            raise ValueError(f"{num_generators} generators need as many mixture weights, got {len(weights)}")
        return seed_components(seeds, weights)
    return [s % num_generators for s in seeds]


# --- mixture components ---------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_COMPONENT_SALT = 0x41444147414E2D31  # "ADAGAN-1": a seed's component draw is not its own splitmix64 value


def _splitmix64(x: int) -> int:
    """SplitMix64's output function (Steele, Lea & Flood 2014): a bijection of 64-bit integers whose outputs
    pass BigCrush for consecutive inputs — a counter-based generator, pure integer arithmetic."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def seed_uniform(seed: int) -> float:
    """A uniform number in [0, 1) that depends on the seed alone: the top 53 bits of splitmix64(seed ^ salt).
    Integer arithmetic and one exact division by 2⁵³, so the same on every machine, and independent of the
    seed's latent (NumPy's MT19937 stream)."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in 0..{MAX_SEED}, got {seed}")
    return (_splitmix64(seed ^ _COMPONENT_SALT) >> 11) / float(1 << 53)


def seed_components(seeds: Sequence[int], weights: Sequence[float]) -> list[int]:
    """A mixture's component for each seed: the first i whose cumulative weight w₀ + … + wᵢ exceeds
    `seed_uniform(seed)` × Σw. Over many seeds component i is picked with frequency wᵢ / Σw; a seed always
    picks the same one (no global RNG)."""
    if not weights or any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"mixture weights must be non-negative with a positive sum, got {list(weights)}")
    cumulative = list(itertools.accumulate(float(w) for w in weights))
    total = cumulative[-1]
    last = len(cumulative) - 1
    # min(): u·Σw may round up to Σw itself; bisect_right skips components of weight 0 (equal cumulatives).
    return [min(bisect.bisect_right(cumulative, seed_uniform(s) * total), last) for s in seeds]


# --- interpolation --------------------------------------------------------------------------------------

# Below this sine of the angle between two latents (nearly parallel, or nearly opposite) the great circle
# through them is ill-defined or numerically useless, and slerp falls back to the straight line.
_SLERP_MIN_SIN = 1e-6


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation from latent `a` (t = 0) to latent `b` (t = 1): along the arc through them
    (a great circle when |a| = |b|, then at constant angular speed),

        slerp(a, b, t) = sin((1 − t) Ω) / sin Ω · a + sin(t Ω) / sin Ω · b,   Ω = angle(a, b).

    Why not a straight line: a d-dimensional standard Gaussian concentrates on a shell of radius ≈ √d, and two
    independent latents are nearly orthogonal, so the midpoint of the segment between them has norm ≈ √(d/2),
    far inside the shell where the generator was never trained; slerp stays on it (White 2016, "Sampling
    Generative Networks", arXiv:1609.04468). Nearly parallel (or opposite) latents fall back to the line.

    `a`, `b`: 1-D, the same size. `t`: a number (→ one latent) or a 1-D tensor of fractions (→ len(t) × d).
    Computed in float64, returned in `a`'s dtype; t = 0 and t = 1 give exactly `a` and `b`."""
    if a.dim() != 1 or a.shape != b.shape:
        raise ValueError(f"expected two 1-D latents of the same size, got {tuple(a.shape)} and {tuple(b.shape)}")
    scalar = not isinstance(t, torch.Tensor) or t.dim() == 0
    ts = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    norms = a64.norm() * b64.norm()
    cos = (a64 @ b64 / norms).clamp(-1.0, 1.0) if norms > 0 else torch.tensor(1.0, dtype=torch.float64)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    if sin < _SLERP_MIN_SIN:
        out = (1 - ts) * a64 + ts * b64
    else:
        out = (torch.sin((1 - ts) * omega) * a64 + torch.sin(ts * omega) * b64) / sin
    # The ends exactly (not merely to rounding): a frame at t = 0 or 1 is then the plain seed's image.
    flat = ts.reshape(-1)
    out[flat == 0] = a64
    out[flat == 1] = b64
    out = out.to(a.dtype)
    return out[0] if scalar else out


def interpolation_latents(seed_from: int, seed_to: int, steps: int, latent_dim: int) -> torch.Tensor:
    """`steps` latents (steps × latent_dim, float32) at evenly spaced fractions 0, 1/(steps−1), … 1 of the slerp
    from seed `seed_from`'s latent to seed `seed_to`'s: the first row is exactly `latent_from_seed(seed_from)`,
    the last exactly `latent_from_seed(seed_to)`."""
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 steps (both ends), got {steps}")
    a, b = latent_from_seed(seed_from, latent_dim), latent_from_seed(seed_to, latent_dim)
    return slerp(a, b, torch.linspace(0.0, 1.0, steps, dtype=torch.float64))
