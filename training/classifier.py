"""Training the MNIST classifier behind the `mnist-cnn` extractor (`ganserve classifier`), and the
fixed held-out split it trains on, which the real-data floor (training/evaluation.py) also measures.

The network itself, `MnistCnn`, lives in training/features.py, which loads the committed weights; this module
trains it, measures it on the held-out part and writes the weights file that features.py reads.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from core.files import atomic_write_bytes
from training.data import DatasetError, find_idx_files, load_cifar10, read_idx_images, read_idx_labels
from training.features import (
    MNIST_CLASSES,
    MNIST_CNN_FORMAT,
    MNIST_CNN_NAME,
    MNIST_SIZE,
    MnistCnn,
    clear_mnist_cnn_cache,
    to_mnist_input,
)

# A dataset stored as a single split holds out its last fifth: MNIST's t10k alone gives 8,000 + 2,000.
HOLDOUT_FRACTION = 0.2
CIFAR_TRAIN = 50_000  # the five data batches; the test batch follows them
MNIST_T10K = 10_000
MNIST_T10K_HALF = 5_000  # where t10k's digits from NIST's test set (the harder writers) begin


# --- held-out splits ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HoldoutSplit:
    """A dataset cut into a training part and a disjoint held-out part (uint8 N×C×H×W, int64 labels)."""

    train: torch.Tensor
    train_labels: torch.Tensor | None
    heldout: torch.Tensor
    heldout_labels: torch.Tensor | None
    description: str
    # The real floor compares the held-out images with train[reference_start:]: the training images that come
    # from the same population as the held-out ones (all of them, except in MNIST's t10k alone).
    reference_start: int = 0

    @property
    def reference(self) -> torch.Tensor:
        return self.train[self.reference_start :]

    @property
    def reference_description(self) -> str:
        return f"training images {self.reference_start}..{len(self.train) - 1}"


def _tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(images))  # a copy: IDX arrays are read-only views of the file's bytes
    return x.unsqueeze(1) if x.dim() == 3 else x


def _labels(labels: np.ndarray | None) -> torch.Tensor | None:
    return None if labels is None else torch.from_numpy(labels.copy())


def _cut(images: np.ndarray, labels: np.ndarray | None, what: str, reference_start: int = 0) -> HoldoutSplit:
    start = len(images) - math.ceil(len(images) * HOLDOUT_FRACTION)
    return HoldoutSplit(
        _tensor(images[:start]),
        _labels(None if labels is None else labels[:start]),
        _tensor(images[start:]),
        _labels(None if labels is None else labels[start:]),
        f"{what} images 0..{start - 1} train, {start}..{len(images) - 1} held out",
        reference_start,
    )


def holdout_split(dataset: str, data_root: Path) -> HoldoutSplit:
    """The fixed split the classifier trains on and the real-vs-real floor uses. MNIST / Fashion-MNIST: the
    official train split vs the test split when both are present; with one split file only, its first 80 %
    vs its last 20 % (MNIST's t10k: images 0..7999 vs 8000..9999). CIFAR-10: the data batches vs the test
    batch. MNIST's t10k alone is two populations: its first 5,000 digits come from NIST's training set and are
    cleaner than its last 5,000, from NIST's test set (LeCun's MNIST page); the held-out 8000..9999 are all of
    the second kind, so the floor's reference is t10k 5000..7999, not the whole training part."""
    if dataset in ("mnist", "fashion-mnist"):
        files = find_idx_files(Path(data_root), dataset)
        if not files:
            raise DatasetError(
                f"{dataset} not found under {Path(data_root) / dataset} (train/t10k-images-idx3-ubyte[.gz]); "
                f"set --data-root to the folder holding {dataset}/"
            )
        parts = [(read_idx_images(img), None if lab is None else read_idx_labels(lab)) for img, lab in files]
        if len(parts) == 1:
            (images, labels), (path, _) = parts[0], files[0]
            split_name = path.name.split("-")[0]
            mnist_t10k = dataset == "mnist" and split_name == "t10k" and len(images) == MNIST_T10K
            return _cut(images, labels, split_name, MNIST_T10K_HALF if mnist_t10k else 0)
        (tr, tr_lab), (te, te_lab) = parts
        return HoldoutSplit(
            _tensor(tr), _labels(tr_lab), _tensor(te), _labels(te_lab), "official train split vs test split"
        )
    if dataset == "cifar10":
        images, labels = load_cifar10(Path(data_root))
        if len(images) <= CIFAR_TRAIN:
            raise DatasetError(f"CIFAR-10 has {len(images)} images here, not the 60,000 of train + test")
        return HoldoutSplit(
            _tensor(images[:CIFAR_TRAIN]),
            _labels(labels[:CIFAR_TRAIN]),
            _tensor(images[CIFAR_TRAIN:]),
            _labels(labels[CIFAR_TRAIN:]),
            "data batches 1-5 vs test batch",
        )
    raise DatasetError(f"{dataset!r} has no fixed held-out split; known: mnist, fashion-mnist, cifar10")


# --- training the MNIST classifier ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierProgress:
    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float
    heldout_accuracy: float | None  # set at the end of each epoch


@dataclass(frozen=True)
class ClassifierResult:
    network: MnistCnn
    accuracy: float
    per_class_accuracy: tuple[float, ...]
    split: str
    n_train: int
    n_heldout: int
    seed: int
    epochs: int
    seconds: float


def _random_affine(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-image rotation ±10°, scale 0.9-1.1, shift ±2 px, sampled on the batch at once. Resampled on x + 1
    so that what slides in from outside is background (−1), not grey."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    scale = 0.9 + torch.rand(n, generator=gen) * 0.2
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 / (MNIST_SIZE / 2))  # 2 px in [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


@torch.no_grad()
def classifier_accuracy(network: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, list[float]]:
    """(overall accuracy, per-class accuracies) of `network` on uint8 images."""
    network.eval()
    predicted = torch.cat([network(to_mnist_input(b.float() / 127.5 - 1))[1].argmax(1) for b in images.split(1000)])
    right = predicted == labels
    per_class = [float(right[labels == c].float().mean()) for c in range(MNIST_CLASSES)]
    return float(right.float().mean()), per_class


def train_mnist_cnn(
    data_root: Path,
    *,
    epochs: int = 15,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 2e-3,
    progress_fn: Callable[[ClassifierProgress], None] | None = None,
) -> ClassifierResult:
    """Train the MNIST CNN on `holdout_split("mnist")`'s training part (random affine augmentation, Adam with a
    cosine-decaying learning rate) and measure it on the held-out part, which it never sees."""
    split = holdout_split("mnist", data_root)
    if split.train_labels is None or split.heldout_labels is None:
        raise DatasetError("the MNIST label files (*-labels-idx1-ubyte[.gz]) are needed beside the images")
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # weight init and dropout draw from the global RNG
        net = MnistCnn()
        x, y = split.train.float() / 127.5 - 1, split.train_labels
        steps_per_epoch = math.ceil(len(x) / batch_size)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        step = 0
        for epoch in range(1, epochs + 1):
            net.train()
            for idx in torch.randperm(len(x), generator=gen).split(batch_size):
                loss = F.cross_entropy(net(_random_affine(x[idx], gen))[1], y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                if progress_fn is not None:
                    total = epochs * steps_per_epoch
                    progress_fn(ClassifierProgress(epoch, epochs, step, total, loss.item(), None))
            accuracy, per_class = classifier_accuracy(net, split.heldout, split.heldout_labels)
            if progress_fn is not None:
                total = epochs * steps_per_epoch
                progress_fn(ClassifierProgress(epoch, epochs, step, total, loss.item(), accuracy))
    return ClassifierResult(
        net.eval(),
        accuracy,
        tuple(per_class),
        split.description,
        len(split.train),
        len(split.heldout),
        seed,
        epochs,
        time.perf_counter() - start,
    )


def save_mnist_cnn(path: Path, result: ClassifierResult) -> None:
    """The weights as safetensors (no pickle), with what they were trained on and how well they do."""
    metadata = {
        "format": MNIST_CNN_FORMAT,
        "name": MNIST_CNN_NAME,
        "accuracy": f"{result.accuracy:.4f}",
        "per_class_accuracy": ",".join(f"{a:.4f}" for a in result.per_class_accuracy),
        "split": result.split,
        "n_train": str(result.n_train),
        "n_heldout": str(result.n_heldout),
        "seed": str(result.seed),
        "epochs": str(result.epochs),
        "torch": torch.__version__,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in result.network.state_dict().items()}
    atomic_write_bytes(path, safetensors.torch.save(state, metadata=metadata))
    clear_mnist_cnn_cache()  # a cached copy of the old weights would outlive the file
