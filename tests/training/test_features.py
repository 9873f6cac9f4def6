import dataclasses
import importlib.machinery
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest
import safetensors
import torch

from training import features
from training.classifier import HoldoutSplit, classifier_accuracy
from training.features import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    MNIST_CNN_WEIGHTS,
    ExtractorUnavailable,
    load_extractor,
    mnist_cnn_extractor,
    to_mnist_input,
)


@pytest.fixture
def no_inception_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty torch hub cache


# --- the committed MNIST classifier --------------------------------------------------------------------------


def test_committed_classifier_is_at_least_98_percent_right_on_the_held_out_digits(mnist_split: HoldoutSplit) -> None:
    assert mnist_split.description == "t10k images 0..7999 train, 8000..9999 held out"
    assert mnist_split.heldout_labels is not None
    net = mnist_cnn_extractor().network
    accuracy, per_class = classifier_accuracy(net, mnist_split.heldout, mnist_split.heldout_labels)
    assert accuracy >= 0.98
    assert min(per_class) >= 0.95
    # The number on the card and in the file is this one.
    meta = features.mnist_cnn_metadata()
    assert float(meta["accuracy"]) == pytest.approx(accuracy, abs=1e-4)
    assert meta["split"] == mnist_split.description


def test_committed_classifier_file_is_small_safetensors_with_its_provenance() -> None:
    assert MNIST_CNN_WEIGHTS.stat().st_size < 1_000_000
    with safetensors.safe_open(str(MNIST_CNN_WEIGHTS), framework="pt") as f:
        meta = f.metadata()
    assert {"accuracy", "split", "seed", "epochs", "per_class_accuracy"} <= set(meta)
    assert MNIST_CNN_WEIGHTS.with_suffix(".md").is_file()  # the model card


def test_mnist_cnn_gives_128_features_and_10_logits(mnist_cnn: features.Extractor) -> None:
    x = torch.rand(7, 1, 28, 28) * 2 - 1
    out = mnist_cnn.embed(x)
    assert mnist_cnn.name == "mnist-cnn-v1"
    assert out.features.shape == (7, 128) and out.logits is not None and out.logits.shape == (7, 10)
    # Batching changes nothing, and the network is in eval mode (dropout off): the same images, the same numbers.
    small = dataclasses.replace(mnist_cnn, batch_size=3)
    torch.testing.assert_close(small.features(x), out.features)
    torch.testing.assert_close(mnist_cnn.logits(x), out.logits)


def test_mnist_input_from_rgb_and_other_sizes() -> None:
    x = torch.full((2, 3, 32, 32), 0.5)
    x[:, :, 0, 0] = 3.0  # an overshooting linear head is clamped, as the served image is
    y = to_mnist_input(x)
    assert y.shape == (2, 1, 28, 28)
    assert y.max() <= 1.0 and y.min() >= -1.0


def test_auto_picks_the_mnist_cnn_for_mnist_and_inception_elsewhere(no_inception_weights: None) -> None:
    assert load_extractor("auto", "mnist").name == "mnist-cnn-v1"
    for dataset in ("fashion-mnist", "cifar10", "image-folder"):
        with pytest.raises(ExtractorUnavailable, match="inception-v3-compat"):
            load_extractor("auto", dataset)


def test_unknown_extractor_or_toy_dataset_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown extractor"):
        load_extractor("vgg", "mnist")
    with pytest.raises(ValueError, match="not an image dataset"):
        load_extractor("auto", "ring-2d")


def test_missing_classifier_weights_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(ExtractorUnavailable, match="ganserve classifier"):
        mnist_cnn_extractor(tmp_path / "nothing.safetensors")


# --- Inception ------------------------------------------------------------------------------------------------


def test_inception_without_weights_names_the_fix(no_inception_weights: None) -> None:
    with pytest.raises(ExtractorUnavailable) as info:
        load_extractor("inception", "cifar10")
    message = str(info.value)
    for needed in (
        INCEPTION_WEIGHTS_ENV,
        INCEPTION_WEIGHTS_FILE,
        INCEPTION_WEIGHTS_URL,
        "pip install 'ganserve[inception]'",
    ):
        assert needed in message


def test_inception_weights_variable_naming_a_missing_file(
    no_inception_weights: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(tmp_path / "absent.pth"))
    with pytest.raises(ExtractorUnavailable, match=f"{INCEPTION_WEIGHTS_ENV}=.*absent.pth is not a file"):
        load_extractor("inception", "mnist")


class _FakeInception(torch.nn.Module):
    """Stands in for torch-fidelity's FeatureExtractorInceptionV3: records how it was built and what it was fed."""

    built: ClassVar[dict[str, object]] = {}
    inputs: ClassVar[list[torch.Tensor]] = []

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str) -> None:
        super().__init__()
        _FakeInception.built = {"name": name, "features": features_list, "weights": feature_extractor_weights_path}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _FakeInception.inputs.append(x)
        n = x.shape[0]
        return torch.ones(n, 2048), torch.zeros(n, 1008)


def test_inception_loads_torch_fidelity_from_the_local_weights_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = types.ModuleType("torch_fidelity")
    package.__spec__ = importlib.machinery.ModuleSpec("torch_fidelity", None)
    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = _FakeInception  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_fidelity", package)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)
    weights = tmp_path / INCEPTION_WEIGHTS_FILE
    weights.write_bytes(b"not really weights")
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(weights))

    ext = load_extractor("auto", "cifar10")
    assert ext.name == "inception-v3-compat" and ext.num_features == 2048 and ext.classes == 1008
    assert _FakeInception.built == {
        "name": "inception-v3-compat",
        "features": ["2048", "logits_unbiased"],
        "weights": str(weights),
    }
    grey = torch.linspace(-1, 1, 28 * 28).reshape(1, 1, 28, 28).repeat(3, 1, 1, 1)
    out = ext.embed(grey)
    assert out.features.shape == (3, 2048) and out.logits is not None and out.logits.shape == (3, 1008)
    fed = _FakeInception.inputs[-1]
    assert fed.dtype == torch.uint8 and fed.shape == (3, 3, 28, 28)  # grey repeated to RGB; it resizes itself
    assert fed[0, 0, 0, 0] == 0 and fed[0, 0, -1, -1] == 255
