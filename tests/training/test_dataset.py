import gzip
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from core.train_config import TrainConfig
from training import data, toy
from training.data import (
    DatasetError,
    load_dataset,
    load_training_data,
    read_idx_images,
    read_idx_labels,
    resize_images,
    to_model_range,
)

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
        load_dataset("svhn", tmp_path, None)


def test_real_mnist_t10k(real_data_root: Path) -> None:
    x = load_dataset("mnist", real_data_root, None)
    assert x.shape[1:] == (1, 28, 28) and x.shape[0] % 10_000 == 0
    if x.shape[0] == 10_000:  # only the t10k split is present
        assert x.shape == (10_000, 1, 28, 28)
    assert x.max() == 255 and x.min() == 0


# --- load_training_data -----------------------------------------------------------------------------


def write_idx_labels(path: Path, labels: np.ndarray, magic: int = 0x00000801) -> Path:
    raw = struct.pack(">II", magic, len(labels)) + labels.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def config(dataset: str = "mnist", **kw: Any) -> TrainConfig:
    return TrainConfig(model_name="t", dataset=dataset, **kw)


@pytest.fixture
def labelled_root(tmp_path: Path, idx_writer: Writer, fake_images: Faker) -> Path:
    """mnist/ with train (gz) + t10k (raw) images and their labels 0..9 repeating, 30 images in all."""
    images = fake_images(30)
    labels = np.arange(30) % 10
    idx_writer(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", images[:20])
    write_idx_labels(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", labels[:20])
    idx_writer(tmp_path / "mnist" / "t10k-images-idx3-ubyte", images[20:])
    write_idx_labels(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", labels[20:])
    return tmp_path


def test_idx_labels_are_read_and_matched(labelled_root: Path, fake_images: Faker) -> None:
    ds = load_training_data(config(), labelled_root)
    assert ds.kind == "image" and ds.sample_shape == (1, 28, 28) and ds.num_classes == 10
    assert torch.equal(ds.samples[:, 0], torch.from_numpy(fake_images(30)))
    assert ds.labels is not None and ds.labels.dtype == torch.int64
    assert ds.labels.tolist() == [i % 10 for i in range(30)]


def test_missing_label_file_means_no_labels(labelled_root: Path) -> None:
    (labelled_root / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    ds = load_training_data(config(), labelled_root)
    assert len(ds) == 30 and ds.labels is None and ds.num_classes is None


def test_label_count_mismatch_is_refused(labelled_root: Path) -> None:
    write_idx_labels(labelled_root / "mnist" / "t10k-labels-idx1-ubyte", np.zeros(3))
    with pytest.raises(DatasetError, match="holds 3 labels but"):
        load_training_data(config(), labelled_root)


def test_label_file_magic_is_checked(tmp_path: Path) -> None:
    path = write_idx_labels(tmp_path / "labels", np.zeros(4), magic=0x00000803)
    with pytest.raises(DatasetError, match="expected 0x00000801"):
        read_idx_labels(path)


def test_max_samples_and_resize_apply_to_images_and_labels(labelled_root: Path) -> None:
    ds = load_training_data(config(max_samples=12, image_size=32), labelled_root)
    assert ds.samples.shape == (12, 1, 32, 32) and ds.samples.dtype == torch.uint8
    assert ds.labels is not None and ds.labels.tolist() == [i % 10 for i in range(12)]
    assert ds.samples.max() > 200  # the bars survive resizing (no rescale to [0, 1] by mistake)


def test_resize_is_vectorised_and_keeps_constant_images() -> None:
    x = torch.full((5, 3, 28, 28), 77, dtype=torch.uint8)
    assert torch.equal(resize_images(x, 64), torch.full((5, 3, 64, 64), 77, dtype=torch.uint8))
    assert resize_images(x, 28) is x


def test_fashion_mnist_from_an_idx_folder(tmp_path: Path, idx_writer: Writer, fake_images: Faker) -> None:
    raw = tmp_path / "fashion-mnist" / "FashionMNIST" / "raw"
    idx_writer(raw / "t10k-images-idx3-ubyte.gz", fake_images(6))
    write_idx_labels(raw / "t10k-labels-idx1-ubyte.gz", np.array([9, 8, 7, 6, 5, 4]))
    ds = load_training_data(config("fashion-mnist"), tmp_path)
    assert ds.samples.shape == (6, 1, 28, 28) and ds.labels is not None
    assert ds.labels.tolist() == [9, 8, 7, 6, 5, 4]


def test_fashion_mnist_missing_says_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(_: Path, name: str) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(data, "_download_idx", offline)
    with pytest.raises(DatasetError) as info:
        load_training_data(config("fashion-mnist"), tmp_path)
    assert str(tmp_path / "fashion-mnist") in str(info.value) and "unreachable" in str(info.value)


def write_cifar_bin(path: Path, labels: list[int]) -> np.ndarray:
    """Records of 1 label byte + 3072 pixel bytes; record i's pixels are its channel index c → 10i + c."""
    images = np.stack([np.stack([np.full((32, 32), 10 * i + c) for c in range(3)]) for i in range(len(labels))])
    records = [bytes([lab]) + img.astype(np.uint8).tobytes() for lab, img in zip(labels, images, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(records))
    return images.astype(np.uint8)


def test_cifar10_binary_batches(tmp_path: Path) -> None:
    images = write_cifar_bin(tmp_path / "cifar10" / "cifar-10-batches-bin" / "test_batch.bin", [3, 0, 9])
    ds = load_training_data(config("cifar10"), tmp_path)
    assert ds.samples.shape == (3, 3, 32, 32) and ds.samples.dtype == torch.uint8
    assert torch.equal(ds.samples, torch.from_numpy(images))
    assert ds.labels is not None and ds.labels.tolist() == [3, 0, 9] and ds.num_classes == 10


def test_cifar10_truncated_batch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cifar10" / "cifar-10-batches-bin" / "data_batch_1.bin"
    write_cifar_bin(path, [1, 2])
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetError, match="whole number of 3073-byte"):
        load_training_data(config("cifar10"), tmp_path)


def test_cifar10_missing_says_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(_: Path) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(data, "_download_cifar10", offline)
    with pytest.raises(DatasetError, match=r"cifar-10-batches-bin.*unreachable.*binary version"):
        load_training_data(config("cifar10"), tmp_path)


def write_png(path: Path, size: tuple[int, int], colour: tuple[int, int, int], mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    img.convert(mode).save(path)
    return path


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    write_png(root / "faces" / "b.png", (40, 20), (0, 255, 0))  # wide: the shorter side is the height
    write_png(root / "faces" / "a.png", (16, 16), (255, 0, 0))
    write_png(root / "faces" / "sub" / "c.jpg", (20, 50), (0, 0, 255))
    write_png(root / "faces" / "grey.bmp", (30, 30), (128, 128, 128), mode="L")
    (root / "faces" / "notes.txt").write_text("not an image")
    return root


def folder_config(**kw: Any) -> TrainConfig:
    return config("image-folder", image_folder="faces", **kw)


def test_image_folder_is_resized_cropped_rgb_and_sorted(folder_root: Path) -> None:
    ds = load_training_data(folder_config(image_size=16), folder_root)
    assert ds.samples.shape == (4, 3, 16, 16) and ds.samples.dtype == torch.uint8
    assert ds.labels is None and ds.num_classes is None
    # sorted paths: a.png, b.png, grey.bmp, sub/c.jpg — the mean colour of each tells which is which
    means = ds.samples.float().mean(dim=(2, 3))
    expected = torch.tensor([[255, 0, 0], [0, 255, 0], [128, 128, 128], [0, 0, 255]]).float()
    assert torch.allclose(means, expected, atol=3)  # the .jpg is lossy


def test_image_folder_default_size_and_determinism(folder_root: Path) -> None:
    first = load_training_data(folder_config(), folder_root)
    assert first.sample_shape == (3, 64, 64)
    assert torch.equal(first.samples, load_training_data(folder_config(), folder_root).samples)
    assert len(load_training_data(folder_config(max_samples=2), folder_root)) == 2


def test_empty_image_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "readme.md").write_text("x")
    with pytest.raises(DatasetError, match=r"no images .* found under .*faces"):
        load_training_data(folder_config(), tmp_path)


def test_missing_image_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_training_data(folder_config(), tmp_path)


def test_symlink_leaving_the_folder_is_refused(folder_root: Path, tmp_path: Path) -> None:
    outside = write_png(tmp_path / "elsewhere" / "secret.png", (8, 8), (1, 2, 3))
    (folder_root / "faces" / "link.png").symlink_to(outside)
    with pytest.raises(DatasetError, match="outside"):
        load_training_data(folder_config(), folder_root)


def test_symlinked_directory_leaving_the_folder_is_refused(folder_root: Path, tmp_path: Path) -> None:
    write_png(tmp_path / "elsewhere" / "secret.png", (8, 8), (1, 2, 3))
    (folder_root / "faces" / "more").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match="outside"):
        load_training_data(folder_config(), folder_root)


def test_symlink_inside_the_folder_is_allowed(folder_root: Path) -> None:
    (folder_root / "faces" / "z.png").symlink_to(folder_root / "faces" / "a.png")
    assert len(load_training_data(folder_config(image_size=8), folder_root)) == 5


def test_unreadable_image_is_named(folder_root: Path) -> None:
    (folder_root / "faces" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"broken\.png is not a readable image"):
        load_training_data(folder_config(), folder_root)


# --- toy data and value range ---------------------------------------------------------------------------


def test_toy_dataset_is_points_from_the_seed() -> None:
    ds = load_training_data(config("ring-2d", max_samples=500, seed=3), Path("/nonexistent"))
    assert ds.kind == "points" and ds.sample_shape == (2,) and ds.samples.dtype == torch.float32
    assert ds.labels is None and ds.num_classes is None
    assert torch.equal(ds.samples, toy.sample("ring-2d", 500, 3))


def test_toy_dataset_default_size() -> None:
    assert len(load_training_data(config("gaussian-1d"), Path("/nonexistent"))) == 100_000


def test_to_model_range() -> None:
    x = torch.tensor([0, 127, 255], dtype=torch.uint8)
    y = to_model_range(x)
    assert y.dtype == torch.float32 and torch.allclose(y, torch.tensor([-1.0, 127 / 127.5 - 1, 1.0]))
    points = torch.randn(4, 2)
    assert to_model_range(points) is points


def test_real_mnist_t10k_with_labels(real_data_root: Path) -> None:
    ds = load_training_data(config(), real_data_root)
    assert ds.sample_shape == (1, 28, 28) and ds.labels is not None
    assert torch.bincount(ds.labels).tolist()[:2] == [980, 1135] or len(ds) != 10_000
