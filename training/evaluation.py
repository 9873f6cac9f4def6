"""Evaluating a generator: in the loop, so that a job's quality can be watched as it trains, and on demand for
a published model (`ganserve evaluate`, the worker's evaluation jobs). This module loads what is measured
(generated samples, real images, the extractor); training/metrics.py computes the numbers.

In the loop. Images: FID, KID, IS, precision/recall, coverage and nearest-neighbour distance of `eval_samples`
generated images against as many training images, in the feature space of the extractor the config names. Toy
mixtures: PacGAN's mode metrics. The generated images come from the same seeds every time (0..N-1, the served
seed → latent mapping), so a change in the curve is a change in G, not in the noise it was fed.

`build_evaluator` decides once, before the first step, whether evaluation can run: an extractor named
in the config that cannot load fails the job there (before hours of training), `auto` skips with the
reason (reported in the job record), and a toy 1-D dataset has nothing to measure. Embedding a few of the
real reference images calibrates the first evaluation's expected cost; the first evaluation embeds them all,
once (every evaluation compares against the same ones).

When. An explicit `eval_every` N measures every N epochs and after the last. By default (`eval_every: null`)
measuring must not eat the training: `EvalSchedule` measures at an epoch end only while the seconds spent
evaluating, this evaluation's expected cost included, stay within `EVAL_BUDGET` of the job's wall time so far
(`within_budget`), keeping one more evaluation's cost in reserve before the last epoch so that the final
model is normally measured. A short job whose evaluation costs more than a tenth of it is not measured at all,
and its record says why (`EvalSchedule.skipped_because`).

On demand, `evaluate_model` measures a published model as the loop does (the same seeds, the same fixed choice
of training images), and `real_floor` measures held-out real images against training images: the floor a GAN's
numbers are read against.
"""

import dataclasses
import functools
import sys
import time
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
from training.features import Embedding, ExtractorUnavailable, load_extractor
from training.label_metrics import label_metrics
from training.latents import latents_from_seeds
from training.metrics import ImageMetrics, evaluate_images, mode_metrics, nearest_neighbour_png
from training.nets import call_g
from training.samples import sample_conditioning

EVAL_BATCH = 500  # G forwards per chunk: bounds the activations of a large eval_samples
MIN_EVAL_IMAGES = 10  # below this FID/KID/precision are noise (and KID needs 2 per set)
REAL_SUBSET_SEED = 1234  # which training images are the reference: fixed, and not the shuffling seed
EVAL_BUDGET = 0.10  # the default schedule's share of a job's wall time spent measuring it
# The first evaluation's expected cost, before one has been timed, from a calibration when the evaluator is
# built: embedding CALIBRATION_IMAGES real images, scaled to `eval_samples`. The first evaluation embeds the real
# reference images (then cached), then as many generated ones, and computes the metrics, which costs about
# FIRST_COST_FACTOR embeddings more: measured on the MNIST classifier, one CPU thread, 1,000 images: 0.42 s to
# embed, 1.05 s per evaluation with the real features cached; a heavier extractor's embedding dominates more,
# so 2 errs towards measuring early. The first metrics computed in a process also import torchmetrics (1.1 to
# 1.7 s here, pulling in matplotlib): FIRST_METRICS_S is added while that is still to come. Paid at build, that
# import alone would be more than a tenth of a short job that then never measures anything.
CALIBRATION_IMAGES = 100
FIRST_COST_FACTOR = 2.0
FIRST_METRICS_S = 1.5


@dataclass(frozen=True)
class Evaluator:
    extractor: str  # named in every result: FIDs from different feature spaces are not comparable
    run: Callable[[nn.Module], dict[str, Any]]
    setup_s: float = 0.0  # what calibrating it cost: evaluation time, budgeted too
    estimate_s: float = 0.0  # the first evaluation's expected cost, before one has been timed


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
    real = _real_subset(data, n).clamp(-1, 1)
    t0 = time.monotonic()
    extractor.embed(real[:CALIBRATION_IMAGES])
    setup_s = time.monotonic() - t0
    embed_s = setup_s * n / min(n, CALIBRATION_IMAGES)
    first_s = (1 + FIRST_COST_FACTOR) * embed_s + (0.0 if "torchmetrics" in sys.modules else FIRST_METRICS_S)
    num_classes = data.num_classes if config.conditional else None
    real_features: list[Embedding] = []  # embedded at the first evaluation, once: every one compares against them

    def run(g: nn.Module) -> dict[str, Any]:
        if not real_features:
            real_features.append(extractor.embed(real))
        fake = generate(g, n, config.latent_dim, num_classes, num_generators, device)
        return evaluate_images(fake, real, extractor, real_features=real_features[0]).to_dict()

    return EvaluationPlan(Evaluator(extractor.name, run, setup_s, first_s), None)


def _toy_evaluator(
    config: TrainConfig, data: DeviceDataset, num_generators: int | None, device: torch.device
) -> EvaluationPlan:
    if toy.get(config.dataset).n_modes < 2:
        return EvaluationPlan(None, f"{config.dataset} has one mode: there is no mode coverage to measure")
    # Calibration: scoring real points as the generated ones will be (nothing to cache: the modes are known).
    t0 = time.monotonic()
    mode_metrics(data.samples[: config.eval_samples].float().cpu(), config.dataset)
    setup_s = time.monotonic() - t0

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

    return EvaluationPlan(Evaluator("toy-mode-metrics", run, setup_s, FIRST_COST_FACTOR * setup_s), None)


def build_evaluator(
    config: TrainConfig, data: DeviceDataset, num_generators: int | None, device: torch.device
) -> EvaluationPlan:
    if config.eval_extractor == "none":
        return EvaluationPlan(None, "turned off (eval_extractor: none)")
    if data.kind == "points":
        return _toy_evaluator(config, data, num_generators, device)
    return _image_evaluator(config, data, num_generators, device)


def due(every: int, epoch: int, epochs: int) -> bool:
    """An explicit `eval_every`: every `every` epochs, and after the last."""
    return epoch % every == 0 or epoch == epochs


def within_budget(*, spent_s: float, expected_s: float, elapsed_s: float, last: bool) -> bool:
    """Whether an evaluation expected to take `expected_s` keeps the evaluating seconds (`spent_s` so far, plus
    this one) within `EVAL_BUDGET` of the job's wall time (`elapsed_s` so far, plus this one). Before the last
    epoch one more evaluation's cost stays in reserve: then the budget still holds one at the end, when the
    model users will see is measured."""
    reserve = 0.0 if last else expected_s
    return spent_s + expected_s + reserve <= EVAL_BUDGET * (elapsed_s + expected_s)


@dataclass
class EvalSchedule:
    """When the loop measures: every `every` epochs when the config names it, else by `within_budget` on
    `clock` (wall time since `start`, the job's start). `run` times each evaluation: its cost is the next
    one's expected cost."""

    every: int | None
    start: float
    spent_s: float = 0.0  # evaluating so far, the evaluator's setup included
    expected_s: float = 0.0
    evaluated: int = 0
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def for_run(cls, config: TrainConfig, evaluator: Evaluator | None, start: float) -> "EvalSchedule":
        if evaluator is None:
            return cls(config.eval_every, start)
        return cls(config.eval_every, start, spent_s=evaluator.setup_s, expected_s=evaluator.estimate_s)

    def due(self, epoch: int, epochs: int) -> bool:
        if self.every is not None:
            return due(self.every, epoch, epochs)
        elapsed = self.clock() - self.start
        return within_budget(spent_s=self.spent_s, expected_s=self.expected_s, elapsed_s=elapsed, last=epoch == epochs)

    def run(self, evaluator: Evaluator, g: nn.Module) -> dict[str, Any]:
        t0 = self.clock()
        result = evaluator.run(g)
        self.expected_s = self.clock() - t0
        self.spent_s += self.expected_s
        self.evaluated += 1
        return result

    def skipped_because(self) -> str:
        """Why the last epoch went unmeasured under the budget (for the record)."""
        elapsed = self.clock() - self.start
        done = f"{self.evaluated} earlier epoch(s) were measured" if self.evaluated else "no epoch was measured"
        return (
            f"the last epoch's evaluation did not fit the default budget (at most {EVAL_BUDGET * 100:.0f} % of the "
            f"job's wall time: one is expected to take {self.expected_s:.1f} s, the job ran {elapsed:.0f} s, "
            f"{self.spent_s:.1f} s of it evaluating); {done}. Set eval_every to measure on a fixed cadence"
        )


# --- a published model, and the real-data floor ---------------------------------------------------------------


def _subset(images: torch.Tensor, n: int) -> torch.Tensor:
    """n of the uint8 images, the loop's fixed choice (`_real_pick`), in the models' range."""
    return to_model_range(images[_real_pick(len(images), n)]).float()


def training_images(train_config: dict[str, Any], data_root: Path, n: int) -> torch.Tensor:
    """n images of the dataset a model was trained on (its dataset, image folder, size and `max_samples`, read
    from the config stored with it), in [-1, 1]; fewer when the dataset is smaller."""
    return training_set(train_config, data_root, n)[0]


def training_set(train_config: dict[str, Any], data_root: Path, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`training_images` and their labels (None for an unlabelled dataset)."""
    config = TrainConfig(
        model_name=train_config.get("model_name", "evaluate"),
        dataset=train_config.get("dataset", "mnist"),
        image_folder=train_config.get("image_folder"),
        image_size=train_config.get("image_size"),
        max_samples=train_config.get("max_samples"),
    )
    data = load_training_data(config, Path(data_root))
    pick = _real_pick(len(data.samples), n)
    return to_model_range(data.samples[pick]).float(), None if data.labels is None else data.labels[pick]


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
    real, real_labels = training_set(train_config, data_root, n)
    say(f"measuring {len(fake)} generated vs {len(real)} real images ({ext.name})")
    # Embedded once each: the image metrics and, for a conditional model, the label metrics use the same.
    fake_features, real_features = ext.embed(fake.clamp(-1, 1)), ext.embed(real.clamp(-1, 1))
    metrics = evaluate_images(fake, real, ext, real_features=real_features, fake_features=fake_features)
    if num_classes is not None and real_labels is not None and ext.classes_are_modes:
        say("measuring label agreement and each class's spread")
        fake_labels, _ = sample_conditioning(len(fake), num_classes, None, torch.device("cpu"))
        assert fake_labels is not None
        by_label = label_metrics(fake_features, fake_labels, real_features, real_labels, ext)
        per_class = tuple(by_label.to_dict()["per_class"])
        metrics = dataclasses.replace(metrics, label_agreement=by_label.agreement, per_class=per_class)
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
