"""Label agreement and per-class spread of a conditional generator's samples (training/label_metrics.py), on
hand-made embeddings whose answers are known."""

import pytest
import torch
from torch import nn

from training.features import Embedding, Extractor
from training.label_metrics import label_metrics


def _extractor(classes_are_modes: bool = True) -> Extractor:
    return Extractor("toy", 4, 3, nn.Identity(), lambda x: x, classes_are_modes=classes_are_modes)


def _one_hot(labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, 3).float() * 5


def _clusters(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """One Gaussian blob of features per class, far apart."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(labels), 4, generator=g) + labels[:, None].float() * 20


def test_agreement_counts_the_samples_classified_as_asked():
    labels = torch.arange(300) % 3
    predicted = labels.clone()
    predicted[:60] = (labels[:60] + 1) % 3  # 60 of 300 drawn for one class, classified as another
    fake = Embedding(_clusters(labels, 0), _one_hot(predicted))
    real = Embedding(_clusters(labels, 1), _one_hot(labels))
    m = label_metrics(fake, labels, real, labels, _extractor())
    assert m.agreement == pytest.approx(0.8)
    assert [c.label for c in m.per_class] == [0, 1, 2]
    assert sum(c.n_fake for c in m.per_class) == 300
    assert all(c.agreement == pytest.approx(0.8) for c in m.per_class)


def test_per_class_recall_exposes_one_image_per_class():
    labels = torch.arange(600) % 3
    real = Embedding(_clusters(labels, 1), _one_hot(labels))
    spread = Embedding(_clusters(labels, 2), _one_hot(labels))
    # Every sample of a class is the same point: the label is obeyed perfectly, the variety is gone.
    collapsed = Embedding(labels[:, None].float().repeat(1, 4) * 20, _one_hot(labels))
    good = label_metrics(spread, labels, real, labels, _extractor())
    bad = label_metrics(collapsed, labels, real, labels, _extractor())
    assert good.agreement == bad.agreement == 1.0
    assert min(c.recall for c in good.per_class) > 0.8
    assert max(c.recall for c in bad.per_class) < 0.1
    assert min(c.fid for c in bad.per_class) > max(c.fid for c in good.per_class)


def test_a_class_with_too_few_images_has_no_spread_figures():
    labels = torch.tensor([0] * 50 + [1] * 3)
    emb = Embedding(_clusters(labels, 0), _one_hot(labels))
    m = label_metrics(emb, labels, emb, labels, _extractor())
    one = next(c for c in m.per_class if c.label == 1)
    assert one.n_fake == 3 and one.agreement == 1.0
    assert one.fid is None and one.recall is None
    assert m.to_dict()["per_class"][1]["fid"] is None


def test_an_extractor_that_does_not_classify_the_dataset_is_refused():
    labels = torch.arange(30) % 3
    emb = Embedding(_clusters(labels, 0), _one_hot(labels))
    with pytest.raises(ValueError, match="does not classify"):
        label_metrics(emb, labels, emb, labels, _extractor(classes_are_modes=False))
