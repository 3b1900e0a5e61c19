"""Pixel metrics from a confusion matrix accumulated over the validation split.

``cm[t, p]`` counts valid pixels with true class ``t`` predicted as ``p`` (pixels whose target is
``ignore_index`` are never counted). Per class: IoU = TP / (TP + FP + FN), precision = TP / (TP + FP),
recall = TP / (TP + FN), F1 = 2PR / (P + R) = 2TP / (2TP + FP + FN); NaN where the denominator is 0.

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


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """``(K, K)`` int64 confusion matrix (rows = truth, columns = prediction) of valid pixels, on ``pred``'s device."""
    valid = target != ignore_index
    t = target[valid].long()
    p = pred[valid].long()
    idx = t * num_classes + p
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def class_scores(cm: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
    """Per-class ``iou``, ``precision``, ``recall``, ``f1`` (NaN where undefined) and ``support`` (true pixels)."""
    cm = np.asarray(cm.cpu() if isinstance(cm, torch.Tensor) else cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    return {
        "iou": _div(tp, tp + fp + fn),
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "support": cm.sum(1),
    }


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
