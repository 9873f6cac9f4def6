"""How a seed becomes a latent — the documented, machine-independent mapping.

    z = numpy.random.RandomState(seed).randn(latent_dim).astype(numpy.float32)

NumPy's legacy `RandomState` (MT19937 and its polar-method Gaussian) is frozen by NumPy's stream-
compatibility policy, so the same seed gives the same z on every platform and NumPy version; it is also
the mapping StyleGAN's `gen_images.py` uses, so a seed means the same thing here as there. Seeds are the
integers 0 … 2³² − 1 (RandomState's range).
"""

from collections.abc import Sequence

import numpy as np
import torch

MAX_SEED = 2**32 - 1


def latent_from_seed(seed: int, latent_dim: int) -> torch.Tensor:
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in 0..{MAX_SEED}, got {seed}")
    z = np.random.RandomState(seed).randn(latent_dim).astype(np.float32)
    return torch.from_numpy(z)


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
