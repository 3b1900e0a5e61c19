"""Pixel and object scores from counts: the one definition used by train (model selection) and evaluate.

From true positives ``tp``, false positives ``fp`` and false negatives ``fn`` (pixels or matched objects):
precision = tp / (tp + fp) (undefined when nothing was predicted), recall = tp / (tp + fn) (undefined
when there is no truth), IoU = tp / (tp + fp + fn) (undefined when both are empty), F1 = 2PR / (P + R)
(undefined when P or R is; 0 when both are 0). Undefined is ``None`` in JSON-facing results
(:func:`scores`, :func:`metrics_from_confusion`) and NaN in array results (:func:`class_scores`).

A confusion matrix ``cm[t, p]`` counts pixels of true class ``t`` predicted as ``p`` (rows = truth,
columns = prediction). numpy only: no torch here (train's on-device accumulation is in
:mod:`geoseg.train.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

IGNORE = 255


def ratio(a: float, b: float) -> float | None:
    """``a / b``, None when ``b`` is 0."""
    return float(a) / float(b) if b else None


def f1(p: float | None, r: float | None) -> float | None:
    """Harmonic mean of precision and recall; None when either is undefined, 0 when both are 0."""
    if p is None or r is None:
        return None
    return 2 * p * r / (p + r) if (p + r) > 0 else 0.0


def scores(tp: int, fp: int, fn: int) -> dict[str, Any]:
    """``iou``, ``precision``, ``recall``, ``f1`` (None where undefined) and the counts."""
    p, r = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"iou": ratio(tp, tp + fp + fn), "precision": p, "recall": r, "f1": f1(p, r), "tp": tp, "fp": fp, "fn": fn}


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, num_classes: int, ignore: int = IGNORE) -> np.ndarray:
    """(K, K) int64 counts, rows = truth, columns = prediction; ``ignore`` in either is skipped.

    Values outside ``0..K-1`` (other than ``ignore``) are an error.
    """
    p = np.asarray(pred).ravel().astype(np.int64)
    t = np.asarray(truth).ravel().astype(np.int64)
    if p.shape != t.shape:
        raise ValueError(f"prediction {np.shape(pred)} and truth {np.shape(truth)} differ in shape")
    keep = (p != ignore) & (t != ignore)
    p, t = p[keep], t[keep]
    if p.size and (p.min() < 0 or p.max() >= num_classes or t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"class ids must be in 0..{num_classes - 1} (or {ignore} = ignore)")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _counts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm)
    return tp, cm.sum(0) - tp, cm.sum(1) - tp


def metrics_from_confusion(cm: np.ndarray) -> dict[str, Any]:
    """Per-class :func:`scores` (None where undefined), overall accuracy and the pixel count of ``cm``."""
    tp, fp, fn = _counts(cm)
    out = {k: scores(int(tp[k]), int(fp[k]), int(fn[k])) for k in range(len(tp))}
    total = int(np.asarray(cm).sum())
    return {"classes": out, "accuracy": ratio(int(tp.sum()), total), "pixels": total}


def foreground_scores(cm: np.ndarray, fg: Sequence[int]) -> dict[str, Any]:
    """:func:`scores` of "any foreground class" (ids ``fg``) against the rest, from a confusion matrix."""
    f = np.zeros(cm.shape[0], bool)
    f[list(fg)] = True
    return scores(int(cm[np.ix_(f, f)].sum()), int(cm[np.ix_(~f, f)].sum()), int(cm[np.ix_(f, ~f)].sum()))


def class_scores(cm: Any) -> dict[str, np.ndarray]:
    """Per-class ``iou``, ``precision``, ``recall``, ``f1`` as float arrays (NaN where undefined) and
    ``support`` (true pixels per class). ``cm``: anything ``np.asarray`` takes (a CPU tensor too)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp, fp, fn = _counts(cm)
    per = [scores(int(a), int(b), int(c)) for a, b, c in zip(tp, fp, fn, strict=True)]
    out = {k: np.array([np.nan if s[k] is None else s[k] for s in per], np.float64)
           for k in ("iou", "precision", "recall", "f1")}  # fmt: skip
    out["support"] = cm.sum(1)
    return out
