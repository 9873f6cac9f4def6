"""Sample-quality metrics: the toy mixtures' mode metrics, and the image metrics. Pure computation:
samples in (tensors, and for images the extractor whose feature space they are measured in), numbers out.
Loading a model or a dataset to measure is training/evaluation.py's job.

Toy mixtures, as in PacGAN (Lin et al. 2018, §5) so that our numbers sit beside its Table 1:

- a sample is *high quality* when its distance to the nearest mode mean is under 3σ;
- a mode is *captured* when it is the nearest mean of at least one high-quality sample;
- *reverse KL* is KL(q‖p), q the histogram of ALL samples over their nearest modes (high quality or
  not, as PacGAN does) and p uniform over the modes. Empty bins contribute 0 (q log q → 0), so
  collapse onto one of K modes gives log K.

Images, in the feature space of a named extractor (training/features.py), computed by torchmetrics where it
has the metric and by hand where it has none:

- FID (Heusel et al. 2017), KID (Bińkowski et al. 2018) and IS (Salimans et al. 2016): torchmetrics, fed the
  extractor's features and logits (extracted once per image set, so every metric sees the same numbers);
- precision and recall (Kynkäänniemi et al. 2019): k-NN balls in feature space, k = 3;
- class coverage: the classifier's argmax histogram of the generated images;
- nearest neighbours: the distance from each generated image to the closest real one, in pixels and in
  features (small means copied), and a PNG of generated images beside their nearest real ones.
"""

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training import images, toy
from training.features import Embedding, Extractor

HIGH_QUALITY_SIGMAS = 3.0


@dataclass(frozen=True)
class ModeMetrics:
    modes_captured: int
    n_modes: int
    high_quality_fraction: float
    reverse_kl: float


def nearest_modes(samples: torch.Tensor, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the nearest mean, distance to it) for every sample."""
    dist = torch.cdist(samples.to(torch.float64), means.to(torch.float64))
    nearest, index = dist.min(dim=1)
    return index, nearest


def reverse_kl_to_uniform(assigned: torch.Tensor, n_modes: int) -> float:
    """KL(q‖uniform) for q the histogram of mode indices `assigned`."""
    q = torch.bincount(assigned, minlength=n_modes).to(torch.float64) / len(assigned)
    q = q[q > 0]  # q log q → 0: empty modes add nothing
    return float((q * torch.log(q * n_modes)).sum())


def mode_metrics(samples: torch.Tensor, distribution: str) -> ModeMetrics:
    """PacGAN's metrics for generated `samples` (N×D) of the toy mixture `distribution`."""
    dist = toy.get(distribution)
    if samples.dim() != 2 or samples.shape[1] != dist.dim or len(samples) == 0:
        raise ValueError(f"{distribution} samples must be N×{dist.dim} with N ≥ 1, got {tuple(samples.shape)}")
    index, distance = nearest_modes(samples.detach().cpu(), dist.means)
    high_quality = distance / dist.sigma < HIGH_QUALITY_SIGMAS
    return ModeMetrics(
        modes_captured=int(index[high_quality].unique().numel()),
        n_modes=dist.n_modes,
        high_quality_fraction=float(high_quality.double().mean()),
        reverse_kl=reverse_kl_to_uniform(index, dist.n_modes),
    )


# --- images ---------------------------------------------------------------------------------------------------

KID_SUBSETS = 100  # torchmetrics' and torch-fidelity's default
KID_SUBSET_SIZE = 1000  # their default size too, halved below 2,000 images so that the subsets differ
IS_SPLITS = 10  # Salimans et al.'s
DEFAULT_K = 3  # Kynkäänniemi et al.'s k for the k-NN radii
COVERAGE_MIN_SHARE = 0.1  # a class is covered when it holds ≥ 10 % of its uniform share (1 % of 10 classes)
DISTANCE_CHUNK = 1024  # query rows per distance matrix: 1024 × 10,000 float32 = 40 MB
CANDIDATES = 8  # nearest neighbours taken from the fast distances before their exact distances are computed
METRICS_SEED = 0  # KID's subsets and IS's splits are random: the same images always give the same numbers
NN_PNG_ROWS = 16


class Precomputed(nn.Module):
    """What torchmetrics calls as its feature extractor: the identity on features we extracted already, with
    the `num_features` it reads to size its state. Each image set goes through the extractor once, and FID, KID
    and IS are then torchmetrics' own computations on those features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """torchmetrics' FID between two sets of feature vectors (N×D, N ≥ 2 each)."""
    # torchmetrics is imported where used: its package imports every metric it has (~2 s), which the toy
    # metrics, and the loop that imports this module, never need.
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=Precomputed(real.shape[1]))
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    return float(fid.compute())


def kid_from_features(real: torch.Tensor, fake: torch.Tensor, subsets: int = KID_SUBSETS) -> tuple[float, float]:
    """torchmetrics' KID (mean, std over `subsets` random subsets) between two sets of feature vectors."""
    from torchmetrics.image.kid import KernelInceptionDistance

    smaller = min(len(real), len(fake))
    size = min(KID_SUBSET_SIZE, max(2, smaller // 2))
    with _seeded(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=Precomputed(real.shape[1]), subsets=subsets, subset_size=size)
        kid.update(real.double(), real=True)  # float64: the cubic kernel's sums lose digits in float32
        kid.update(fake.double(), real=False)
        mean, std = kid.compute()
    return float(mean), float(std)


def inception_score_from_logits(logits: torch.Tensor) -> tuple[float, float]:
    """torchmetrics' IS (mean, std over up to 10 splits) of classifier logits N×C (N ≥ 2); at most C."""
    from torchmetrics.image.inception import InceptionScore

    with _seeded(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        score = InceptionScore(feature=Precomputed(logits.shape[1]), splits=min(IS_SPLITS, len(logits)))
        score.update(logits.double())
        mean, std = score.compute()
    return float(mean), float(std)


@contextlib.contextmanager
def _seeded() -> Iterator[None]:
    # torchmetrics draws KID's subsets and IS's split order from the global RNG: fix it, and leave it as found.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(METRICS_SEED)
        yield


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """For every row of x, the distance to its k-th nearest other row (the row itself is the nearest)."""
    return torch.cat(
        [torch.cdist(chunk, x).topk(k + 1, dim=1, largest=False).values[:, k] for chunk in x.split(DISTANCE_CHUNK)]
    )


def _inside_any_ball(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    return torch.cat([(torch.cdist(chunk, centres) <= radii).any(dim=1) for chunk in points.split(DISTANCE_CHUNK)])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = DEFAULT_K) -> tuple[float, float]:
    """Kynkäänniemi et al. (2019): precision is the share of fake features inside the real manifold (the union
    of balls around each real feature reaching its k-th nearest real neighbour), recall the share of real
    features inside the fake manifold. k must be below both set sizes."""
    if not 1 <= k < min(len(real), len(fake)):
        raise ValueError(f"k = {k} needs more than k samples in each set, have {len(real)} real, {len(fake)} fake")
    precision = _inside_any_ball(fake, real, knn_radii(real, k)).double().mean()
    recall = _inside_any_ball(real, fake, knn_radii(fake, k)).double().mean()
    return float(precision), float(recall)


def nearest_neighbours(queries: torch.Tensor, keys: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """For every row of `queries`, its k nearest rows of `keys` (Euclidean): distances and indices, N×k,
    nearest first. Candidates come from matrix-product distances (fast, but a few 1e-3 off); their distances
    are then recomputed directly, so that a key equal to its query is at exactly 0."""
    k = min(k, len(keys))
    dists, indices = [], []
    for chunk in queries.split(DISTANCE_CHUNK):
        candidates = torch.cdist(chunk, keys).topk(min(k + CANDIDATES, len(keys)), dim=1, largest=False).indices
        exact = (chunk[:, None, :] - keys[candidates]).norm(dim=-1)
        d, order = exact.sort(dim=1)
        dists.append(d[:, :k])
        indices.append(candidates.gather(1, order)[:, :k])
    return torch.cat(dists), torch.cat(indices)


@dataclass(frozen=True)
class Coverage:
    covered: int
    histogram: tuple[float, ...]  # share of the samples the classifier puts in each class
    kl_to_uniform: float


def class_coverage(logits: torch.Tensor) -> Coverage:
    """The classes of the classifier's argmax: how many are covered, i.e. hold at least COVERAGE_MIN_SHARE of a
    uniform share (1 % of the samples for 10 classes: a class drawn that rarely is a mode dropped, and the
    classifier's own ~1 % of errors, spread over the other classes, stays below it), and KL(histogram‖uniform)."""
    classes = logits.shape[1]
    predicted = logits.argmax(dim=1)
    share = torch.bincount(predicted, minlength=classes).double() / len(predicted)
    return Coverage(
        covered=int((share >= COVERAGE_MIN_SHARE / classes).sum()),
        histogram=tuple(float(s) for s in share),
        kl_to_uniform=reverse_kl_to_uniform(predicted, classes),
    )


@dataclass(frozen=True)
class ImageMetrics:
    """Every image metric of one generated set against one real set, in the named extractor's feature space."""

    extractor: str
    n_fake: int
    n_real: int
    fid: float
    kid_mean: float
    kid_std: float
    inception_score: float | None  # None when the extractor has no classifier head
    inception_score_std: float | None
    precision: float
    recall: float
    k: int
    classes_covered: int | None  # None unless the extractor's classes are the dataset's
    num_classes: int | None
    class_kl: float | None  # KL(class histogram‖uniform): 0 when balanced, log C when one class
    class_histogram: tuple[float, ...] | None
    nn_pixel: float  # mean distance from a generated image to its nearest real one, pixels in [-1, 1]
    nn_feature: float  # the same in feature space
    # Conditional models only (training/label_metrics.py): the share of samples classified as the label asked
    # for, and per class its agreement, precision, recall and FID against that class's real images.
    label_agreement: float | None = None
    per_class: tuple[dict[str, Any], ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain floats and ints, lists, and None where a figure is not available or not finite."""
        return {k: _json_ready(v) for k, v in dataclasses.asdict(self).items()}


def _json_ready(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, tuple | list):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


def _check_images(fake: torch.Tensor, real: torch.Tensor) -> None:
    for what, x in (("fake", fake), ("real", real)):
        if x.dim() != 4 or len(x) < 2:
            raise ValueError(f"{what} images must be N×C×H×W with N ≥ 2, got {tuple(x.shape)}")
    if fake.shape[1:] != real.shape[1:]:
        raise ValueError(f"fake images are {tuple(fake.shape[1:])}, real ones {tuple(real.shape[1:])}")


def evaluate_images(
    fake: torch.Tensor,
    real: torch.Tensor,
    extractor: Extractor,
    *,
    k: int = DEFAULT_K,
    real_features: Embedding | None = None,
    fake_features: Embedding | None = None,
) -> ImageMetrics:
    """Every image metric of `fake` against `real` (both float N×C×H×W in [-1, 1], N ≥ 2; clamped to it, as
    the served images are). k, the precision/recall neighbour, is lowered to N − 1 for tiny sets.
    `real_features`: `extractor.embed(real)` computed earlier, for a caller that measures against the same
    real images again and again (the loop): the same figures without embedding them every time.
    `fake_features`: `extractor.embed(fake)`, for a caller that uses the embedding for more (label agreement)."""
    _check_images(fake, real)
    for what, given, batch in (("real", real_features, real), ("fake", fake_features, fake)):
        if given is not None and len(given.features) != len(batch):
            raise ValueError(f"{what}_features holds {len(given.features)} images, {what} {len(batch)}")
    fake, real = fake.detach().float().cpu().clamp(-1, 1), real.detach().float().cpu().clamp(-1, 1)
    f = fake_features if fake_features is not None else extractor.embed(fake)
    r = real_features if real_features is not None else extractor.embed(real)
    k = min(k, len(fake) - 1, len(real) - 1)
    kid_mean, kid_std = kid_from_features(r.features, f.features)
    score = inception_score_from_logits(f.logits) if f.logits is not None else (None, None)
    coverage = class_coverage(f.logits) if f.logits is not None and extractor.classes_are_modes else None
    precision, recall = precision_recall(r.features, f.features, k)
    return ImageMetrics(
        extractor=extractor.name,
        n_fake=len(fake),
        n_real=len(real),
        fid=fid_from_features(r.features, f.features),
        kid_mean=kid_mean,
        kid_std=kid_std,
        inception_score=score[0],
        inception_score_std=score[1],
        precision=precision,
        recall=recall,
        k=k,
        classes_covered=None if coverage is None else coverage.covered,
        num_classes=None if coverage is None else extractor.classes,
        class_kl=None if coverage is None else coverage.kl_to_uniform,
        class_histogram=None if coverage is None else coverage.histogram,
        nn_pixel=float(nearest_neighbours(fake.flatten(1), real.flatten(1))[0].mean()),
        nn_feature=float(nearest_neighbours(f.features, r.features)[0].mean()),
    )


def nearest_neighbour_png(
    fake: torch.Tensor,
    real: torch.Tensor,
    *,
    k: int = DEFAULT_K,
    rows: int = NN_PNG_ROWS,
    extractor: Extractor | None = None,
) -> bytes:
    """A PNG with one row per generated image (the first `rows`): the image, then its k nearest real images in
    pixel space, nearest first, and, given an extractor, after a blank tile its k nearest in that feature
    space. Copies of training images show as a row of twins."""
    fake, real = fake[:rows].float().clamp(-1, 1), real.float().clamp(-1, 1)
    _, by_pixels = nearest_neighbours(fake.flatten(1), real.flatten(1), k)
    columns = [by_pixels]
    if extractor is not None:
        _, by_features = nearest_neighbours(extractor.features(fake).double(), extractor.features(real).double(), k)
        columns.append(by_features)
    blank = torch.full_like(fake[:1], -1.0)
    tiles = []
    for row, f in enumerate(fake):
        tiles.append(f[None])
        for n, index in enumerate(columns):
            tiles += [blank] if n else []
            tiles.append(real[index[row]])
    width = 1 + sum(c.shape[1] for c in columns) + len(columns) - 1
    return images.png_bytes(images.grid(images.to_uint8(torch.cat(tiles)), nrow=width))
