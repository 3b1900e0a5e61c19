"""Segmentation losses with ``ignore_index`` respected exactly.

All losses take logits ``(B, K, H, W)`` (any float dtype; computed in float32) and targets ``(B, H, W)`` integer
class ids with ``ignore_index`` for ignore. Ignored pixels contribute nothing: their logits are replaced by 0
before anything else, so neither their values nor their gradients depend on what the network predicted there
(the gradient at ignored pixels is exactly 0). Means are over valid pixels; a batch with no valid pixel gives a
loss of 0 (with a graph, so ``backward`` works).

Registry :data:`LOSSES`: ``ce`` (cross-entropy), ``focal`` (focal loss, gamma 2), ``dice`` (soft Dice alone).
:func:`build_loss` adds Dice with weight ``dice_weight`` to ``ce``/``focal``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.registry import Registry


def _prepare(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, ...]:
    valid = target != ignore_index
    logits = torch.where(valid.unsqueeze(1), logits.float(), torch.zeros((), device=logits.device))
    safe_target = torch.where(valid, target, torch.zeros((), dtype=target.dtype, device=target.device)).long()
    return logits, safe_target, valid


def _pixel_ce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, reduction="none") * valid


class CrossEntropyLoss(nn.Module):
    """Mean cross-entropy over valid pixels."""

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target, valid = _prepare(logits, target, self.ignore_index)
        return _pixel_ce(logits, target, valid).sum() / valid.sum().clamp_min(1)


class FocalLoss(nn.Module):
    """Mean focal loss ``(1 - p_t)^gamma * CE`` over valid pixels (Lin et al. 2017, no alpha)."""

    def __init__(self, ignore_index: int = 255, gamma: float = 2.0) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target, valid = _prepare(logits, target, self.ignore_index)
        ce = _pixel_ce(logits, target, valid)
        pt = torch.exp(-ce)
        return ((1.0 - pt).pow(self.gamma) * ce * valid).sum() / valid.sum().clamp_min(1)


class DiceLoss(nn.Module):
    """Soft multi-class Dice over valid pixels of the whole batch: ``1 - 2|P∩T| / (|P| + |T|)``.

    Averaged over the classes present in the batch's valid target pixels (as smp's ``DiceLoss``); 0 when none.
    """

    def __init__(self, ignore_index: int = 255, eps: float = 1e-7) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target, valid = _prepare(logits, target, self.ignore_index)
        k = logits.shape[1]
        prob = logits.softmax(1) * valid.unsqueeze(1)
        onehot = F.one_hot(target, k).permute(0, 3, 1, 2).float() * valid.unsqueeze(1)
        dims = (0, 2, 3)
        inter = (prob * onehot).sum(dims)
        card = prob.sum(dims) + onehot.sum(dims)
        dice = (2.0 * inter) / card.clamp_min(self.eps)
        present = (onehot.sum(dims) > 0).float()
        return ((1.0 - dice) * present).sum() / present.sum().clamp_min(1)


class CombinedLoss(nn.Module):
    """``base + dice_weight * dice``."""

    def __init__(self, base: nn.Module, dice: nn.Module | None, dice_weight: float) -> None:
        super().__init__()
        self.base = base
        self.dice = dice
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.base(logits, target)
        if self.dice is not None and self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, target)
        return loss


LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")
LOSSES.register("ce")(lambda ignore_index=255, **kw: CrossEntropyLoss(ignore_index))
LOSSES.register("focal")(lambda ignore_index=255, gamma=2.0, **kw: FocalLoss(ignore_index, gamma))
LOSSES.register("dice")(lambda ignore_index=255, **kw: DiceLoss(ignore_index))


def build_loss(name: str, *, dice_weight: float = 1.0, ignore_index: int = 255, gamma: float = 2.0) -> nn.Module:
    """Loss ``name`` from :data:`LOSSES`, plus ``dice_weight`` x Dice unless ``name`` is ``dice`` or the weight is 0."""
    base = LOSSES[name](ignore_index=ignore_index, gamma=gamma)
    if name == "dice" or not dice_weight:
        return base
    return CombinedLoss(base, DiceLoss(ignore_index), float(dice_weight))
