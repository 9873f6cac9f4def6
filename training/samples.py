"""What a run writes to show its generator: a PNG grid of G's images for the fixed seeds 0..63, or for a
toy run a scatter (2-D) or histogram (1-D) of G's points over the data. Seeds map to class labels and
MAD-GAN generators (AdaGAN components) as /generate maps them, so the samples match what will be served for those seeds.
"""

import functools
import io
import math
from pathlib import Path

import torch
from torch import nn

from core.files import atomic_write_bytes
from core.train_config import TrainConfig
from training import images
from training.data import DeviceDataset
from training.latents import latents_from_seeds, seed_generators, seed_labels
from training.nets import call_g

SAMPLE_SEEDS = list(range(64))  # the grid shows seeds 0..63, so it matches /generate for those seeds
POINT_SEEDS = list(range(2500))  # the scatter of a toy run: enough points to see every mode


def sample_conditioning(
    n: int,
    num_classes: int | None,
    num_generators: int | None,
    device: torch.device,
    weights: list[float] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Labels and generator indices of seeds 0…n−1, mapped as /generate maps them (`weights`: an AdaGAN
    mixture's, `mixture_weights`)."""
    seeds = range(n)
    labels, gen = seed_labels(seeds, num_classes), seed_generators(seeds, num_generators, weights)
    return (
        None if labels is None else torch.tensor(labels, device=device),
        None if gen is None else torch.tensor(gen, device=device),
    )


def _weights(g: nn.Module) -> list[float] | None:
    """An AdaGAN mixture's component weights (training/architectures.py), None for any other G."""
    return getattr(g, "mixture_weights", None)


def _generate(g: nn.Module, z: torch.Tensor, labels: torch.Tensor | None, gen: torch.Tensor | None) -> torch.Tensor:
    g.eval()
    try:
        with torch.no_grad():
            return call_g(g, z, labels, gen)
    finally:
        g.train()


@functools.lru_cache(maxsize=4)
def _point_latents(latent_dim: int) -> torch.Tensor:
    # 2,500 RandomState draws cost ~0.5 s; a toy run writes a scatter every epoch, so draw them once.
    return latents_from_seeds(POINT_SEEDS, latent_dim)


def write_samples(
    path: Path,
    g: nn.Module,
    fixed_z: torch.Tensor,
    config: TrainConfig,
    data: DeviceDataset,
    num_generators: int | None,
    device: torch.device,
) -> None:
    """G's samples as a PNG at `path`: the grid of `fixed_z` for images, the POINT_SEEDS scatter for points."""
    num_classes = data.num_classes if config.conditional else None
    if data.kind == "image":
        # A conditional grid is one class per column (seed s has class s % num_classes).
        nrow = num_classes or math.ceil(math.sqrt(fixed_z.shape[0]))
        labels, gen = sample_conditioning(fixed_z.shape[0], num_classes, num_generators, device, _weights(g))
        fake = _generate(g, fixed_z, labels, gen)
        png = images.png_bytes(images.grid(images.to_uint8(fake), nrow=nrow))
    else:
        z = _point_latents(config.latent_dim).to(device)
        labels, gen = sample_conditioning(len(POINT_SEEDS), None, num_generators, device, _weights(g))
        fake = _generate(g, z, labels, gen)
        png = scatter_png(data.to_model_range(data.samples).cpu(), fake.cpu(), config.dataset)
    atomic_write_bytes(path, png)


def scatter_png(real: torch.Tensor, fake: torch.Tensor, title: str) -> bytes:
    """Generated points over the data: a scatter for 2-D, histograms (as densities) for 1-D."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot()
    real, fake = real.flatten(1).numpy(), fake.flatten(1).numpy()
    if real.shape[1] == 1:
        bins = 100
        ax.hist(real[:, 0], bins=bins, density=True, alpha=0.5, color="tab:blue", label="data")
        ax.hist(fake[:, 0], bins=bins, density=True, alpha=0.5, color="tab:orange", label="generated")
        ax.set_ylabel("density")
    else:
        ax.scatter(real[:, 0], real[:, 1], s=2, alpha=0.3, color="tab:blue", label="data")
        ax.scatter(fake[:, 0], fake[:, 1], s=2, alpha=0.5, color="tab:orange", label="generated")
        ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="upper right")
    ax.set_title(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
