"""Feature extractors for the image metrics, each with a name that travels with every number it produces:
an FID in one feature space says nothing about an FID in another.

- `mnist-cnn` (reported as `mnist-cnn-v1`): a small CNN trained here on MNIST digits, committed at
  `training/assets/mnist-cnn-v1.safetensors` (card beside it). Its 128-wide penultimate layer is the feature
  space of FID/KID/precision/recall; its 10 logits give IS (at most 10) and class coverage.
- `inception` (reported as `inception-v3-compat`): torch-fidelity's port of the TensorFlow Inception-v3 that
  the FID literature uses (2048-D pool features, 1008 logits), loaded from a local weights file only.

`load_extractor` never falls back from one to the other: what cannot be loaded raises
`ExtractorUnavailable`, saying how to fix it. This module only loads and runs the extractors; training the MNIST
CNN (`ganserve classifier`) is training/classifier.py's job, on the network defined here.
"""

import copy
import functools
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from core.train_config import TOY_DATASETS

EXTRACTOR_NAMES = ("auto", "mnist-cnn", "inception")
EMBED_BATCH = 500  # images per forward: bounds activations (Inception at 299² is ~0.5 GB per 100 images)

MNIST_CNN_NAME = "mnist-cnn-v1"
MNIST_CNN_FORMAT = "ganserve-mnist-cnn/1"
MNIST_CNN_WEIGHTS = Path(__file__).resolve().parent / "assets" / f"{MNIST_CNN_NAME}.safetensors"
MNIST_CNN_FEATURES = 128
MNIST_CLASSES = 10
MNIST_SIZE = 28

INCEPTION_NAME = "inception-v3-compat"  # torch-fidelity's and torchmetrics' name for the same network
INCEPTION_WEIGHTS_ENV = "GANSERVE_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
INCEPTION_FEATURES = 2048
INCEPTION_CLASSES = 1008  # the TF graph's 1001 ImageNet classes padded to 1008


class ExtractorUnavailable(Exception):
    """The extractor asked for cannot be loaded here; the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class Embedding:
    features: torch.Tensor  # N×D float32
    logits: torch.Tensor | None  # N×classes float32, None without a classifier head


@dataclass(frozen=True)
class Extractor:
    """Images in the models' range [-1, 1] (float N×C×H×W) → features and logits, on the CPU.

    `prepare` turns a batch into the network's input (grey/RGB, size, dtype); `network` maps that to
    (features, logits or None). Both run batched, without gradients, on `device`."""

    name: str
    num_features: int
    classes: int | None
    network: nn.Module
    prepare: Callable[[torch.Tensor], torch.Tensor]
    # True when the classes are the dataset's own (digits for the MNIST CNN): then the argmax histogram of
    # generated images is a histogram over the data's modes. ImageNet's classes are not CIFAR's modes.
    classes_are_modes: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = EMBED_BATCH

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> Embedding:
        if images.dim() != 4 or len(images) == 0:
            raise ValueError(f"{self.name} takes images N×C×H×W with N ≥ 1, got {tuple(images.shape)}")
        feats, logits = [], []
        for batch in images.split(self.batch_size):
            f, lg = self.network(self.prepare(batch.to(self.device)))
            feats.append(f.float().cpu())
            if lg is not None:
                logits.append(lg.float().cpu())
        return Embedding(torch.cat(feats), torch.cat(logits) if logits else None)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images).features

    def logits(self, images: torch.Tensor) -> torch.Tensor | None:
        return self.embed(images).logits


def load_extractor(name: str, dataset: str, *, device: str | torch.device = "cpu") -> Extractor:
    """The extractor `name` for images of `dataset`; `auto` is `mnist-cnn` for MNIST and `inception` for every
    other image dataset. Raises ExtractorUnavailable when it cannot be loaded, ValueError for unknown names."""
    if name not in EXTRACTOR_NAMES:
        raise ValueError(f"unknown extractor {name!r}; known: {', '.join(EXTRACTOR_NAMES)}")
    if dataset in TOY_DATASETS:  # every other dataset, built-in or uploaded, is images
        raise ValueError(f"{dataset!r} is not an image dataset: toy data has the mode metrics")
    if name == "auto":
        name = "mnist-cnn" if dataset == "mnist" else "inception"
    device = torch.device(device)
    if name == "mnist-cnn":
        return mnist_cnn_extractor(device=device)
    return inception_extractor(device=device)


# --- the MNIST classifier's network and weights ---------------------------------------------------------------


class MnistCnn(nn.Module):
    """Three 3×3 conv blocks (32, 64, 64 channels; ReLU; 2×2 max-pool: 28 → 14 → 7 → 3), a 128-wide ReLU layer
    (the feature space) and 10 logits. 131k parameters (524 kB of fp32); input 1×28×28 in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]

        self.body = nn.Sequential(
            *block(1, 32),
            *block(32, 64),
            *block(64, 64),
            nn.Flatten(),
            nn.Linear(64 * 3 * 3, MNIST_CNN_FEATURES),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)  # only while training: the feature space itself is never dropped
        self.head = nn.Linear(MNIST_CNN_FEATURES, MNIST_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, self.head(self.dropout(features))


def to_mnist_input(images: torch.Tensor) -> torch.Tensor:
    """Any image batch in [-1, 1] → 1×28×28 in [-1, 1]: RGB averaged to grey, other sizes resized (antialiased).
    Clamped, because a linear-head generator overshoots and the displayed image is clamped too."""
    x = images.float().clamp(-1, 1)
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (MNIST_SIZE, MNIST_SIZE):
        x = F.interpolate(x, size=(MNIST_SIZE, MNIST_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x


@functools.lru_cache(maxsize=2)
def _load_mnist_cnn(path: Path) -> tuple[MnistCnn, dict[str, str]]:
    # Cached: the loop evaluates every few epochs and the evaluate CLI once; the network is read-only.
    if not path.is_file():
        raise ExtractorUnavailable(
            f"the MNIST classifier's weights are missing ({path}); they ship with the package. Reinstall it, "
            f"or train them again with `ganserve classifier --data-root <data root> --out {path}`"
        )
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        state = safetensors.torch.load_file(str(path))
    except Exception as e:  # safetensors raises its own error type on a malformed header
        raise ExtractorUnavailable(f"{path} is not a readable safetensors file ({e}); restore it from git") from None
    if metadata.get("format") != MNIST_CNN_FORMAT:
        raise ExtractorUnavailable(f"{path} has format {metadata.get('format')!r}, expected {MNIST_CNN_FORMAT!r}")
    net = MnistCnn()
    net.load_state_dict(state)
    return net.eval().requires_grad_(False), metadata


def mnist_cnn_extractor(path: Path = MNIST_CNN_WEIGHTS, device: torch.device = torch.device("cpu")) -> Extractor:
    net, _ = _load_mnist_cnn(path)
    if device.type != "cpu":
        net = copy.deepcopy(net)  # the cached network stays on the CPU for every other caller
    return Extractor(
        MNIST_CNN_NAME, MNIST_CNN_FEATURES, MNIST_CLASSES, net.to(device), to_mnist_input, True, device=device
    )


def mnist_cnn_metadata(path: Path = MNIST_CNN_WEIGHTS) -> dict[str, str]:
    return _load_mnist_cnn(path)[1]


def clear_mnist_cnn_cache() -> None:
    """Forget the loaded weights, so that the next extractor reads the file again: for whoever rewrites it."""
    _load_mnist_cnn.cache_clear()


# --- Inception-v3 (torch-fidelity) ----------------------------------------------------------------------------


def inception_weights_path() -> Path | None:
    """The weights file named by GANSERVE_INCEPTION_WEIGHTS, else torch-fidelity's download in torch hub's
    cache (where it puts it: `$TORCH_HOME/hub/checkpoints/`) when present; never a download."""
    named = os.environ.get(INCEPTION_WEIGHTS_ENV)
    if named:
        return Path(named).expanduser()
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    return cached if cached.is_file() else None


def _inception_advice() -> str:
    return (
        f"install torch-fidelity with `pip install 'ganserve[inception]'`, download {INCEPTION_WEIGHTS_URL} "
        f"(the file {INCEPTION_WEIGHTS_FILE}) and set {INCEPTION_WEIGHTS_ENV} to its path "
        f"(or leave it in torch hub's cache, {Path(torch.hub.get_dir()) / 'checkpoints'})"
    )


class _InceptionFeatures(nn.Module):
    """torch-fidelity's extractor asked for the pool features and the unbiased logits (torch-fidelity's IS
    input) in one pass."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, logits = self.network(x)
        return features, logits


def to_inception_input(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → uint8 RGB, the input torch-fidelity expects; it resizes to 299² itself (TF1's bilinear), so
    our numbers follow the reference FID protocol."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def inception_extractor(device: torch.device = torch.device("cpu")) -> Extractor:
    missing = []
    if importlib.util.find_spec("torch_fidelity") is None:
        missing.append("torch-fidelity is not installed")
    weights = inception_weights_path()
    if weights is None:
        missing.append(f"no Inception weights on disk ({INCEPTION_WEIGHTS_ENV} is not set and torch hub has none)")
    elif not weights.is_file():
        missing.append(f"{INCEPTION_WEIGHTS_ENV}={weights} is not a file")
    if missing:
        problems = "; ".join(missing)
        raise ExtractorUnavailable(f"{INCEPTION_NAME} cannot load: {problems}. To use it, {_inception_advice()}")
    assert weights is not None
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net = FeatureExtractorInceptionV3(
        INCEPTION_NAME, [str(INCEPTION_FEATURES), "logits_unbiased"], feature_extractor_weights_path=str(weights)
    )
    network = _InceptionFeatures(net).eval().requires_grad_(False).to(device)
    return Extractor(
        INCEPTION_NAME, INCEPTION_FEATURES, INCEPTION_CLASSES, network, to_inception_input, False, device=device
    )
