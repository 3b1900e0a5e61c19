"""geoseg.metrics: the one definition of pixel/object scores, shared by train and evaluate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geoseg import evaluate
from geoseg.metrics import class_scores, foreground_scores, metrics_from_confusion, scores
from geoseg.train import metrics as train_metrics


def test_scores_and_undefined_values() -> None:
    s = scores(30, 10, 20)
    assert s["iou"] == pytest.approx(30 / 60) and s["precision"] == pytest.approx(0.75)
    assert s["recall"] == pytest.approx(0.6) and s["f1"] == pytest.approx(2 * 30 / (60 + 30))
    none = scores(0, 0, 5)  # nothing predicted: precision and F1 undefined, recall 0
    assert none["precision"] is None and none["f1"] is None and none["recall"] == 0.0 and none["iou"] == 0.0
    empty = scores(0, 0, 0)
    assert all(empty[k] is None for k in ("iou", "precision", "recall", "f1"))


def test_train_and_evaluate_agree_on_one_confusion_matrix() -> None:
    """Same numbers (None in JSON = NaN in arrays), so a model's val scores mean what eval.json means."""
    cm = np.array([[50, 5, 0], [10, 30, 0], [0, 0, 0]])  # class 2 absent from truth and prediction
    arr = class_scores(cm)
    js = metrics_from_confusion(cm)["classes"]
    for k in range(3):
        for key in ("iou", "precision", "recall", "f1"):
            v = js[k][key]
            assert (v is None and math.isnan(arr[key][k])) or v == pytest.approx(arr[key][k]), (k, key)
    assert train_metrics.class_scores is class_scores and evaluate.metrics_from_confusion is metrics_from_confusion
    fg = foreground_scores(cm, [1, 2])
    assert (fg["tp"], fg["fp"], fg["fn"]) == (30, 5, 10)
