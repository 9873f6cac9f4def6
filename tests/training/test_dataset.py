from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from training import data
from training.data import DatasetError, load_dataset, read_idx_images

Writer = Callable[..., Path]
Faker = Callable[..., np.ndarray]


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path: Path, name: str, idx_writer: Writer, fake_images: Faker) -> None:
    images = fake_images(5)
    assert np.array_equal(read_idx_images(idx_writer(tmp_path / name, images)), images)


def test_wrong_magic_number_is_refused(tmp_path: Path, idx_writer: Writer, fake_images: Faker) -> None:
    path = idx_writer(tmp_path / "labels", fake_images(2), magic=0x00000801)
    with pytest.raises(DatasetError, match="magic number 0x00000801"):
        read_idx_images(path)


def test_truncated_file_is_refused(tmp_path: Path, idx_writer: Writer, fake_images: Faker) -> None:
    path = idx_writer(tmp_path / "imgs", fake_images(3))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="header says 3×28×28"):
        read_idx_images(path)


def test_load_dataset_concatenates_train_then_t10k(tiny_data_root: Path, fake_images: Faker) -> None:
    x = load_dataset("mnist", tiny_data_root, None)
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0], torch.from_numpy(fake_images(64)))


def test_max_samples_takes_the_first(tiny_data_root: Path, fake_images: Faker) -> None:
    x = load_dataset("mnist", tiny_data_root, 10)
    assert torch.equal(x[:, 0], torch.from_numpy(fake_images(64)[:10]))


def test_torchvision_raw_folder_is_found(tmp_path: Path, idx_writer: Writer, fake_images: Faker) -> None:
    idx_writer(tmp_path / "mnist" / "MNIST" / "raw" / "t10k-images-idx3-ubyte", fake_images(4))
    assert load_dataset("mnist", tmp_path, None).shape == (4, 1, 28, 28)


def test_missing_data_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(_: Path) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(data, "_download_mnist", offline)
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", tmp_path, None)
    message = str(info.value)
    assert str(tmp_path / "mnist") in message and "GANSERVE_DATA_ROOT" in message and "unreachable" in message


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("cifar10", tmp_path, None)


def test_real_mnist_t10k(real_data_root: Path) -> None:
    x = load_dataset("mnist", real_data_root, None)
    assert x.shape[1:] == (1, 28, 28) and x.shape[0] % 10_000 == 0
    if x.shape[0] == 10_000:  # only the t10k split is present
        assert x.shape == (10_000, 1, 28, 28)
    assert x.max() == 255 and x.min() == 0
