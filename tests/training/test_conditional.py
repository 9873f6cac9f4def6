"""End to end through `train()`: a class-conditional model on a tiny labelled fake MNIST, served with labels
as /generate serves them, and a 28×28 DCGAN. Two steps each: plumbing, no quality claim."""

import gzip
import io
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.train_config import TrainConfig
from service.serving.catalogues import FolderCatalogue
from service.serving.registry import ModelRegistry
from training import checkpoint
from training.loop import train

N_IMAGES = 40


def write_idx_labels(path: Path, labels: np.ndarray) -> Path:
    raw = struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


@pytest.fixture
def labelled_root(tmp_path: Path, idx_writer: Callable[..., Path], fake_images: Callable[..., np.ndarray]) -> Path:
    root = tmp_path / "data"
    idx_writer(root / "mnist" / "t10k-images-idx3-ubyte.gz", fake_images(N_IMAGES))
    write_idx_labels(root / "mnist" / "t10k-labels-idx1-ubyte.gz", np.arange(N_IMAGES) % 10)
    return root


@pytest.mark.parametrize("architecture", ["mlp", "dcgan"])
def test_conditional_model_trains_and_serves_labels(labelled_root: Path, tmp_path: Path, architecture: str) -> None:
    config = TrainConfig(
        model_name="cond", architecture=architecture, conditional=True, steps=2, batch_size=16, latent_dim=8
    )
    result = train(config, tmp_path / "run", data_root=labelled_root)
    assert result.status == "completed" and result.steps_done == 2
    assert result.final_checkpoint is not None and result.samples is not None
    meta = checkpoint.load_metadata(result.final_checkpoint)
    assert meta["conditional"] is True and meta["num_classes"] == 10

    # The loop's grid is one class per column: 10 wide, ceil(64 / 10) = 7 tall, 28 px + 2 px borders.
    grid = Image.open(io.BytesIO(result.samples.read_bytes()))
    assert grid.size == (10 * 30 + 2, 7 * 30 + 2)

    models = tmp_path / "models"
    checkpoint.write_model(result.final_checkpoint, checkpoint.model_stem(models, "cond", 1))
    model = ModelRegistry([FolderCatalogue(models)]).get("cond")
    assert model.conditional and model.num_classes == 10
    assert model.labels_for(list(range(12))) == [s % 10 for s in range(12)]
    assert model.labels_for([5, 6], label=3) == [3, 3]
    out = model.render_seeds([0, 1, 2], label=7)
    assert out.shape == (3, 1, 28, 28) and out.dtype == torch.uint8
    # The label reaches G: the same latent drawn as different classes gives different images.
    assert not torch.equal(model.render_seeds([0], label=0), model.render_seeds([0], label=1))
    with pytest.raises(ValueError, match="not one of the model's classes"):
        model.labels_for([0], label=10)


def test_dcgan_28px_trains_through_the_loop(tiny_data_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(model_name="dc", architecture="dcgan", steps=2, batch_size=16, latent_dim=8)
    result = train(config, tmp_path, data_root=tiny_data_root)
    assert result.status == "completed" and result.steps_done == 2 and result.final_checkpoint is not None
    g, meta = checkpoint.load_generator(result.final_checkpoint)
    assert meta["architecture"] == "dcgan" and meta["generator"]["arch"] == "dcgan"
    assert meta["image_shape"] == [1, 28, 28] and meta["conditional"] is False
    with torch.no_grad():
        x = g(torch.zeros(2, 8))
    assert x.shape == (2, 1, 28, 28) and torch.isfinite(x).all() and x.abs().max() <= 1
