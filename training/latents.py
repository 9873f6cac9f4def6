"""How a seed becomes a latent — the documented, machine-independent mapping.

    z = numpy.random.RandomState(seed).randn(latent_dim).astype(numpy.float32)

NumPy's legacy `RandomState` (MT19937 and its polar-method Gaussian) is frozen by NumPy's stream-
compatibility policy, so the same seed gives the same z on every platform and NumPy version; it is also
the mapping StyleGAN's `gen_images.py` uses, so a seed means the same thing here as there. Seeds are the
integers 0 … 2³² − 1 (RandomState's range).
"""

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
