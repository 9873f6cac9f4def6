"""How many parameters a training config's networks (G and D together) have, counted without allocating them.

The networks are built on torch's `meta` device, where a tensor has a shape and no storage, so even a
16 × 16,384-wide MLP is counted in milliseconds and no memory: POST /train refuses a job over
GANSERVE_MAX_MODEL_PARAMETERS before it is queued (docs/operations.md, "Many users").
"""

import logging

import torch

from core.datasets import AmbiguousName, DatasetStore
from core.train_config import TrainConfig
from training.architectures import build_models
from training.data import CIFAR_NUM_CLASSES, DEFAULT_FOLDER_SIZE, IDX_NUM_CLASSES

log = logging.getLogger(__name__)

# The samples the built-in datasets give (before `image_size`), and their classes: what `build_models` needs.
BUILTIN_SHAPES: dict[str, tuple[int, ...]] = {
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "image-folder": (3, DEFAULT_FOLDER_SIZE, DEFAULT_FOLDER_SIZE),
    "gaussian-1d": (1,),
    "ring-2d": (2,),
    "grid-2d": (2,),
}
BUILTIN_CLASSES: dict[str, int] = {
    "mnist": IDX_NUM_CLASSES,
    "fashion-mnist": IDX_NUM_CLASSES,
    "cifar10": CIFAR_NUM_CLASSES,
}


def sample_shape(config: TrainConfig, shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The shape of one training sample: a built-in dataset's, or `shape` (an uploaded dataset's C×H×W), resized
    to `image_size` when the config says so."""
    base = BUILTIN_SHAPES[config.dataset] if shape is None else tuple(shape)
    if config.image_size is not None and len(base) == 3:
        return (base[0], config.image_size, config.image_size)
    return base


def count_parameters(config: TrainConfig, shape: tuple[int, ...] | None = None, num_classes: int | None = None) -> int:
    """Parameters of G and D together for `config` on samples of `shape` (default: its built-in dataset's) with
    `num_classes` classes (default: its built-in dataset's; used when `config.conditional`). Raises ValueError
    when the config cannot build networks for that data."""
    if num_classes is None:
        num_classes = BUILTIN_CLASSES.get(config.dataset)
    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        g, d = build_models(config, sample_shape(config, shape), num_classes)
    # An AdaGAN run keeps (and publishes) `rounds` generators like `g`, one per round.
    copies = config.rounds if config.architecture == "adagan" else 1
    return copies * sum(p.numel() for p in g.parameters()) + sum(p.numel() for p in d.parameters())


def job_parameters(config: TrainConfig, datasets: DatasetStore, owner: str | None, any_owner: bool) -> int | None:
    """`count_parameters` for a submitted job: an uploaded dataset's shape and classes from its row (as `owner`
    may use it; `any_owner`: an admin key). None when that dataset cannot be resolved, or the networks cannot be
    built for it: the submission's own dataset checks say why."""
    shape, classes = None, None
    if config.is_uploaded:
        try:
            record = datasets.resolve(config.dataset, owner, any_owner=any_owner)
        except (KeyError, AmbiguousName):
            return None
        shape, classes = tuple(record.shape), len(record.classes) if record.classes else None
    try:
        return count_parameters(config, shape, classes)
    except (ValueError, TypeError, RuntimeError) as e:  # data these networks cannot be built for
        log.info("job's parameters not counted: %s", e)
        return None
