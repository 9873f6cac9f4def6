"""What every experiment script shares: train with the project's own loop, rebuild G and D from the
checkpoint it wrote, draw samples from documented seeds, and write results where the README points."""

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.train_config import TrainConfig
from training import checkpoint, regularizers
from training.architectures import build_discriminator, build_generator
from training.latents import latents_from_seeds
from training.loop import train
from training.nets import call_g
from training.samples import sample_conditioning

EXPERIMENTS = Path(__file__).resolve().parent
RESULTS = EXPERIMENTS / "results"
README = EXPERIMENTS / "README.md"
DATA_ROOT = EXPERIMENTS.parent.parent / "shared" / "data"  # /work/shared/data beside the checkout


@dataclass
class Trained:
    g: nn.Module
    d: nn.Module
    meta: dict[str, Any]


def single_thread() -> None:
    """One intra-op thread per process: on 2 cores two single-threaded trainings beat one two-threaded
    one for these small MLPs, and the loop keeps an explicit OMP_NUM_THREADS."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def _rebuild_d(spec: dict[str, Any], tensors: dict[str, torch.Tensor], config: TrainConfig) -> nn.Module:
    d = build_discriminator(spec)
    # Spectral norm re-parametrises D's weights, so the stored keys only fit a D wrapped the same way.
    d = regularizers.prepare(config, 1).apply_to_discriminator(d)
    d.load_state_dict(checkpoint.unprefixed(tensors, "discriminator"))
    return d.eval()


def load_trained(stem: Path) -> Trained:
    tensors, meta = checkpoint.load(stem)
    config = TrainConfig.model_validate(meta["train_config"])
    g = build_generator(meta["generator"])
    g.load_state_dict(checkpoint.unprefixed(tensors, checkpoint.served_prefix(tensors)))  # EMA G when kept
    return Trained(g.eval(), _rebuild_d(meta["discriminator"], tensors, config), meta)


def train_and_load(config: TrainConfig, data_root: Path = DATA_ROOT) -> Trained:
    """Run the real training loop into a scratch folder and rebuild the final G and D from its checkpoint."""
    with tempfile.TemporaryDirectory(prefix="ganserve-exp-") as tmp:
        result = train(config, Path(tmp), data_root=data_root, device="cpu")
        if result.final_checkpoint is None:
            raise RuntimeError(f"{config.model_name}: training wrote no checkpoint ({result.status})")
        return load_trained(result.final_checkpoint)


@torch.no_grad()
def generate(trained: Trained, seeds: list[int]) -> torch.Tensor:
    """G(z) for the latents of `seeds` (training/latents.py); a MAD-GAN draws seed s from generator s % k,
    as the loop's own sample scatter does."""
    z = latents_from_seeds(seeds, int(trained.meta["latent_dim"]))
    _, gen = sample_conditioning(len(seeds), None, trained.meta.get("num_generators"), torch.device("cpu"))
    return call_g(trained.g, z, None, gen)


def mean_and_se(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    se = float(t.std(unbiased=True) / len(values) ** 0.5) if len(values) > 1 else float("nan")
    return float(t.mean()), se


def update_readme(section: str, text: str, path: Path = README) -> None:
    """Replace the block between `<!-- BEGIN section -->` and `<!-- END section -->` in the README at `path`
    (experiments/, or benchmarks/), so each script refreshes its own summary and leaves the rest alone."""
    begin, end = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
    readme = path.read_text() if path.exists() else f"# {path.parent.name.capitalize()}\n"
    block = f"{begin}\n{text.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    readme = pattern.sub(lambda _: block, readme) if pattern.search(readme) else f"{readme.rstrip()}\n\n{block}\n"
    path.write_text(readme)


@contextmanager
def figure(path: Path, **kwargs: Any) -> Iterator[Any]:
    """A matplotlib Figure (no pyplot state, no display) saved to `path` on exit."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    yield fig
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
