"""Training data as one in-memory tensor: uint8 N×C×H×W images, or float32 N×D toy points.

MNIST is 70,000 × 784 bytes (55 MB): holding it whole and batching by permutation indexing is faster than
any DataLoader on a couple of cores, and keeps the loop free of per-image Python. The same holds for
CIFAR-10 (180 MB) and for the small image folders this service is meant for.

Sources, all under the data root:
- `mnist/`, `fashion-mnist/`: the IDX files (raw or .gz), or torchvision's download layout beneath them;
  labels from the matching `*-labels-idx1-ubyte[.gz]`.
- `cifar10/cifar-10-batches-bin/`: the official *binary* version (plain bytes, nothing to unpickle).
  When absent, torchvision downloads the python version; torchvision unpickles only files whose MD5
  matches the official release, so no pickle of unknown origin is ever loaded.
- `<image_folder>/`: every png/jpg/jpeg/bmp/webp below it, RGB, shorter side resized and centre-cropped.
- toy distributions (training/toy.py): generated from the config's seed, no files.
- an uploaded dataset (POST /datasets): its canonical safetensors file, which the worker fetches by SHA-256.
"""

import gzip
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from core.train_config import TrainConfig
from training import toy

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IDX_SPLITS = ("train", "t10k")  # train first, then the test split
MNIST_SPLITS = tuple(f"{s}-images-idx3-ubyte" for s in IDX_SPLITS)
DATASETS = ("mnist",)  # what the legacy `load_dataset` serves

# dataset name → (folder under the data root, torchvision's class and subfolder name)
IDX_DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
IDX_NUM_CLASSES = 10

CIFAR_BIN_DIR = "cifar-10-batches-bin"
CIFAR_BIN_FILES = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 bytes each of R, G, B
CIFAR_NUM_CLASSES = 10

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
DEFAULT_FOLDER_SIZE = 64
DEFAULT_TOY_SAMPLES = 100_000
RESIZE_CHUNK = 4096  # images resized per interpolate call: bounds the float copy (4096×3×64×64×4 B = 200 MB)


class DatasetError(Exception):
    """The dataset is missing, unreadable or not what it claims to be."""


@dataclass(frozen=True)
class Dataset:
    name: str
    samples: torch.Tensor  # uint8 N×C×H×W for images; float32 N×D for toy points
    labels: torch.Tensor | None  # int64 N for labelled datasets, else None
    num_classes: int | None

    @property
    def kind(self) -> Literal["image", "points"]:
        return "image" if self.samples.dim() == 4 else "points"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.samples.shape[1:])

    def __len__(self) -> int:
        return int(self.samples.shape[0])


def to_model_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 images → float32 in [-1, 1] (G's tanh range); float data (toy points) is returned as is."""
    if batch.dtype == torch.uint8:
        return batch.float().div_(127.5).sub_(1.0)
    return batch


# --- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path} is not readable: {e}") from None


def read_idx_images(path: Path) -> np.ndarray:
    """Parse an IDX3 ubyte image file (gzipped when its name ends in .gz) into an N×H×W uint8 array."""
    raw = _read_bytes(path)
    if len(raw) < 16:
        raise DatasetError(f"{path} is too short ({len(raw)} bytes) to be an IDX image file")
    magic, n, rows, cols = np.frombuffer(raw, dtype=">u4", count=4)
    if magic != IDX_IMAGES_MAGIC:
        raise DatasetError(f"{path} has magic number {magic:#010x}, expected {IDX_IMAGES_MAGIC:#010x} (IDX3 ubyte)")
    expected = int(n) * int(rows) * int(cols)
    if rows == 0 or cols == 0 or len(raw) - 16 != expected:
        raise DatasetError(f"{path} header says {n}×{rows}×{cols} = {expected} bytes, file has {len(raw) - 16}")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(int(n), int(rows), int(cols))


def read_idx_labels(path: Path) -> np.ndarray:
    """Parse an IDX1 ubyte label file into an N int64 array."""
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise DatasetError(f"{path} is too short ({len(raw)} bytes) to be an IDX label file")
    magic, n = np.frombuffer(raw, dtype=">u4", count=2)
    if magic != IDX_LABELS_MAGIC:
        raise DatasetError(f"{path} has magic number {magic:#010x}, expected {IDX_LABELS_MAGIC:#010x} (IDX1 ubyte)")
    if len(raw) - 8 != int(n):
        raise DatasetError(f"{path} header says {n} labels, file has {len(raw) - 8} bytes of them")
    return np.frombuffer(raw, dtype=np.uint8, offset=8).astype(np.int64)


def _idx_dirs(data_root: Path, name: str) -> list[Path]:
    root = data_root / name
    return [root, root / IDX_DATASETS[name] / "raw"]  # the second is where torchvision's download unpacks


def _find_idx_file(data_root: Path, name: str, stem: str) -> Path | None:
    candidates = [d / f"{stem}{ext}" for d in _idx_dirs(data_root, name) for ext in ("", ".gz")]
    return next((p for p in candidates if p.is_file()), None)


def find_idx_files(data_root: Path, name: str) -> list[tuple[Path, Path | None]]:
    """(images, labels or None) per split present, train first; each the first of raw/.gz found."""
    found = []
    for split in IDX_SPLITS:
        images = _find_idx_file(data_root, name, f"{split}-images-idx3-ubyte")
        if images is not None:
            found.append((images, _find_idx_file(data_root, name, f"{split}-labels-idx1-ubyte")))
    return found


def find_mnist_files(data_root: Path) -> list[Path]:
    """The MNIST image files present, train split first."""
    return [images for images, _ in find_idx_files(data_root, "mnist")]


def _download_idx(data_root: Path, name: str) -> None:
    from torchvision import datasets

    cls = getattr(datasets, IDX_DATASETS[name])
    for train in (True, False):
        cls(root=str(data_root / name), train=train, download=True)


def _download_mnist(data_root: Path) -> None:
    _download_idx(data_root, "mnist")


def _download(data_root: Path, name: str) -> None:
    # MNIST keeps its own hook so that tests (and callers) can replace just that download.
    if name == "mnist":
        _download_mnist(data_root)
    else:
        _download_idx(data_root, name)


def _ensure_idx_files(data_root: Path, name: str) -> list[tuple[Path, Path | None]]:
    files = find_idx_files(data_root, name)
    if files:
        return files
    try:
        _download(data_root, name)
    except Exception as e:  # no network, read-only volume, mirror down: all end the same way
        looked = ", ".join(str(d) for d in _idx_dirs(data_root, name))
        splits = " / ".join(f"{s}-images-idx3-ubyte" for s in IDX_SPLITS)
        raise DatasetError(
            f"{name} not found (looked for {splits}[.gz] in {looked}) and downloading it failed: {e}. "
            f"Put the IDX files in <data_root>/{name}/ and set GANSERVE_DATA_ROOT (or --data-root) to "
            f"that data root."
        ) from None
    files = find_idx_files(data_root, name)
    if not files:
        raise DatasetError(f"{name} download into {data_root / name} left no image files")
    return files


def _read_idx_split(images_path: Path, labels_path: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    images = read_idx_images(images_path)
    if labels_path is None:
        return images, None
    labels = read_idx_labels(labels_path)
    if len(labels) != len(images):
        raise DatasetError(
            f"{labels_path} holds {len(labels)} labels but {images_path} holds {len(images)} images; "
            f"replace the pair with matching files from the same release"
        )
    return images, labels


def load_idx_dataset(data_root: Path, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """All splits' images (N×H×W) and labels (N, or None when any split lacks its label file)."""
    splits = [_read_idx_split(img, lab) for img, lab in _ensure_idx_files(data_root, name)]
    images = np.concatenate([im for im, _ in splits])
    if any(lab is None for _, lab in splits):
        return images, None  # labels for only some images would misalign: train unconditionally
    return images, np.concatenate([lab for _, lab in splits if lab is not None])


def load_mnist(data_root: Path) -> np.ndarray:
    return load_idx_dataset(data_root, "mnist")[0]


def load_dataset(name: str, data_root: Path, max_samples: int | None = None) -> torch.Tensor:
    """Legacy: the whole MNIST (or its first `max_samples` images) as a uint8 tensor N×1×H×W."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {list(DATASETS)}")
    images = load_mnist(Path(data_root))
    if max_samples is not None:
        images = images[:max_samples]
    return torch.from_numpy(images.copy()).unsqueeze(1)


# --- CIFAR-10 -------------------------------------------------------------------------------------


def read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary-version batch: (N×3×32×32 uint8 images, N int64 labels)."""
    raw = _read_bytes(path)
    if len(raw) == 0 or len(raw) % CIFAR_RECORD:
        raise DatasetError(
            f"{path} is {len(raw)} bytes, not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records; "
            f"re-extract cifar-10-binary.tar.gz"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= CIFAR_NUM_CLASSES:
        raise DatasetError(f"{path} has label {labels.max()}; CIFAR-10 labels are 0..9")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _download_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray]:
    # torchvision verifies the archive's and every batch's MD5 against the official release before it
    # unpickles them, so this never loads a pickle of unknown origin.
    from torchvision.datasets import CIFAR10

    parts = [CIFAR10(root=str(root), train=train, download=True) for train in (True, False)]
    images = np.concatenate([np.asarray(p.data) for p in parts]).transpose(0, 3, 1, 2)  # NHWC → NCHW
    labels = np.concatenate([np.asarray(p.targets, dtype=np.int64) for p in parts])
    return np.ascontiguousarray(images), labels


def load_cifar10(data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    root = data_root / "cifar10"
    present = [root / CIFAR_BIN_DIR / f for f in CIFAR_BIN_FILES if (root / CIFAR_BIN_DIR / f).is_file()]
    if present:
        batches = [read_cifar_bin(p) for p in present]
        return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    try:
        return _download_cifar10(root)
    except Exception as e:
        raise DatasetError(
            f"CIFAR-10 not found (looked for {', '.join(CIFAR_BIN_FILES)} in {root / CIFAR_BIN_DIR}) and "
            f"downloading it failed: {e}. Extract the binary version (cifar-10-binary.tar.gz) into "
            f"<data_root>/cifar10/ and set GANSERVE_DATA_ROOT (or --data-root) to that data root."
        ) from None


# --- image folders --------------------------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def _refuse_escaping_link(path: Path, root: Path) -> None:
    if path.is_symlink() and not _inside(path, root):
        raise DatasetError(
            f"{path} is a symlink to {path.resolve()}, outside {root}; copy the file into the folder instead"
        )


def list_image_files(folder: Path) -> list[Path]:
    """Every image file below `folder`, sorted. Symlinked directories are not descended (no loops);
    a symlink anywhere that points outside the folder is refused rather than skipped, so that a
    folder never silently trains on fewer images than it shows."""
    root = folder.resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in [*dirnames, *filenames]:
            _refuse_escaping_link(Path(dirpath) / name, root)
        found += [Path(dirpath) / f for f in filenames if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def _load_image(path: Path, size: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as TF

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"{path} is not a readable image: {e}; remove or replace it") from None
    t = TF.pil_to_tensor(rgb)
    t = TF.resize(t, [size], antialias=True)  # one int: the shorter side becomes `size`
    return TF.center_crop(t, [size, size])


def load_image_folder(data_root: Path, folder_name: str, size: int, max_samples: int | None) -> torch.Tensor:
    folder = data_root / folder_name
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist; create it under the data root {data_root}")
    if not _inside(folder, data_root.resolve()):
        raise DatasetError(f"{folder} resolves to {folder.resolve()}, outside the data root {data_root}")
    paths = list_image_files(folder)
    if not paths:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DatasetError(f"no images ({exts}) found under {folder}; put the training images there")
    paths = paths[:max_samples] if max_samples is not None else paths
    return torch.stack([_load_image(p, size) for p in paths])


# --- resizing and assembly ------------------------------------------------------------------------


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 N×C×H×W (square) → N×C×size×size, vectorised over chunks of the batch."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    if images.shape[-1] != images.shape[-2]:
        raise DatasetError(f"resize expects square images, got {tuple(images.shape[-2:])}")
    # antialias only matters (and is only allowed) when shrinking with bilinear filtering
    out = [
        F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for chunk in images.split(RESIZE_CHUNK)
    ]
    return torch.cat(out)


def _labelled(name: str, images: np.ndarray, labels: np.ndarray | None, classes: int, config: TrainConfig) -> Dataset:
    if images.ndim == 3:
        images = images[:, None]  # IDX images are N×H×W: add the channel axis
    if config.max_samples is not None:
        images = images[: config.max_samples]
        labels = labels[: config.max_samples] if labels is not None else None
    x = torch.from_numpy(np.ascontiguousarray(images))
    if config.image_size is not None:
        x = resize_images(x, config.image_size)
    y = torch.from_numpy(labels.copy()) if labels is not None else None
    return Dataset(name, x, y, classes if y is not None else None)


def _load_idx(config: TrainConfig, data_root: Path) -> Dataset:
    images, labels = load_idx_dataset(data_root, config.dataset)
    return _labelled(config.dataset, images, labels, IDX_NUM_CLASSES, config)


def _load_cifar(config: TrainConfig, data_root: Path) -> Dataset:
    images, labels = load_cifar10(data_root)
    return _labelled(config.dataset, images, labels, CIFAR_NUM_CLASSES, config)


def _load_folder(config: TrainConfig, data_root: Path) -> Dataset:
    assert config.image_folder is not None  # TrainConfig guarantees it for image-folder
    size = config.image_size or DEFAULT_FOLDER_SIZE
    images = load_image_folder(data_root, config.image_folder, size, config.max_samples)
    return Dataset(config.dataset, images, None, None)


def _load_toy(config: TrainConfig, _: Path) -> Dataset:
    n = config.max_samples or DEFAULT_TOY_SAMPLES
    return Dataset(config.dataset, toy.sample(config.dataset, n, config.seed), None, None)


LOADERS: dict[str, Callable[[TrainConfig, Path], Dataset]] = {
    "mnist": _load_idx,
    "fashion-mnist": _load_idx,
    "cifar10": _load_cifar,
    "image-folder": _load_folder,
    **{name: _load_toy for name in toy.TOY},
}


def load_uploaded(path: Path, config: TrainConfig) -> Dataset:
    """An uploaded dataset's canonical file (training/dataset_archive.py): safetensors (never a pickle) with uint8
    `images` N×C×H×W, int64 `labels` when labelled, and the class names in its metadata."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            images = f.get_tensor("images")
            labels = f.get_tensor("labels") if "labels" in names else None
            classes = json.loads((f.metadata() or {}).get("classes", "null"))
    except (OSError, SafetensorError, ValueError, KeyError) as e:
        raise DatasetError(f"{path} is not a readable dataset file: {e}") from None
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise DatasetError(f"{path}: `images` is {images.dtype} {tuple(images.shape)}, not uint8 N×C×H×W (C 1 or 3)")
    if labels is not None and (labels.dtype != torch.int64 or labels.shape != (images.shape[0],) or not classes):
        raise DatasetError(f"{path}: `labels` is {labels.dtype} {tuple(labels.shape)}, not one int64 per image")
    if config.image_size is not None and images.shape[-1] != images.shape[-2]:
        raise DatasetError(
            f"dataset {config.dataset!r} has {images.shape[-1]}×{images.shape[-2]} images; `image_size` resizes "
            "square ones: upload it again with `image_size`"
        )
    y = None if labels is None else labels.numpy()
    return _labelled(config.dataset, images.numpy(), y, len(classes) if y is not None else 0, config)


def load_training_data(config: TrainConfig, data_root: Path, dataset_file: Path | None = None) -> Dataset:
    """The config's dataset, whole, limited to `max_samples` and resized to `image_size` when set. An uploaded
    dataset is read from `dataset_file`, its canonical file (fetched by the worker)."""
    if config.is_uploaded:
        if dataset_file is None:
            raise DatasetError(
                f"dataset {config.dataset!r} is not a built-in one ({', '.join(sorted(LOADERS))}); an uploaded "
                "dataset is trained on by the server's workers, which fetch its file: submit the job with POST /train"
            )
        return load_uploaded(dataset_file, config)
    loader = LOADERS.get(config.dataset)
    if loader is None:
        raise DatasetError(f"unknown dataset {config.dataset!r}; known: {sorted(LOADERS)}")
    return loader(config, Path(data_root))


# --- on the training device ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceDataset:
    """The training set as the loop reads it: moved to the training device once, batched by indexing."""

    samples: torch.Tensor  # uint8 images N×C×H×W or float32 points N×D, on the training device
    labels: torch.Tensor | None
    num_classes: int | None
    kind: Literal["image", "points"]
    to_model_range: Callable[[torch.Tensor], torch.Tensor]

    @property
    def n(self) -> int:
        return self.samples.shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.samples.shape[1:])


def load_to_device(
    config: TrainConfig, data_root: Path, device: torch.device, dataset_file: Path | None = None
) -> DeviceDataset:
    ds = load_training_data(config, data_root, dataset_file)
    labels = ds.labels.to(device) if ds.labels is not None else None
    return DeviceDataset(ds.samples.to(device), labels, ds.num_classes, ds.kind, to_model_range)
