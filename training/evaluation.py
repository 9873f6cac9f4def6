"""What the loop measures every `eval_every` epochs, so that a job's quality can be watched as it trains.

Images: FID, KID, IS, precision/recall, coverage and nearest-neighbour distance (`training.metrics`) of
`eval_samples` generated images against as many training images, in the feature space of the extractor
the config names. Toy mixtures: PacGAN's mode metrics. The generated images come from the same seeds
every time (0..N-1, the served seed → latent mapping), so a change in the curve is a change in G, not in
the noise it was fed.

`build_evaluator` decides once, before the first step, whether evaluation can run: an extractor named
in the config that cannot load fails the job there (before hours of training), `auto` skips with the
reason (reported in the job record), and a toy 1-D dataset has nothing to measure.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training import toy
from training.config import TrainConfig
from training.data import DeviceDataset
from training.latents import latents_from_seeds
from training.metrics import mode_metrics
from training.nets import call_g
from training.samples import sample_conditioning

EVAL_BATCH = 500  # G forwards per chunk: bounds the activations of a large eval_samples
MIN_EVAL_IMAGES = 10  # below this FID/KID/precision are noise (and KID needs 2 per set)
REAL_SUBSET_SEED = 1234  # which training images are the reference: fixed, and not the shuffling seed


@dataclass(frozen=True)
class Evaluator:
    extractor: str  # named in every result: FIDs from different feature spaces are not comparable
    run: Callable[[nn.Module], dict[str, Any]]


@dataclass(frozen=True)
class EvaluationPlan:
    evaluator: Evaluator | None
    skipped_because: str | None  # set when evaluator is None


@functools.lru_cache(maxsize=4)
def _latents(n: int, latent_dim: int) -> torch.Tensor:
    # n RandomState draws cost ~0.2 ms each: draw them once per run, not at every evaluation.
    return latents_from_seeds(list(range(n)), latent_dim)


@torch.no_grad()
def generate(
    g: nn.Module, n: int, latent_dim: int, num_classes: int | None, num_generators: int | None, device: torch.device
) -> torch.Tensor:
    """`n` samples of G in eval mode from seeds 0..n-1 (G's mode restored after), on the CPU."""
    z = _latents(n, latent_dim).to(device)
    labels, gens = sample_conditioning(n, num_classes, num_generators, device)
    was_training = g.training
    g.eval()
    try:
        chunks = [
            call_g(
                g,
                z[i : i + EVAL_BATCH],
                None if labels is None else labels[i : i + EVAL_BATCH],
                None if gens is None else gens[i : i + EVAL_BATCH],
            )
            for i in range(0, n, EVAL_BATCH)
        ]
    finally:
        g.train(was_training)
    return torch.cat(chunks).float().cpu()


def _real_subset(data: DeviceDataset, n: int) -> torch.Tensor:
    pick = torch.randperm(data.n, generator=torch.Generator().manual_seed(REAL_SUBSET_SEED))[:n]
    return data.to_model_range(data.samples[pick.to(data.samples.device)]).float().cpu()


def _image_evaluator(
    config: TrainConfig, data: DeviceDataset, num_generators: int | None, device: torch.device
) -> EvaluationPlan:
    from training.features import ExtractorUnavailable, load_extractor
    from training.metrics import evaluate_images

    try:
        extractor = load_extractor(config.eval_extractor, config.dataset)
    except ExtractorUnavailable as e:
        if config.eval_extractor != "auto":
            raise ValueError(f"eval_extractor {config.eval_extractor!r} cannot be used: {e}") from None
        return EvaluationPlan(None, f"no feature extractor for {config.dataset}: {e}")
    n = min(config.eval_samples, data.n)
    if n < MIN_EVAL_IMAGES:
        return EvaluationPlan(None, f"{data.n} training images are too few to measure (at least {MIN_EVAL_IMAGES})")
    real = _real_subset(data, n)
    num_classes = data.num_classes if config.conditional else None

    def run(g: nn.Module) -> dict[str, Any]:
        fake = generate(g, n, config.latent_dim, num_classes, num_generators, device)
        return evaluate_images(fake, real, extractor).to_dict()

    return EvaluationPlan(Evaluator(extractor.name, run), None)


def _toy_evaluator(config: TrainConfig, num_generators: int | None, device: torch.device) -> EvaluationPlan:
    if toy.get(config.dataset).n_modes < 2:
        return EvaluationPlan(None, f"{config.dataset} has one mode: there is no mode coverage to measure")

    def run(g: nn.Module) -> dict[str, Any]:
        fake = generate(g, config.eval_samples, config.latent_dim, None, num_generators, device)
        m = mode_metrics(fake, config.dataset)
        return {
            "modes_captured": m.modes_captured,
            "n_modes": m.n_modes,
            "high_quality_fraction": m.high_quality_fraction,
            "reverse_kl": m.reverse_kl,
            "n_fake": config.eval_samples,
        }

    return EvaluationPlan(Evaluator("toy-mode-metrics", run), None)


def build_evaluator(
    config: TrainConfig, data: DeviceDataset, num_generators: int | None, device: torch.device
) -> EvaluationPlan:
    if config.eval_extractor == "none":
        return EvaluationPlan(None, "turned off (eval_extractor: none)")
    if data.kind == "points":
        return _toy_evaluator(config, num_generators, device)
    return _image_evaluator(config, data, num_generators, device)


def due(config: TrainConfig, epoch: int, epochs: int) -> bool:
    every = config.eval_every or config.sample_every
    return epoch % every == 0 or epoch == epochs
