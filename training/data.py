"""Datasets as one in-memory uint8 tensor N×C×H×W.

MNIST is 70,000 × 784 bytes (55 MB): holding it whole and batching by permutation indexing is faster than
any DataLoader on a couple of cores, and keeps the loop free of per-image Python.
"""

import gzip
from pathlib import Path

import numpy as np
import torch

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
MNIST_SPLITS = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
DATASETS = ("mnist",)


class DatasetError(Exception):
    """The dataset is missing, unreadable or not what it claims to be."""


def read_idx_images(path: Path) -> np.ndarray:
    """Parse an IDX3 ubyte image file (gzipped when its name ends in .gz) into an N×H×W uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path} is not readable: {e}") from None
    if len(raw) < 16:
        raise DatasetError(f"{path} is too short ({len(raw)} bytes) to be an IDX image file")
    magic, n, rows, cols = np.frombuffer(raw, dtype=">u4", count=4)
    if magic != IDX_IMAGES_MAGIC:
        raise DatasetError(f"{path} has magic number {magic:#010x}, expected {IDX_IMAGES_MAGIC:#010x} (IDX3 ubyte)")
    expected = int(n) * int(rows) * int(cols)
    if rows == 0 or cols == 0 or len(raw) - 16 != expected:
        raise DatasetError(f"{path} header says {n}×{rows}×{cols} = {expected} bytes, file has {len(raw) - 16}")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(int(n), int(rows), int(cols))


def _mnist_dirs(data_root: Path) -> list[Path]:
    root = data_root / "mnist"
    return [root, root / "MNIST" / "raw"]  # the second is where torchvision's download unpacks


def find_mnist_files(data_root: Path) -> list[Path]:
    """The image files present, train split first, each the first of raw/.gz found in either directory."""
    found = []
    for split in MNIST_SPLITS:
        candidates = [d / f"{split}{ext}" for d in _mnist_dirs(data_root) for ext in ("", ".gz")]
        match = next((p for p in candidates if p.is_file()), None)
        if match is not None:
            found.append(match)
    return found


def _download_mnist(data_root: Path) -> None:
    from torchvision.datasets import MNIST

    for train in (True, False):
        MNIST(root=str(data_root / "mnist"), train=train, download=True)


def load_mnist(data_root: Path) -> np.ndarray:
    files = find_mnist_files(data_root)
    if not files:
        try:
            _download_mnist(data_root)
        except Exception as e:  # no network, read-only volume, mirror down: all end the same way
            looked = ", ".join(str(d) for d in _mnist_dirs(data_root))
            raise DatasetError(
                f"MNIST not found (looked for {' / '.join(MNIST_SPLITS)}[.gz] in {looked}) and downloading it "
                f"failed: {e}. Put the IDX files in <data_root>/mnist/ and set GANSERVE_DATA_ROOT "
                f"(or --data-root) to that data root."
            ) from None
        files = find_mnist_files(data_root)
        if not files:
            raise DatasetError(f"MNIST download into {data_root / 'mnist'} left no image files")
    return np.concatenate([read_idx_images(p) for p in files])


def load_dataset(name: str, data_root: Path, max_samples: int | None = None) -> torch.Tensor:
    """The whole dataset (or its first `max_samples` images) as a uint8 tensor N×1×H×W."""
    if name != "mnist":
        raise DatasetError(f"unknown dataset {name!r}; known: {list(DATASETS)}")
    images = load_mnist(Path(data_root))
    if max_samples is not None:
        images = images[:max_samples]
    return torch.from_numpy(images.copy()).unsqueeze(1)
