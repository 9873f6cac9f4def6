"""How a seed becomes a latent — the documented, machine-independent mapping.

    z = numpy.random.RandomState(seed).randn(latent_dim).astype(numpy.float32)

NumPy's legacy `RandomState` (MT19937 and its polar-method Gaussian) is frozen by NumPy's stream-
compatibility policy, so the same seed gives the same z on every platform and NumPy version; it is also
the mapping StyleGAN's `gen_images.py` uses, so a seed means the same thing here as there. Seeds are the
integers 0 … 2³² − 1 (RandomState's range).
"""

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


def seed_generators(seeds: Sequence[int], num_generators: int | None) -> list[int] | None:
    """MAD-GAN: the seed picks the generator, `seed % k` (seeds s and s + k share one). None otherwise."""
    return None if num_generators is None else [s % num_generators for s in seeds]
