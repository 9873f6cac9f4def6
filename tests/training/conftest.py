"""Fixtures for the training tests: a tiny fake MNIST in IDX format, a tiny job config."""

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from training.classifier import HoldoutSplit, holdout_split
from training.features import Extractor, load_extractor

REAL_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write_idx_images(path: Path, images: np.ndarray, magic: int = 0x00000803) -> Path:
    """Write N×H×W uint8 images as an IDX3 file, gzipped when the name ends in .gz."""
    n, rows, cols = images.shape
    raw = struct.pack(">IIII", magic, n, rows, cols) + images.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def fake_digits(n: int, seed: int = 0) -> np.ndarray:
    """Bright vertical bars at varying columns on black: cheap images with some structure."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    cols = rng.integers(4, 22, size=n)
    for i, c in enumerate(cols):
        images[i, 4:24, c : c + 3] = 255
    return images


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding `mnist/` with 48 train images (gz) and 16 t10k images (raw): 64 in all. Shared:
    no test writes to it."""
    root = tmp_path_factory.mktemp("data")
    images = fake_digits(64)
    write_idx_images(root / "mnist" / "train-images-idx3-ubyte.gz", images[:48])
    write_idx_images(root / "mnist" / "t10k-images-idx3-ubyte", images[48:])
    return root


@pytest.fixture
def idx_writer() -> Callable[..., Path]:
    return write_idx_images


@pytest.fixture
def fake_images() -> Callable[..., np.ndarray]:
    return fake_digits


@pytest.fixture
def real_data_root() -> Path:
    if not (REAL_DATA_ROOT / "mnist").is_dir():
        pytest.skip(f"real MNIST not present at {REAL_DATA_ROOT / 'mnist'}")
    return REAL_DATA_ROOT


@pytest.fixture(scope="session")
def mnist_split() -> HoldoutSplit:
    """Real MNIST cut as the MNIST classifier was trained on it (here t10k 0..7999 train, 8000..9999 held out)."""
    if not (REAL_DATA_ROOT / "mnist").is_dir():
        pytest.skip(f"real MNIST not present at {REAL_DATA_ROOT / 'mnist'}")
    return holdout_split("mnist", REAL_DATA_ROOT)


@pytest.fixture(scope="session")
def mnist_heldout(mnist_split: HoldoutSplit) -> torch.Tensor:
    """The 2,000 held-out real digits as float images in [-1, 1], the models' range."""
    return mnist_split.heldout.float() / 127.5 - 1


@pytest.fixture(scope="session")
def mnist_cnn() -> Extractor:
    return load_extractor("mnist-cnn", "mnist")
