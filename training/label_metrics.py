"""How well a class-conditional generator obeys its label: the share of its samples that the dataset's classifier
(the extractor's head, `mnist-cnn-v1` for MNIST) assigns to the class asked for, and, per class, how the samples
of that class spread against the real images of that class (precision, recall, FID). Agreement alone can be bought
by drawing one perfect image per class; the per-class recall and FID show whether it was.

`ganserve evaluate` reports these for conditional models (training/evaluation.py); the metrics themselves are
training/metrics.py's, computed within each class.
"""

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from training.features import Embedding, Extractor
from training.metrics import DEFAULT_K, fid_from_features, precision_recall

MIN_CLASS_IMAGES = 10  # below this a class's FID and k-NN radii are noise: its per-class figures are null


@dataclass(frozen=True)
class ClassQuality:
    label: int
    n_fake: int
    n_real: int
    agreement: float | None  # share of this class's samples the classifier calls `label`
    fid: float | None
    precision: float | None
    recall: float | None


@dataclass(frozen=True)
class LabelMetrics:
    agreement: float  # over every sample: the classifier's class equals the requested one
    per_class: list[ClassQuality]

    def to_dict(self) -> dict[str, Any]:
        def ready(v: Any) -> Any:
            return v if not isinstance(v, float) or math.isfinite(v) else None

        return {
            "label_agreement": self.agreement,
            "per_class": [{k: ready(v) for k, v in asdict(c).items()} for c in self.per_class],
        }


def label_metrics(
    fake: Embedding,
    fake_labels: torch.Tensor,
    real: Embedding,
    real_labels: torch.Tensor,
    extractor: Extractor,
    *,
    k: int = DEFAULT_K,
) -> LabelMetrics:
    """`fake` (embedded samples drawn for `fake_labels`) against `real` (embedded images with `real_labels`), in
    `extractor`'s feature space. The extractor must classify the dataset's own classes (`classes_are_modes`)."""
    if fake.logits is None or not extractor.classes_are_modes:
        raise ValueError(f"{extractor.name} does not classify this dataset's classes: label agreement needs one")
    if len(fake_labels) != len(fake.features) or len(real_labels) != len(real.features):
        raise ValueError("one label per embedded image is needed, for the samples and the real images")
    fake_labels, real_labels = fake_labels.cpu().long(), real_labels.cpu().long()
    predicted = fake.logits.argmax(1)
    per_class = []
    for c in sorted(set(fake_labels.tolist())):
        f_mask, r_mask = fake_labels == c, real_labels == c
        nf, nr = int(f_mask.sum()), int(r_mask.sum())
        agreement = float((predicted[f_mask] == c).float().mean()) if nf else None
        fid = precision = recall = None
        if nf >= MIN_CLASS_IMAGES and nr >= MIN_CLASS_IMAGES:
            f, r = fake.features[f_mask], real.features[r_mask]
            fid = fid_from_features(r, f)
            precision, recall = precision_recall(r, f, min(k, nf - 1, nr - 1))
        per_class.append(ClassQuality(c, nf, nr, agreement, fid, precision, recall))
    return LabelMetrics(float((predicted == fake_labels).float().mean()), per_class)
