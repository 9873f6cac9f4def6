"""The fixed held-out split and the training of the MNIST classifier (training/classifier.py). The committed
weights' accuracy is checked with the extractor that loads them, in test_features.py."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from training import features
from training.classifier import HoldoutSplit, holdout_split, save_mnist_cnn, train_mnist_cnn
from training.data import DatasetError
from training.features import mnist_cnn_extractor

Writer = Callable[..., Path]
Faker = Callable[..., np.ndarray]


# --- the held-out split ---------------------------------------------------------------------------------------


def test_holdout_split_uses_the_official_split_when_both_are_there(tiny_data_root: Path) -> None:
    split = holdout_split("mnist", tiny_data_root)
    assert (len(split.train), len(split.heldout), len(split.reference)) == (48, 16, 48)
    assert split.description == "official train split vs test split"


def test_holdout_split_without_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="--data-root"):
        holdout_split("mnist", tmp_path)


def test_holdout_split_of_t10k_alone_is_disjoint(mnist_split: HoldoutSplit) -> None:
    assert (len(mnist_split.train), len(mnist_split.heldout)) == (8000, 2000)
    # The floor's reference: the training digits from t10k's second half, the held-out digits' population.
    assert mnist_split.reference_description == "training images 5000..7999"
    assert torch.equal(mnist_split.reference, mnist_split.train[5000:])
    train = {bytes(x) for x in mnist_split.train.flatten(1).numpy()}
    assert not any(bytes(x) in train for x in mnist_split.heldout.flatten(1).numpy())


# --- training -------------------------------------------------------------------------------------------------


def test_train_save_and_load_a_classifier(tmp_path: Path, idx_writer: Writer, fake_images: Faker) -> None:
    images = fake_images(60)
    labels = np.arange(60, dtype=np.uint8) % 10
    idx_writer(tmp_path / "mnist" / "t10k-images-idx3-ubyte", images)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(
        np.array([0x801, 60], dtype=">u4").tobytes() + labels.tobytes()
    )
    result = train_mnist_cnn(tmp_path, epochs=1, batch_size=16)
    assert (result.n_train, result.n_heldout, result.epochs) == (48, 12, 1)
    assert 0.0 <= result.accuracy <= 1.0 and len(result.per_class_accuracy) == 10
    path = tmp_path / "cnn.safetensors"
    save_mnist_cnn(path, result)
    loaded = mnist_cnn_extractor(path)
    x = torch.from_numpy(images[:4]).float().unsqueeze(1) / 127.5 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.features(x), result.network(x)[0])
    assert features.mnist_cnn_metadata(path)["split"] == "t10k images 0..47 train, 48..59 held out"
