"""Calibrate the instance step on the validation split: the post-processing that maximises object F1.

After training, the kept model predicts every validation tile (at most ``max_tiles``, a seeded
sample); the instance step of :func:`geoseg.instances.label_instances` runs on each tile's
probabilities for every combination of class threshold, core threshold (only with a boundary
class) and minimum object area, and the combination with the highest object F1 at IoU >= 0.5
(one-to-one, same class) wins. Ties go to the combination closest to the uncalibrated defaults.

Honest object scoring on tiles. A validation tile cuts objects at its edges and the mask has ignore
pixels (outside coverage, nodata, stale labels). So:

* truth objects are the 4-connected components of each class in the mask, grown over the boundary
  class (each boundary pixel joins the nearest object), exactly as the instance step grows cores;
* a truth object touching the tile edge or an ignore pixel is *not scored*;
* a predicted object that matches no scored truth and touches the edge or an ignore pixel, or
  overlaps an unscored truth, is not scored either (it may be the visible part of an object cut
  by the tile); every other unmatched prediction is a false positive.

Memory: the validation probabilities of at most ``max_tiles`` tiles as uint8 (C x T x T each).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from geoseg.classes import ClassTable
from geoseg.instances import grow_markers, label_instances
from geoseg.postprocess import DEFAULTS, MIN_OBJECT_PX, derived_min_area_m2

log = logging.getLogger(__name__)

__all__ = [
    "CalibrationGrid",
    "calibrate",
    "mosaic_tiles",
    "tile_object_counts",
    "truth_instances",
    "val_probabilities",
]

_S4 = ndi.generate_binary_structure(2, 1)
MIN_TRUTH_OBJECTS = 10  # fewer scored validation objects than this: no calibration (too noisy)


@dataclass(frozen=True)
class CalibrationGrid:
    """Candidate values; areas are multiples of the derived minimum area (see geoseg.postprocess)."""

    thresholds: tuple[float, ...] = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
    core_boundary_max: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
    area_factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)


@torch.no_grad()
def val_probabilities(
    model: torch.nn.Module, dataset: Any, device: torch.device, *, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """``(probs uint8 (N, C, T, T) = round(p * 254), masks uint8 (N, T, T))`` of every item of ``dataset``."""
    model.eval()
    probs: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        x = torch.stack([it[0] for it in items]).to(device)
        p = torch.softmax(model(x).float(), dim=1).cpu().numpy()
        probs.append(np.rint(p * 254).astype(np.uint8))
        masks.append(np.stack([it[1].numpy() for it in items]).astype(np.uint8))
    if not probs:
        return np.zeros((0, 0, 0, 0), np.uint8), np.zeros((0, 0, 0), np.uint8)
    return np.concatenate(probs), np.concatenate(masks)


def mosaic_tiles(
    probs: np.ndarray, masks: np.ndarray, offsets: np.ndarray, ignore_index: int = 255
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validation tiles stitched back into the areas they came from: ``[(probs uint8 (C, H, W), mask)]``.

    Tiles of one scene whose windows touch or overlap (``offsets``: scene code, row_off, col_off)
    form one mosaic (probabilities averaged where tiles overlap; pixels no tile covers are ignore),
    so objects are cut only where the validation area ends, not at every tile edge. Memory: one
    mosaic (a validation block) at a time on top of the tiles.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n, c, t, _ = probs.shape
    if n == 0:
        return []
    pairs = cKDTree(offsets.astype(float)).query_pairs(r=t, p=np.inf, output_type="ndarray")
    pairs = pairs[offsets[pairs[:, 0], 0] == offsets[pairs[:, 1], 0]]  # same scene only
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    out = []
    for k in np.unique(comp):
        sel = np.flatnonzero(comp == k)
        r0, c0 = offsets[sel, 1].min(), offsets[sel, 2].min()
        h, w = int(offsets[sel, 1].max() - r0 + t), int(offsets[sel, 2].max() - c0 + t)
        acc = np.zeros((c, h, w), np.float32)
        cnt = np.zeros((h, w), np.float32)
        mask = np.full((h, w), ignore_index, np.uint8)
        for i in sel.tolist():
            r, cc = int(offsets[i, 1] - r0), int(offsets[i, 2] - c0)
            acc[:, r : r + t, cc : cc + t] += probs[i]
            cnt[r : r + t, cc : cc + t] += 1
            mask[r : r + t, cc : cc + t] = masks[i]
        out.append((np.rint(acc / np.maximum(cnt, 1)).astype(np.uint8), mask))
    return out


def truth_instances(
    mask: np.ndarray, fg_classes: Sequence[int], boundary_class: int | None, ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels int32 (H, W), class of label i+1)`` of the truth objects in one tile mask."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int32)
    classes: list[int] = []
    for k in fg_classes:
        comp, n = ndi.label(mask == k, structure=_S4)
        if n == 0:
            continue
        if boundary_class is not None:
            comp = grow_markers(comp, (mask == k) | ((mask == boundary_class) & (labels == 0)))
        sel = (comp > 0) & (labels == 0)
        labels[sel] = comp[sel] + len(classes)
        classes.extend([k] * n)
    return labels, np.asarray(classes, np.int16)


def _touching(labels: np.ndarray, bad: np.ndarray, n: int) -> np.ndarray:
    """bool (n + 1,): label ids with a pixel on the tile edge or 4-adjacent to a ``bad`` pixel."""
    near = ndi.binary_dilation(bad, structure=_S4) if bad.any() else bad
    edge = np.zeros_like(bad)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    out = np.zeros(n + 1, bool)
    out[np.unique(labels[(near | edge) & (labels > 0)])] = True
    out[0] = False
    return out


def tile_object_counts(
    pred: np.ndarray,
    pred_classes: np.ndarray,
    truth: np.ndarray,
    truth_classes: np.ndarray,
    ignore: np.ndarray,
    min_px: Sequence[float],
    iou: float = 0.5,
) -> np.ndarray:
    """``(len(min_px), 3)`` int: TP, FP, FN of one tile for each minimum object size (pixels).

    ``pred`` / ``truth``: int32 label images (0 = none); ``*_classes[i]``: class of label ``i + 1``;
    ``ignore``: bool pixels not annotated. Scoring rules: see the module docstring.
    """
    npred, ntruth = len(pred_classes), len(truth_classes)
    out = np.zeros((len(min_px), 3), np.int64)
    psize = np.bincount(pred.ravel(), minlength=npred + 1)
    tsize = np.bincount(truth.ravel(), minlength=ntruth + 1)
    both = (pred > 0) & (truth > 0)
    key = pred[both].astype(np.int64) * (ntruth + 1) + truth[both]
    pairs, inter = np.unique(key, return_counts=True)
    pp, tt = pairs // (ntruth + 1), pairs % (ntruth + 1)
    pair_iou = inter / (psize[pp] + tsize[tt] - inter)
    match = (pair_iou >= iou) & (pred_classes[pp - 1] == truth_classes[tt - 1]) if len(pairs) else np.zeros(0, bool)
    t_cut = _touching(truth, ignore, ntruth)
    p_cut = _touching(pred, ignore, npred)
    p_over_cut = np.zeros(npred + 1, bool)
    p_over_cut[pp[t_cut[tt]]] = True
    for j, m in enumerate(min_px):
        p_keep = psize >= m
        p_keep[0] = False
        ok = match & p_keep[pp] & ~t_cut[tt]
        matched_p = np.zeros(npred + 1, bool)
        matched_p[pp[ok]] = True
        matched_t = np.zeros(ntruth + 1, bool)
        matched_t[tt[ok]] = True
        scored_t = ~t_cut
        scored_t[0] = False
        unscored_p = (p_cut | p_over_cut) & ~matched_p
        tp = int(matched_p.sum())
        fp = int((p_keep & ~matched_p & ~unscored_p).sum())
        fn = int((scored_t & ~matched_t).sum())
        out[j] = (tp, fp, fn)
    return out


def calibrate(
    probs: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    *,
    model_cfg: dict[str, Any],
    grid: CalibrationGrid | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The ``postprocess`` block for ``config.json``: chosen params, their scores, the default's score.

    ``probs``: uint8 (N, C, T, T) as from :func:`val_probabilities` (or a list of (C, H, W) mosaics
    from :func:`mosaic_tiles`); ``masks``: (N, T, T) (or the mosaics' masks). Returns
    ``{"calibrated": False, "reason": ...}`` when the validation split has too few scored objects.
    """
    grid = grid or CalibrationGrid()
    bnd = model_cfg.get("boundary_class")
    ignore_index = int(model_cfg.get("ignore_index", 255))
    fg = list(ClassTable.from_model_config(model_cfg).foreground)
    res = model_cfg.get("resolution_m")
    px_m2 = float(res) ** 2 if res else 0.0
    base_area, area_source = derived_min_area_m2(model_cfg.get("objects"), res, fg)
    floor_m2 = MIN_OBJECT_PX * px_m2
    areas = sorted({max(floor_m2, f * base_area) for f in grid.area_factors})
    min_px = [a / px_m2 if px_m2 > 0 else MIN_OBJECT_PX for a in areas]
    cores = grid.core_boundary_max if bnd is not None else (DEFAULTS["core_boundary_max"],)
    combos = list(itertools.product(grid.thresholds, cores))
    totals = np.zeros((len(combos), len(areas), 3), np.int64)
    n_scored = 0
    from geoseg.progress import tqdm

    for i in tqdm(range(len(probs)), desc="calibrate", unit="tile", disable=not progress, leave=False):
        mask = masks[i]
        ignore = mask == ignore_index
        truth, tcls = truth_instances(mask, fg, bnd, ignore_index)
        n_scored += int((~_touching(truth, ignore, len(tcls))[1:]).sum())
        valid = np.ones(mask.shape, bool)
        for c, (thr, core) in enumerate(combos):
            lab = label_instances(
                probs[i], valid, fg_classes=fg, boundary_class=bnd, threshold=thr * 254 - 1e-6,
                core_boundary_max=core * 254,
            )  # fmt: skip
            totals[c] += tile_object_counts(lab.region, lab.classes, truth, tcls, ignore, min_px)
    if n_scored < MIN_TRUTH_OBJECTS:
        return {
            "calibrated": False,
            "reason": f"{n_scored} scored validation objects (need {MIN_TRUTH_OBJECTS}); defaults used",
            "scored_truth_objects": n_scored,
        }
    tp, fp, fn = totals[..., 0], totals[..., 1], totals[..., 2]
    prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    rec = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    dflt = (DEFAULTS["threshold"], DEFAULTS["core_boundary_max"] if bnd is not None else cores[0])
    default_c = combos.index(dflt) if dflt in combos else 0
    default_a = int(np.argmin([abs(a - base_area) for a in areas]))

    def distance(c: int, a: int) -> float:  # tie-break: closest to the defaults
        thr, core = combos[c]
        area_step = abs(math.log((areas[a] + 1e-9) / (areas[default_a] + 1e-9)))
        return abs(thr - dflt[0]) + abs(core - dflt[1]) + area_step / 10

    best = max(
        ((c, a) for c in range(len(combos)) for a in range(len(areas))),
        key=lambda ca: (round(float(f1[ca]), 6), -distance(*ca)),
    )
    c, a = best

    def scores(ci: int, ai: int) -> dict[str, Any]:
        return {"f1": float(f1[ci, ai]), "precision": float(prec[ci, ai]), "recall": float(rec[ci, ai]),
                "tp": int(tp[ci, ai]), "fp": int(fp[ci, ai]), "fn": int(fn[ci, ai])}  # fmt: skip

    return {
        "calibrated": True,
        "params": {
            "threshold": combos[c][0],
            "core_boundary_max": combos[c][1],
            "min_area_m2": areas[a],
            "fill_holes_m2": areas[a],
        },
        "scores": scores(c, a),
        "default_scores": scores(default_c, default_a),
        "objective": "object F1 at IoU >= 0.5 on validation tiles (objects cut by tile edges or ignore not scored)",
        "scored_truth_objects": n_scored,
        "tiles": len(probs),
        "searched": {
            "thresholds": list(grid.thresholds),
            "core_boundary_max": list(cores),
            "min_area_m2": areas,
            "min_area_base_m2": base_area,
            "min_area_base_source": area_source,
        },
    }
