"""Pixel metrics from a confusion matrix accumulated over the validation split.

``cm[t, p]`` counts valid pixels with true class ``t`` predicted as ``p`` (pixels whose target is
``ignore_index`` are never counted). Per class: IoU = TP / (TP + FP + FN), precision = TP / (TP + FP),
recall = TP / (TP + FN), F1 = 2PR / (P + R); NaN where undefined (the one definition, shared with
``geoseg evaluate``, is :mod:`geoseg.metrics`; this module adds the on-device accumulation and model selection).

**Model-selection score (mIoU)**: the mean IoU over the *foreground object classes* -- every class id except 0
(background) and the boundary/contact class -- ignoring classes whose IoU is NaN (absent from both truth and
prediction). When a dataset has no such class the mean runs over all classes. The score is NaN when no class
qualifies; for choosing the best checkpoint NaN ranks below any number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from geoseg.classes import ClassTable
from geoseg.metrics import class_scores

__all__ = ["class_scores", "confusion_matrix", "mean_iou", "rank_score", "score_classes"]


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """``(K, K)`` int64 confusion matrix (rows = truth, columns = prediction) of valid pixels, on ``pred``'s device."""
    valid = target != ignore_index
    t = target[valid].long()
    p = pred[valid].long()
    idx = t * num_classes + p
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def score_classes(num_classes: int, boundary_class: int | None) -> list[int]:
    """Class ids averaged into the selection mIoU: all but background (0) and the boundary class (if any)."""
    ids = list(ClassTable.of([{"id": i} for i in range(num_classes)], boundary_class).foreground)
    return ids or list(range(num_classes))


def mean_iou(iou: Sequence[float] | np.ndarray, ids: Sequence[int]) -> float:
    """Mean of ``iou[ids]`` ignoring NaN; NaN when all are NaN."""
    vals = [float(iou[i]) for i in ids if not math.isnan(float(iou[i]))]
    return float(sum(vals) / len(vals)) if vals else math.nan


def rank_score(score: float) -> float:
    """Comparable form of a possibly-NaN score (NaN ranks below every real score)."""
    return -1.0 if math.isnan(score) else score
