"""Losses and metrics: ignore_index=255 never contributes; values against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geoseg.train.losses import LOSSES, build_loss
from geoseg.train.metrics import class_scores, confusion_matrix, mean_iou, rank_score, score_classes

IGNORE = 255


def _batch(seed: int = 0, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, 16, 16, generator=g)
    target = torch.randint(0, k, (2, 16, 16), generator=g)
    target[:, :, 5:9] = IGNORE
    target[1, 12:, :] = IGNORE
    return logits, target


LOSS_SETUPS = [("ce", 0.0), ("focal", 0.0), ("dice", 0.0), ("ce", 1.0), ("focal", 0.5)]


@pytest.mark.parametrize(("name", "dice_weight"), LOSS_SETUPS)
def test_ignore_pixels_never_change_loss_or_gradient(name: str, dice_weight: float) -> None:
    crit = build_loss(name, dice_weight=dice_weight)
    logits, target = _batch()
    ign = (target == IGNORE).unsqueeze(1).expand_as(logits)
    other = logits.clone()
    other[ign] = torch.randn(int(ign.sum()), generator=torch.Generator().manual_seed(9)) * 1e4
    other[0, :, 0, 6] = torch.tensor([float("inf"), -float("inf"), 3.0])  # even non-finite predictions there
    a = logits.clone().requires_grad_(True)
    b = other.clone().requires_grad_(True)
    la, lb = crit(a, target), crit(b, target)
    assert torch.isfinite(la)
    assert la.item() == lb.item()
    la.backward()
    lb.backward()
    assert torch.equal(a.grad, b.grad)
    assert a.grad[ign].abs().max() == 0
    assert a.grad[~ign].abs().max() > 0  # valid pixels do drive the loss
    # changing a *valid* prediction does change the loss: the test can fail
    c = logits.clone()
    c[0, :, 0, 0] += torch.tensor([5.0, -5.0, 0.0])
    assert crit(c, target).item() != la.item()


def test_ce_and_focal_match_direct_formulas() -> None:
    logits, target = _batch(1)
    ref = F.cross_entropy(logits, target, ignore_index=IGNORE)
    assert torch.allclose(build_loss("ce", dice_weight=0)(logits, target), ref, atol=1e-6)
    valid = target != IGNORE
    ce = F.cross_entropy(logits, target.clamp(max=2), reduction="none")[valid]
    focal = ((1 - torch.exp(-ce)) ** 2 * ce).mean()
    assert torch.allclose(build_loss("focal", dice_weight=0)(logits, target), focal, atol=1e-6)


def test_dice_matches_hand_computation() -> None:
    logits, target = _batch(2)
    valid = target != IGNORE
    p = logits.softmax(1)
    losses = []
    for c in range(3):
        t = (target == c) & valid
        if t.any():
            inter = (p[:, c] * t).sum()
            card = (p[:, c] * valid).sum() + t.sum()
            losses.append(1 - 2 * inter / card)
    assert torch.allclose(build_loss("dice")(logits, target), torch.stack(losses).mean(), atol=1e-6)


def test_all_ignored_batch_gives_zero_loss_and_backward_works() -> None:
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    target = torch.full((1, 8, 8), IGNORE)
    for name in LOSSES.names():
        loss = build_loss(name)(logits, target)
        assert loss.item() == 0.0
        loss.backward()


def test_unknown_loss_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="ce, dice, focal"):
        build_loss("hinge")


def test_confusion_matrix_ignores_ignore_pixels() -> None:
    target = torch.tensor([[0, 1, 2, IGNORE], [1, 1, IGNORE, 0]])
    pred = torch.tensor([[0, 2, 2, 1], [1, 0, 0, 0]])
    cm = confusion_matrix(pred, target, 3)
    expected = np.array([[2, 0, 0], [1, 1, 1], [0, 0, 1]])
    assert np.array_equal(cm.numpy(), expected)
    pred2 = pred.clone()
    pred2[target == IGNORE] = 2
    assert torch.equal(confusion_matrix(pred2, target, 3), cm)


def test_class_scores_from_counts() -> None:
    cm = np.array([[50, 5, 0], [10, 30, 0], [0, 0, 0]])
    s = class_scores(cm)
    # class 1: TP 30, FP 5, FN 10
    assert s["iou"][1] == pytest.approx(30 / 45)
    assert s["precision"][1] == pytest.approx(30 / 35)
    assert s["recall"][1] == pytest.approx(30 / 40)
    assert s["f1"][1] == pytest.approx(2 * 30 / (60 + 15))
    assert s["support"].tolist() == [55, 40, 0]
    assert math.isnan(s["iou"][2]) and math.isnan(s["precision"][2])
    assert mean_iou(s["iou"], score_classes(3, None)) == pytest.approx(30 / 45)  # NaN class 2 left out
    assert score_classes(4, 3) == [1, 2] and score_classes(1, None) == [0]
    assert math.isnan(mean_iou(s["iou"], [2])) and rank_score(math.nan) < rank_score(0.0)
