"""Evaluating a generator: in the loop every `eval_every` epochs, so that a job's quality can be watched as it
trains, and on demand for a published model (`ganserve evaluate`, the worker's evaluation jobs). This
module loads what is measured (generated samples, real images, the extractor); training/metrics.py computes the
numbers.

In the loop. Images: FID, KID, IS, precision/recall, coverage and nearest-neighbour distance of `eval_samples`
generated images against as many training images, in the feature space of the extractor the config names. Toy
mixtures: PacGAN's mode metrics. The generated images come from the same seeds every time (0..N-1, the served
seed → latent mapping), so a change in the curve is a change in G, not in the noise it was fed.

`build_evaluator` decides once, before the first step, whether evaluation can run: an extractor named
in the config that cannot load fails the job there (before hours of training), `auto` skips with the
reason (reported in the job record), and a toy 1-D dataset has nothing to measure.

On demand, `evaluate_model` measures a published model as the loop does (the same seeds, the same fixed choice
of training images), and `real_floor` measures held-out real images against training images: the floor a GAN's
numbers are read against.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.files import atomic_write_bytes
from core.train_config import TrainConfig
from training import checkpoint, toy
from training.classifier import holdout_split
from training.data import DeviceDataset, load_training_data, to_model_range
from training.features import ExtractorUnavailable, load_extractor
from training.latents import latents_from_seeds
from training.metrics import ImageMetrics, evaluate_images, mode_metrics, nearest_neighbour_png
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
    labels, gens = sample_conditioning(n, num_classes, num_generators, device, getattr(g, "mixture_weights", None))
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


def _real_pick(count: int, n: int) -> torch.Tensor:
    """Which n of `count` real images are the reference: a fixed pseudo-random choice, the same in the loop as
    in `evaluate_model`, so that a job's last evaluation and a later one of its model compare with the same
    real images."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(REAL_SUBSET_SEED))[:n]


def _real_subset(data: DeviceDataset, n: int) -> torch.Tensor:
    pick = _real_pick(data.n, n)
    return data.to_model_range(data.samples[pick.to(data.samples.device)]).float().cpu()


def _image_evaluator(
    config: TrainConfig, data: DeviceDataset, num_generators: int | None, device: torch.device
) -> EvaluationPlan:
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


# --- a published model, and the real-data floor ---------------------------------------------------------------


def _subset(images: torch.Tensor, n: int) -> torch.Tensor:
    """n of the uint8 images, the loop's fixed choice (`_real_pick`), in the models' range."""
    return to_model_range(images[_real_pick(len(images), n)]).float()


def training_images(train_config: dict[str, Any], data_root: Path, n: int) -> torch.Tensor:
    """n images of the dataset a model was trained on (its dataset, image folder, size and `max_samples`, read
    from the config stored with it), in [-1, 1]; fewer when the dataset is smaller."""
    config = TrainConfig(
        model_name=train_config.get("model_name", "evaluate"),
        dataset=train_config.get("dataset", "mnist"),
        image_folder=train_config.get("image_folder"),
        image_size=train_config.get("image_size"),
        max_samples=train_config.get("max_samples"),
    )
    return _subset(load_training_data(config, Path(data_root)).samples, n)


def evaluate_model(
    stem: Path,
    *,
    n: int,
    data_root: Path,
    extractor: str = "auto",
    nn_png: Path | None = None,
    progress_fn: Callable[[str], None] | None = None,
) -> ImageMetrics:
    """The image metrics of a published model (`stem` = <models_dir>/<name>/<version>/model): n images from
    seeds 0..n-1 (latents, classes and MAD-GAN generators as /generate maps them) against n images of its
    training data. Writes the nearest-neighbour PNG to `nn_png` when given. Raises CheckpointError,
    DatasetError, ExtractorUnavailable, or ValueError for a model of toy points."""
    say = progress_fn or (lambda _: None)
    say("loading the model")
    g, meta = checkpoint.load_generator(stem)
    if meta.get("kind", "image") != "image":
        raise ValueError(f"{stem} generates {meta.get('dataset')} points, not images: use mode_metrics")
    train_config = meta.get("train_config") or {"dataset": meta.get("dataset", "mnist")}
    ext = load_extractor(extractor, train_config.get("dataset", "mnist"))
    say(f"generating {n} images")
    num_classes = meta.get("num_classes") if meta.get("conditional") else None
    fake = generate(g, n, int(meta["latent_dim"]), num_classes, getattr(g, "num_generators", None), torch.device("cpu"))
    lo, hi = meta.get("value_range", [-1, 1])
    fake = (fake - lo) / (hi - lo) * 2 - 1
    say("loading the training images")
    real = training_images(train_config, data_root, n)
    say(f"measuring {len(fake)} generated vs {len(real)} real images ({ext.name})")
    metrics = evaluate_images(fake, real, ext)
    if nn_png is not None:
        atomic_write_bytes(nn_png, nearest_neighbour_png(fake, real, extractor=ext))
    return metrics


def real_floor(dataset: str, *, n: int, data_root: Path, extractor: str = "auto") -> ImageMetrics:
    """The same metrics for real images the classifier never saw against real training images of the same
    population: what two samples of the real distribution score, the floor for a GAN at this sample size. The
    held-out images are `holdout_split`'s held-out part, the reference its `reference` (MNIST here: t10k
    8000..9999 against t10k 5000..7999, the same half of t10k; the two disjoint). Both sets have min(n, either
    part's size) images, a fixed choice, since FID's bias depends on the sample size."""
    ext = load_extractor(extractor, dataset)
    split = holdout_split(dataset, Path(data_root))
    m = min(n, len(split.heldout), len(split.reference))
    return evaluate_images(_subset(split.heldout, m), _subset(split.reference, m), ext)
