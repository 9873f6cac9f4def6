"""The image metrics (the toy mode metrics are tested in test_toy.py). Real digits are MNIST's 2,000 held-out
t10k images, which the MNIST CNN never saw."""

import json
import math

import pytest
import torch
from torch import nn

from training.classifier import HoldoutSplit
from training.features import Embedding, Extractor
from training.metrics import (
    class_coverage,
    evaluate_images,
    fid_from_features,
    inception_score_from_logits,
    kid_from_features,
    knn_radii,
    nearest_neighbour_png,
    nearest_neighbours,
    precision_recall,
)


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x.flatten(1), None


def identity_extractor(dim: int) -> Extractor:
    """Features = the pixels themselves, no classifier head: metrics on vectors we choose."""
    return Extractor("identity", dim, None, _Identity(), lambda x: x)


def _with_moments(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """n samples whose sample mean and (n−1)-normalised covariance are exactly `mean` and `cov`."""
    x = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    whiten = torch.linalg.cholesky(torch.linalg.inv(x.T @ x / (n - 1)))  # x @ whiten has identity covariance
    return x @ whiten @ torch.linalg.cholesky(cov).T + mean


@pytest.fixture(scope="module")
def heldout_embedding(mnist_cnn: Extractor, mnist_heldout: torch.Tensor) -> Embedding:
    return mnist_cnn.embed(mnist_heldout)


def _repeated_digit(images: torch.Tensor, n: int) -> torch.Tensor:
    return images[:1].expand(n, -1, -1, -1).clone()


# --- FID ------------------------------------------------------------------------------------------------------


def test_fid_of_a_set_against_itself_is_zero(heldout_embedding: Embedding) -> None:
    f = heldout_embedding.features
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(f[:1000], f[1000:]) > 1.0  # and not zero for two different sets


def test_fid_between_two_gaussians_is_the_closed_form() -> None:
    # Covariances R·diag(a)·Rᵀ and R·diag(b)·Rᵀ commute, so the Fréchet distance's trace term is
    # Σ(√a − √b)² and FID = ‖μ₁ − μ₂‖² + Σ(√aᵢ − √bᵢ)².
    d = 6
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    a = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5, 0.25], dtype=torch.float64)
    b = torch.tensor([2.0, 0.5, 0.5, 1.0, 4.0, 1.00], dtype=torch.float64)
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.linspace(-1, 2, d, dtype=torch.float64)
    x = _with_moments(500, mu1, rotation @ torch.diag(a) @ rotation.T, seed=2)
    y = _with_moments(700, mu2, rotation @ torch.diag(b) @ rotation.T, seed=3)
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    assert fid_from_features(x, y) == pytest.approx(expected, rel=1e-6)
    # The same through the image entry point, with the identity as the extractor over 1×1×D "images".
    images_x, images_y = (x / 20).float().view(-1, 1, 1, d), (y / 20).float().view(-1, 1, 1, d)  # inside [-1, 1]
    assert max(images_x.abs().max(), images_y.abs().max()) < 1
    got = evaluate_images(images_y, images_x, identity_extractor(d)).fid
    assert got == pytest.approx(expected / 400, rel=1e-4)


def test_fid_rises_with_the_noise_on_real_digits(mnist_cnn: Extractor, mnist_heldout: torch.Tensor) -> None:
    clean = mnist_heldout[:1000]
    gen = torch.Generator().manual_seed(0)
    reference = mnist_cnn.features(clean)
    fids = [
        fid_from_features(reference, mnist_cnn.features(clean + sigma * torch.randn(clean.shape, generator=gen)))
        for sigma in (0.0, 0.1, 0.3)
    ]
    assert fids[0] == pytest.approx(0.0, abs=1e-6)
    assert fids[0] < fids[1] < fids[2]
    assert fids[2] > 5 * fids[1]


# --- KID, IS, coverage ----------------------------------------------------------------------------------------


def test_kid_tells_two_sets_of_real_digits_from_a_repeated_one(heldout_embedding: Embedding) -> None:
    f = heldout_embedding.features
    same_mean, same_std = kid_from_features(f[:1000], f[1000:])
    collapsed, _ = kid_from_features(f[:1000], f[1000:1001].expand(1000, -1))
    assert abs(same_mean) < 3 * same_std  # unbiased: two samples of one distribution give ≈ 0
    assert collapsed > 10 * abs(same_mean) + 3 * same_std
    assert kid_from_features(f[:1000], f[1000:]) == (same_mean, same_std)  # seeded subsets: reproducible


def test_inception_score_of_real_digits_is_near_ten_and_of_one_digit_is_one(heldout_embedding: Embedding) -> None:
    logits = heldout_embedding.logits
    assert logits is not None
    assert inception_score_from_logits(logits)[0] >= 9.0
    assert inception_score_from_logits(logits[:1].expand(500, -1))[0] < 1.1


def test_coverage_of_real_digits_is_ten_classes_and_of_one_digit_one(heldout_embedding: Embedding) -> None:
    logits = heldout_embedding.logits
    assert logits is not None
    real = class_coverage(logits)
    assert real.covered == 10 and len(real.histogram) == 10
    assert sum(real.histogram) == pytest.approx(1.0) and real.kl_to_uniform < 0.01
    one = class_coverage(logits[:1].expand(500, -1))
    assert one.covered == 1 and one.kl_to_uniform == pytest.approx(math.log(10))


def test_coverage_ignores_a_class_under_a_tenth_of_its_share() -> None:
    predicted = torch.tensor([0] * 495 + [1] * 495 + [2] * 9 + [3])  # class 2: 0.9 % of the samples; 3: 0.1 %
    logits = torch.nn.functional.one_hot(predicted, 10).float()
    assert class_coverage(logits).covered == 2


# --- precision/recall, nearest neighbours ---------------------------------------------------------------------


def test_precision_and_recall_of_a_set_against_itself_are_one(heldout_embedding: Embedding) -> None:
    f = heldout_embedding.features
    assert precision_recall(f, f) == (1.0, 1.0)


def test_precision_recall_of_a_collapse_is_precise_but_recalls_nothing(heldout_embedding: Embedding) -> None:
    f = heldout_embedding.features
    precision, recall = precision_recall(f[:1000], f[1000:1001].expand(1000, -1).clone())
    assert precision == 1.0  # a real digit, repeated, lies on the real manifold …
    assert recall < 0.01  # … but covers nothing of it


def test_knn_radii_on_a_line() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    torch.testing.assert_close(knn_radii(x, 1), torch.tensor([1.0, 1.0, 2.0, 4.0]))
    torch.testing.assert_close(knn_radii(x, 2), torch.tensor([3.0, 2.0, 3.0, 6.0]))


def test_precision_recall_refuses_k_as_large_as_a_set() -> None:
    with pytest.raises(ValueError, match="more than k samples"):
        precision_recall(torch.zeros(3, 2), torch.zeros(10, 2), k=3)


def test_nearest_neighbour_of_a_training_image_is_itself_at_distance_zero(mnist_split: HoldoutSplit) -> None:
    train = mnist_split.train[:3000].float().flatten(1) / 127.5 - 1
    queries = train[[5, 1234, 2999]]
    dist, index = nearest_neighbours(queries, train, k=2)
    assert dist[:, 0].tolist() == [0.0, 0.0, 0.0]
    assert index[:, 0].tolist() == [5, 1234, 2999]
    assert (dist[:, 1] > 1.0).all()  # the next nearest is another digit


# --- the entry point ------------------------------------------------------------------------------------------


def test_evaluate_images_on_real_digits_against_themselves(mnist_cnn: Extractor, mnist_heldout: torch.Tensor) -> None:
    x = mnist_heldout[:500]
    m = evaluate_images(x, x, mnist_cnn)
    assert m.extractor == "mnist-cnn-v1" and (m.n_fake, m.n_real, m.k) == (500, 500, 3)
    assert m.fid == pytest.approx(0.0, abs=1e-6)
    assert (m.precision, m.recall) == (1.0, 1.0)
    assert m.nn_pixel == 0.0 and m.nn_feature == 0.0
    assert m.inception_score is not None and m.inception_score >= 9.0
    assert m.classes_covered == 10 and m.num_classes == 10
    d = m.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["extractor"] == "mnist-cnn-v1" and isinstance(d["class_histogram"], list)
    assert set(d) >= {"fid", "kid_mean", "kid_std", "inception_score", "precision", "recall", "classes_covered"}


def test_evaluate_images_of_one_repeated_digit(mnist_cnn: Extractor, mnist_heldout: torch.Tensor) -> None:
    m = evaluate_images(_repeated_digit(mnist_heldout, 300), mnist_heldout[300:600], mnist_cnn)
    assert m.classes_covered == 1
    assert m.inception_score is not None and m.inception_score < 1.1
    assert m.recall < 0.02
    assert m.fid > 10 * evaluate_images(mnist_heldout[:300], mnist_heldout[300:600], mnist_cnn).fid


def test_without_a_classifier_is_and_coverage_are_none() -> None:
    x = torch.rand(20, 1, 4, 4) * 2 - 1
    d = evaluate_images(x, torch.rand(30, 1, 4, 4) * 2 - 1, identity_extractor(16)).to_dict()
    assert d["inception_score"] is None and d["classes_covered"] is None and d["class_histogram"] is None
    assert d["extractor"] == "identity" and (d["n_fake"], d["n_real"]) == (20, 30)
    json.dumps(d, allow_nan=False)


def test_tiny_sets_lower_k_and_refuse_a_single_image() -> None:
    ext = identity_extractor(16)
    assert evaluate_images(torch.zeros(3, 1, 4, 4), torch.rand(5, 1, 4, 4), ext).k == 2
    with pytest.raises(ValueError, match="N ≥ 2"):
        evaluate_images(torch.zeros(1, 1, 4, 4), torch.zeros(5, 1, 4, 4), ext)
    with pytest.raises(ValueError, match="fake images are"):
        evaluate_images(torch.zeros(4, 1, 4, 4), torch.zeros(5, 3, 4, 4), ext)


def test_nearest_neighbour_png_has_a_row_per_generated_image(mnist_heldout: torch.Tensor) -> None:
    from torchvision.io import decode_png

    png = nearest_neighbour_png(mnist_heldout[:4], mnist_heldout[:50], k=3)
    image = decode_png(torch.frombuffer(bytearray(png), dtype=torch.uint8))
    # 4 rows of 1 + 3 tiles of 28 px with make_grid's 2 px borders (and its grey → RGB); the nearest real image
    # of a real image is itself.
    assert tuple(image.shape) == (3, 4 * 30 + 2, 4 * 30 + 2)
    torch.testing.assert_close(image[:, 2:30, 2:30], image[:, 2:30, 32:60])


def test_nearest_neighbour_png_adds_the_feature_space_neighbours(mnist_heldout: torch.Tensor, mnist_cnn) -> None:
    from torchvision.io import decode_png

    png = nearest_neighbour_png(mnist_heldout[:4], mnist_heldout[:50], k=3, extractor=mnist_cnn)
    image = decode_png(torch.frombuffer(bytearray(png), dtype=torch.uint8))
    # 1 generated + 3 by pixels + a blank + 3 by features per row; a real image is its own nearest in both
    assert tuple(image.shape) == (3, 4 * 30 + 2, 8 * 30 + 2)
    torch.testing.assert_close(image[:, 2:30, 2:30], image[:, 2:30, 152:180])
    assert int(image[:, 2:30, 122:150].max()) == 0  # the blank separator


def test_precomputed_real_features_give_the_same_figures(mnist_cnn: Extractor, mnist_heldout: torch.Tensor) -> None:
    """The loop embeds its real images once and passes them in: every figure as if embedded each time."""
    fake, real = mnist_heldout[:200], mnist_heldout[200:400]
    cached = evaluate_images(fake, real, mnist_cnn, real_features=mnist_cnn.embed(real)).to_dict()
    assert cached == evaluate_images(fake, real, mnist_cnn).to_dict()
    assert cached["fid"] > 0
    with pytest.raises(ValueError, match="real_features holds 200 images, real 100"):
        evaluate_images(fake, real[:100], mnist_cnn, real_features=mnist_cnn.embed(real))
