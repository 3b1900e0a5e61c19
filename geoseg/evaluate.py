"""Pixel and object metrics of a prediction against truth polygons, plus a per-tile error map.

* Pixel metrics per class (IoU, precision, recall, F1) from a confusion matrix accumulated window
  by window: truth polygons are rasterized onto the prediction grid one window at a time
  (pixel-centre rule), so memory is bounded by the window. Pixels outside the AOI or where the
  prediction is nodata are ignored. Predicted boundary-class pixels (the inner rim of objects,
  see ``geoseg.tile.labels``) count as the nearest foreground class.
* Object metrics with one-to-one matching (maximum total IoU, Hungarian
  ``scipy.optimize.linear_sum_assignment`` per connected group of candidate pairs found with an
  STRtree), overall, per class and per size bin (true m² of the truth / predicted object), at the
  configured IoU (default 0.5) and at each of ``iou_thresholds`` (default 0.25, 0.5, 0.75).
* Merges (a prediction covering >= ``min_cover`` of the area of each of two or more truths) and
  splits (a truth covered >= ``min_cover`` by each of two or more predictions), default 10 %.
* Sweep (optional): the class raster and the instances re-derived from ``probabilities.tif`` at a
  range of probability thresholds, with pixel IoU and object F1 at each, and a plot.
* Error map: a GeoPackage of tiles (``tile_px`` pixels) with TP/FP/FN foreground pixel counts,
  IoU and error fraction, styled with a graduated colour so QGIS shows where the model is wrong.

The pure functions (:func:`object_scores`, :func:`merges_splits`, :func:`overlaps`) take numpy
arrays of shapely geometries in one projected CRS and hold memory to O(objects + overlapping
pairs): no all-pairs matrices.

Memory: the pixel metrics and the error map are accumulated window by window (the error map keeps
one small record per ``tile_px`` tile: O(scene area / tile_px²)). The object metrics hold all truth
and all predicted polygons of the evaluated region at once (matching needs both sides of every
candidate pair): O(objects), inherent in a global one-to-one matching; evaluate large scenes by
region if that is too much.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
import shapely
from rasterio.windows import Window
from scipy import ndimage as ndi

from geoseg.classes import ClassTable
from geoseg.config import StageConfig
from geoseg.errors import (
    ConfigError,
    EmptyResultError,
    InputError,
    InputNotFoundError,
    LabelsError,
    first_line,
)
from geoseg.grid import Grid
from geoseg.io.output import atomic_path
from geoseg.io.rasters import open_raster, probability_scale, read_probabilities
from geoseg.metrics import confusion_matrix, f1, foreground_scores, metrics_from_confusion, ratio
from geoseg.polygonize import label_polygons
from geoseg.progress import tqdm

log = logging.getLogger(__name__)

__all__ = [
    "EvaluateConfig",
    "Overlaps",
    "classes_at_threshold",
    "confusion_matrix",
    "format_sweep_table",
    "iou_key",
    "match_objects",
    "merge_split_masks",
    "merges_splits",
    "metrics_from_confusion",
    "object_metrics",
    "object_scores",
    "overlaps",
    "pixel_metrics",
    "plot_sweep",
    "run",
]

IGNORE = 255
DEFAULT_BINS = (50.0, 200.0)
DEFAULT_IOUS = (0.25, 0.5, 0.75)
DEFAULT_MIN_COVER = 0.1
ERROR_RANGES = (
    (0.0, 0.02, "#1a9641", "< 2 %"),
    (0.02, 0.05, "#a6d96a", "2-5 %"),
    (0.05, 0.1, "#ffffbf", "5-10 %"),
    (0.1, 0.2, "#fdae61", "10-20 %"),
    (0.2, 1.0, "#d7191c", ">= 20 %"),
)


# ---------------------------------------------------------------------------------------------
# pure metrics
# ---------------------------------------------------------------------------------------------
def pixel_metrics(pred_classes: np.ndarray, truth: np.ndarray, num_classes: int, ignore: int = IGNORE) -> dict:
    """Pixel metrics of two class rasters (same shape): ``{"classes": {id: {iou, precision, recall,
    f1, tp, fp, fn}}, "accuracy", "pixels", "confusion"}``; ``ignore`` pixels are skipped."""
    cm = confusion_matrix(pred_classes, truth, num_classes, ignore)
    res = metrics_from_confusion(cm)
    res["confusion"] = cm.tolist()
    return res


def _size_bins(bins: Sequence[float]) -> list[tuple[str, float, float]]:
    edges = [0.0, *sorted(float(b) for b in bins), math.inf]
    names = ["small", "medium", "large"] if len(edges) == 4 else None
    out = []
    for i in range(len(edges) - 1):
        lo, hi = edges[i], edges[i + 1]
        out.append((names[i] if names else f"{lo:g}-{hi:g}", lo, hi))
    return out


def iou_key(threshold: float) -> str:
    """JSON key of an IoU threshold: ``0.25 -> "0.25"``, ``0.5 -> "0.5"`` (``format(t, "g")``)."""
    return f"{float(threshold):g}"


@dataclass(frozen=True)
class Overlaps:
    """Overlapping (prediction, truth) pairs of two geometry arrays.

    ``pred[i]``, ``truth[i]``: indexes of pair ``i`` (each pair once; only pairs whose intersection
    has positive area, and of the same class when classes were given); ``inter[i]``: its
    intersection area; ``pred_area`` / ``truth_area``: area of every geometry. Areas in CRS units².
    """

    pred: np.ndarray
    truth: np.ndarray
    inter: np.ndarray
    pred_area: np.ndarray
    truth_area: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        union = self.pred_area[self.pred] + self.truth_area[self.truth] - self.inter
        return np.where(union > 0, self.inter / np.where(union > 0, union, 1.0), 0.0)


def _geoms(a: Any) -> np.ndarray:
    arr = np.asarray(a, dtype=object).ravel()
    if len(arr):
        bad = ~shapely.is_valid(arr) & ~shapely.is_missing(arr)
        if bad.any():
            arr = arr.copy()
            arr[bad] = shapely.make_valid(arr[bad])
    return arr


def overlaps(
    pred_geoms: Any,
    truth_geoms: Any,
    *,
    pred_classes: Any = None,
    truth_classes: Any = None,
    chunk: int = 50_000,
) -> Overlaps:
    """Candidate pairs from an STRtree on the truths, intersection areas vectorised in ``chunk``-pair
    batches. Memory O(n_pred + n_truth + number of intersecting pairs), never all pairs.

    ``pred_geoms`` / ``truth_geoms``: array-likes of shapely geometries in one CRS (None/empty
    allowed: they overlap nothing; invalid ones are made valid). Optional ``*_classes``: one label
    per geometry; only same-label pairs are kept.
    """
    pg, tg = _geoms(pred_geoms), _geoms(truth_geoms)
    pa = np.nan_to_num(shapely.area(pg)) if len(pg) else np.zeros(0)
    ta = np.nan_to_num(shapely.area(tg)) if len(tg) else np.zeros(0)
    empty = np.zeros(0, np.int64)
    if len(pg) == 0 or len(tg) == 0:
        return Overlaps(empty, empty, np.zeros(0), pa, ta)
    pi, ti = shapely.STRtree(tg).query(pg, predicate="intersects")
    if pred_classes is not None and truth_classes is not None and len(pi):
        pc, tc = np.asarray(pred_classes), np.asarray(truth_classes)
        same = pc[pi] == tc[ti]
        pi, ti = pi[same], ti[same]
    inter = np.zeros(len(pi))
    for s in range(0, len(pi), chunk):
        sl = slice(s, s + chunk)
        inter[sl] = shapely.area(shapely.intersection(pg[pi[sl]], tg[ti[sl]]))
    keep = inter > 0
    return Overlaps(pi[keep].astype(np.int64), ti[keep].astype(np.int64), inter[keep], pa, ta)


def _assign(ov: Overlaps, iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matches ``(pred index, truth index, IoU)`` with IoU >= ``iou``, maximising total
    IoU (Hungarian per connected group of candidate pairs, so each problem stays small)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    none = np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    ious = ov.iou
    ok = ious >= iou - 1e-12
    pi, ti, ious = ov.pred[ok], ov.truth[ok], ious[ok]
    if len(pi) == 0:
        return none
    n_p, n_t = len(ov.pred_area), len(ov.truth_area)
    graph = coo_matrix((np.ones(len(pi)), (pi, n_p + ti)), shape=(n_p + n_t, n_p + n_t))
    _, comp = connected_components(graph, directed=False)
    pair_comp = comp[pi]
    single = np.bincount(pair_comp, minlength=comp.max() + 1)[pair_comp] == 1
    mp, mt, mi = [pi[single]], [ti[single]], [ious[single]]
    rest = ~single
    order = np.argsort(pair_comp[rest], kind="stable")
    rp, rt, rv, rc = pi[rest][order], ti[rest][order], ious[rest][order], pair_comp[rest][order]
    starts = np.flatnonzero(np.r_[True, rc[1:] != rc[:-1]]) if len(rc) else np.zeros(0, int)
    for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(rc)][: len(starts)], strict=True):
        ps, ts, vs = rp[a:b], rt[a:b], rv[a:b]
        up, ip = np.unique(ps, return_inverse=True)
        ut, it = np.unique(ts, return_inverse=True)
        m = np.zeros((len(up), len(ut)))
        m[ip, it] = vs
        rows, cols = linear_sum_assignment(m, maximize=True)
        hit = m[rows, cols] > 0
        mp.append(up[rows[hit]])
        mt.append(ut[cols[hit]])
        mi.append(m[rows[hit], cols[hit]])
    return np.concatenate(mp).astype(int), np.concatenate(mt).astype(int), np.concatenate(mi).astype(float)


def match_objects(ov: Overlaps, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one-to-one matching of the object metrics: ``(pred index, truth index, IoU)`` of the pairs of
    :func:`overlaps` matched at IoU >= ``iou`` (inclusive), maximising the total IoU."""
    return _assign(ov, iou)


def _prf(n_pred: int, n_truth: int, tp_pred: int, tp_truth: int) -> dict[str, Any]:
    p, r = ratio(tp_pred, n_pred), ratio(tp_truth, n_truth)
    return {"n_pred": n_pred, "n_truth": n_truth, "tp_pred": tp_pred, "tp_truth": tp_truth,
            "fp": n_pred - tp_pred, "fn": n_truth - tp_truth, "precision": p, "recall": r, "f1": f1(p, r)}  # fmt: skip


def _scores_at(
    ov: Overlaps,
    iou: float,
    pcls: np.ndarray | None,
    tcls: np.ndarray | None,
    pa_m2: np.ndarray | None = None,
    ta_m2: np.ndarray | None = None,
    bins: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The object-metrics block at one IoU threshold (see :func:`object_metrics`)."""
    mp, mt, mi = _assign(ov, iou)
    n_p, n_t = len(ov.pred_area), len(ov.truth_area)
    p_hit, t_hit = np.zeros(n_p, bool), np.zeros(n_t, bool)
    p_hit[mp] = True
    t_hit[mt] = True
    res: dict[str, Any] = {"iou_threshold": float(iou)}
    res.update(_prf(n_p, n_t, int(p_hit.sum()), int(t_hit.sum())))
    res["tp"] = len(mp)
    res["mean_matched_iou"] = float(mi.mean()) if len(mi) else None
    res.update(_breakdown(
        lambda ps, ts: _prf(int(ps.sum()), int(ts.sum()), int((p_hit & ps).sum()), int((t_hit & ts).sum())),
        pcls, tcls, pa_m2, ta_m2, bins,
    ))  # fmt: skip
    return res


def _breakdown(
    counts: Callable[[np.ndarray, np.ndarray], dict[str, Any]],
    pcls: np.ndarray | None,
    tcls: np.ndarray | None,
    pa_m2: np.ndarray | None,
    ta_m2: np.ndarray | None,
    bins: Sequence[float] | None,
) -> dict[str, Any]:
    """``by_size`` (when areas and bins are given) and ``by_class`` (when classes are given): ``counts``
    applied to the (prediction mask, truth mask) of each size bin and each class."""
    out: dict[str, Any] = {}
    if bins is not None and pa_m2 is not None and ta_m2 is not None:
        out["by_size"] = {
            name: {"range_m2": [lo, None if math.isinf(hi) else hi],
                   **counts((pa_m2 >= lo) & (pa_m2 < hi), (ta_m2 >= lo) & (ta_m2 < hi))}
            for name, lo, hi in _size_bins(bins)
        }  # fmt: skip
    if pcls is not None and tcls is not None:
        out["by_class"] = {
            str(c): counts(pcls == c, tcls == c) for c in sorted(set(pcls.tolist()) | set(tcls.tolist()), key=str)
        }
    return out


def object_scores(
    pred_geoms: Any,
    truth_geoms: Any,
    iou_thresholds: Sequence[float] = DEFAULT_IOUS,
    *,
    pred_classes: Any = None,
    truth_classes: Any = None,
) -> dict[str, dict[str, Any]]:
    """Object precision/recall/F1 at each IoU threshold, one-to-one matching (max total IoU).

    Inputs: array-likes of shapely (multi)polygons in one projected CRS (IoU is a ratio of planar
    areas); optional ``*_classes`` (one label per geometry) restrict matches to the same class and
    add ``by_class``. A pair matches when IoU >= threshold (inclusive). Returns
    ``{iou_key(t): {"iou_threshold", "n_pred", "n_truth", "tp", "tp_pred", "tp_truth", "fp", "fn",
    "precision", "recall", "f1", "mean_matched_iou"[, "by_class": {label: {n_pred, n_truth,
    tp_pred, tp_truth, fp, fn, precision, recall, f1}}]}}`` with keys ``"0.25"``, ``"0.5"``,
    ``"0.75"`` by default; precision/recall/F1 are None where undefined (no predictions / no
    truths). Pairs and areas are computed once for all thresholds (see :func:`overlaps`: memory
    O(n + intersecting pairs)).
    """
    ov = overlaps(pred_geoms, truth_geoms, pred_classes=pred_classes, truth_classes=truth_classes)
    pc, tc = _classes_or_none(pred_classes, truth_classes)
    return {iou_key(t): _scores_at(ov, t, pc, tc) for t in iou_thresholds}


def _classes_or_none(pred_classes: Any, truth_classes: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    if pred_classes is None or truth_classes is None:
        return None, None
    return np.asarray(pred_classes), np.asarray(truth_classes)


def merge_split_masks(ov: Overlaps, min_cover: float = 0.1) -> dict[str, np.ndarray]:
    """Boolean masks of merged / split objects from the pairs of :func:`overlaps`.

    A pair *covers* its truth when the intersection is at least ``min_cover`` of the truth's area.
    ``merged_pred``: predictions covering >= 2 truths; ``merged_truth``: the truths they cover;
    ``split_truth``: truths covered by >= 2 predictions; ``split_pred``: those predictions.
    """
    n_p, n_t = len(ov.pred_area), len(ov.truth_area)
    ta = ov.truth_area[ov.truth]
    cover = np.where(ta > 0, ov.inter / np.where(ta > 0, ta, 1.0), 0.0)
    sel = cover >= min_cover - 1e-12
    pi, ti = ov.pred[sel], ov.truth[sel]
    merged_pred = np.bincount(pi, minlength=n_p) >= 2
    split_truth = np.bincount(ti, minlength=n_t) >= 2
    merged_truth, split_pred = np.zeros(n_t, bool), np.zeros(n_p, bool)
    merged_truth[ti[merged_pred[pi]]] = True
    split_pred[pi[split_truth[ti]]] = True
    return {"merged_pred": merged_pred, "merged_truth": merged_truth, "split_truth": split_truth,
            "split_pred": split_pred}  # fmt: skip


def _ms_counts(m: dict[str, np.ndarray], ps: np.ndarray, ts: np.ndarray) -> dict[str, int]:
    return {"n_pred": int(ps.sum()), "n_truth": int(ts.sum()), "merges": int((m["merged_pred"] & ps).sum()),
            "merged_truths": int((m["merged_truth"] & ts).sum()), "splits": int((m["split_truth"] & ts).sum()),
            "split_preds": int((m["split_pred"] & ps).sum())}  # fmt: skip


def _merges_splits_from(
    ov: Overlaps,
    min_cover: float,
    pcls: np.ndarray | None,
    tcls: np.ndarray | None,
    pa_m2: np.ndarray | None = None,
    ta_m2: np.ndarray | None = None,
    bins: Sequence[float] | None = None,
) -> dict[str, Any]:
    m = merge_split_masks(ov, min_cover)
    n_p, n_t = len(ov.pred_area), len(ov.truth_area)
    res: dict[str, Any] = {"min_cover": float(min_cover), **_ms_counts(m, np.ones(n_p, bool), np.ones(n_t, bool))}
    res.update(_breakdown(lambda ps, ts: _ms_counts(m, ps, ts), pcls, tcls, pa_m2, ta_m2, bins))
    return res


def merges_splits(
    pred_geoms: Any,
    truth_geoms: Any,
    min_cover: float = 0.1,
    *,
    pred_classes: Any = None,
    truth_classes: Any = None,
) -> dict[str, Any]:
    """Merged and split objects.

    A prediction *covers* a truth when their intersection is at least ``min_cover`` (a fraction,
    inclusive) of the truth's area. A **merge** is a prediction covering two or more truths; a
    **split** is a truth covered by two or more predictions. Inputs as :func:`object_scores`
    (same-class pairs only when classes are given). Returns ``{"min_cover", "n_pred", "n_truth",
    "merges" (merged predictions), "merged_truths" (truths covered by a merge), "splits" (split
    truths), "split_preds" (predictions covering a split truth)[, "by_class": {label: same counts
    without min_cover}]}``. Memory O(n + intersecting pairs).
    """
    ov = overlaps(pred_geoms, truth_geoms, pred_classes=pred_classes, truth_classes=truth_classes)
    pc, tc = _classes_or_none(pred_classes, truth_classes)
    return _merges_splits_from(ov, min_cover, pc, tc)


def object_metrics(
    pred_gdf: gpd.GeoDataFrame,
    truth_gdf: gpd.GeoDataFrame,
    iou: float = 0.5,
    bins: Sequence[float] = DEFAULT_BINS,
    *,
    class_col: str | None = "class",
    iou_thresholds: Sequence[float] = (),
    min_cover: float | None = None,
) -> dict[str, Any]:
    """Object precision/recall/F1 at ``IoU >= iou`` with one-to-one matching (max total IoU).

    Both frames in the same CRS (truth is reprojected if not). With ``class_col`` in both frames
    only same-class pairs match and ``by_class`` is reported. ``bins`` are size-bin edges in true
    m² (``area_m2`` column if present, else geodesic area): truth objects are binned by their
    area for recall, predicted objects by theirs for precision. With ``iou_thresholds``,
    ``by_iou`` holds the same block (with ``by_size``/``by_class``) at each threshold, keyed by
    :func:`iou_key`; with ``min_cover``, ``merges_splits`` holds :func:`merges_splits` counts
    overall, ``by_size`` (predictions binned by their area, truths by theirs) and ``by_class``.
    """
    from geoseg.grid import geodesic_areas_m2

    if truth_gdf.crs is not None and pred_gdf.crs is not None and not truth_gdf.crs.equals(pred_gdf.crs):
        truth_gdf = truth_gdf.to_crs(pred_gdf.crs)
    pg = np.asarray(pred_gdf.geometry.values, dtype=object)
    tg = np.asarray(truth_gdf.geometry.values, dtype=object)
    use_cls = bool(class_col) and class_col in pred_gdf.columns and class_col in truth_gdf.columns
    pcls = pred_gdf[class_col].astype(str).to_numpy() if use_cls else None
    tcls = truth_gdf[class_col].astype(str).to_numpy() if use_cls else None
    ov = overlaps(pg, tg, pred_classes=pcls, truth_classes=tcls)
    crs = pred_gdf.crs or truth_gdf.crs

    def _areas(gdf: gpd.GeoDataFrame, geoms: np.ndarray) -> np.ndarray:
        if "area_m2" in gdf.columns:
            return gdf["area_m2"].to_numpy(dtype=float)
        return geodesic_areas_m2(geoms, crs) if len(geoms) else np.zeros(0)

    pa, ta = _areas(pred_gdf, pg), _areas(truth_gdf, tg)
    res = _scores_at(ov, iou, pcls, tcls, pa, ta, bins)
    if iou_thresholds:
        res["by_iou"] = {iou_key(t): _scores_at(ov, t, pcls, tcls, pa, ta, bins) for t in iou_thresholds}
    if min_cover is not None:
        res["merges_splits"] = _merges_splits_from(ov, min_cover, pcls, tcls, pa, ta, bins)
    return res


# ---------------------------------------------------------------------------------------------
# window-wise pixel evaluation
# ---------------------------------------------------------------------------------------------
def boundary_to_nearest(pred: np.ndarray, boundary_class: int | None, fg: Sequence[int]) -> np.ndarray:
    """``pred`` with boundary-class pixels set to the class of the nearest foreground pixel
    (background if the window has none). Other values unchanged."""
    if boundary_class is None:
        return pred
    bmask = pred == boundary_class
    if not bmask.any():
        return pred
    out = pred.copy()
    fgm = np.isin(pred, list(fg))
    if not fgm.any():
        out[bmask] = 0
        return out
    _, (ri, ci) = ndi.distance_transform_edt(~fgm, return_indices=True)
    out[bmask] = pred[ri[bmask], ci[bmask]]
    return out


def classes_at_threshold(probs: np.ndarray, threshold: float, fg: Sequence[int]) -> np.ndarray:
    """(H, W) class ids from (C, H, W) probabilities: the argmax, except that a foreground argmax
    whose probability is below ``threshold`` (same unit as ``probs``) becomes background 0 — the
    object-pixel rule of :func:`geoseg.instances.label_instances`."""
    am = np.argmax(probs, axis=0)
    pk = np.take_along_axis(probs, am[None], axis=0)[0]
    return np.where(np.isin(am, list(fg)) & (pk < threshold), 0, am).astype(np.uint8)


@dataclass
class _Acc:
    cm: np.ndarray
    tiles: list[dict[str, Any]] = field(default_factory=list)
    sweep_cm: np.ndarray | None = None  # (T, K, K): confusion of the class raster re-derived at each threshold


def _eval_windows(
    ds: rasterio.DatasetReader,
    truth: gpd.GeoDataFrame,
    region: Any,
    *,
    num_classes: int,
    boundary_class: int | None,
    fg: list[int],
    tile_px: int,
    probs: rasterio.DatasetReader | None = None,
    sweep: Sequence[float] = (),
) -> _Acc:
    """Confusion matrix and per-tile counts over the prediction grid, window by window.

    With ``probs`` (the prediction's probabilities.tif, same grid) and ``sweep`` thresholds
    (probabilities 0..1), also the confusion of the class raster re-derived at each threshold
    (:func:`classes_at_threshold`), from the same windows: memory O(C x window).
    """
    grid = Grid.from_dataset(ds)
    k = max(1, 1024 // tile_px)
    bs = tile_px * k
    tgeoms = np.asarray(truth.geometry.values, dtype=object)
    tvals = truth["_cid"].to_numpy(dtype=np.int64)
    tree = shapely.STRtree(tgeoms) if len(tgeoms) else None
    shapely.prepare(region)
    acc = _Acc(np.zeros((num_classes, num_classes), np.int64))
    if probs is not None and len(sweep):
        acc.sweep_cm = np.zeros((len(sweep), num_classes, num_classes), np.int64)
        scale = probability_scale(probs)
        sweep_raw = [t / scale - 1e-6 for t in sweep]  # the rule of geoseg.vectorize (geoseg.instances)
    wins = []
    for r0 in range(0, grid.height, bs):
        for c0 in range(0, grid.width, bs):
            w = Window(c0, r0, min(bs, grid.width - c0), min(bs, grid.height - r0))
            if region.intersects(shapely.box(*grid.window_bounds(w))):
                wins.append(w)
    nod = ds.nodata if ds.nodata is not None else IGNORE
    for w in tqdm(wins, desc="evaluate", unit="win", disable=len(wins) < 4, leave=False):
        h, wd = int(w.height), int(w.width)
        tr = rasterio.windows.transform(w, grid.transform)
        pred = ds.read(1, window=w)
        valid = (pred != nod) & (ds.read_masks(1, window=w) > 0)
        wbox = shapely.box(*grid.window_bounds(w))
        if not region.contains(wbox):
            inside = rasterio.features.geometry_mask([region], out_shape=(h, wd), transform=tr, invert=True)
            valid &= inside
        pred = boundary_to_nearest(pred, boundary_class, fg)
        tru = np.zeros((h, wd), np.uint8)
        if tree is not None:
            idx = tree.query(wbox, predicate="intersects")
            if len(idx):
                idx = np.sort(idx)  # file order: later features win where truth overlaps
                rasterio.features.rasterize(zip(tgeoms[idx], tvals[idx].tolist(), strict=True), out=tru, transform=tr)
        pred = np.where(valid, pred, IGNORE).astype(np.uint8)
        tru = np.where(valid, tru, IGNORE).astype(np.uint8)
        acc.cm += confusion_matrix(pred, tru, num_classes, IGNORE)
        if acc.sweep_cm is not None:
            pdata, pvalid = read_probabilities(probs, w)
            keep = valid & pvalid
            for j, t in enumerate(sweep_raw):
                ct = boundary_to_nearest(classes_at_threshold(pdata, t, fg), boundary_class, fg)
                acc.sweep_cm[j] += confusion_matrix(np.where(keep, ct, IGNORE), tru, num_classes, IGNORE)
            del pdata, pvalid
        # per-tile foreground counts
        tfg = valid & np.isin(tru, fg)
        pfg = valid & np.isin(pred, fg)
        same = pred == tru
        tp, fp, fn = tfg & same, pfg & ~same, tfg & ~same
        for tr0 in range(0, h, tile_px):
            for tc0 in range(0, wd, tile_px):
                sl = (slice(tr0, tr0 + tile_px), slice(tc0, tc0 + tile_px))
                npx = int(valid[sl].sum())
                if npx == 0:
                    continue
                a, b, c = int(tp[sl].sum()), int(fp[sl].sum()), int(fn[sl].sum())
                tw = Window(int(w.col_off) + tc0, int(w.row_off) + tr0, valid[sl].shape[1], valid[sl].shape[0])
                acc.tiles.append({
                    "row_off": int(tw.row_off), "col_off": int(tw.col_off), "pixels": npx,
                    "truth_px": int(tfg[sl].sum()), "pred_px": int(pfg[sl].sum()), "tp": a, "fp": b, "fn": c,
                    "iou": (a / (a + b + c)) if (a + b + c) else float("nan"), "error_fraction": (b + c) / npx,
                    "geometry": shapely.box(*grid.window_bounds(tw)),
                })  # fmt: skip
    return acc


def valid_area(ds: rasterio.DatasetReader, block: int = 1024) -> Any:
    """Polygon (prediction CRS) of the pixels that are not nodata, built block by block."""
    nod = ds.nodata if ds.nodata is not None else IGNORE
    parts = []
    for r0 in range(0, ds.height, block):
        for c0 in range(0, ds.width, block):
            w = Window(c0, r0, min(block, ds.width - c0), min(block, ds.height - r0))
            m = ((ds.read(1, window=w) != nod) & (ds.read_masks(1, window=w) > 0)).astype(np.uint8)
            if not m.any():
                continue
            if m.all():
                parts.append(shapely.box(c0, r0, c0 + w.width, r0 + w.height))
                continue
            parts.extend(label_polygons(m, c0, r0)[1].tolist())
    if not parts:
        return shapely.Polygon()
    u = shapely.union_all(parts)
    t = ds.transform
    return shapely.affinity.affine_transform(u, [t.a, t.b, t.d, t.e, t.c, t.f])


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluateConfig(StageConfig):
    """Options of ``geoseg evaluate``.

    ``iou``: the headline object match threshold (``object``); ``iou_thresholds``: also reported
    under ``object.by_iou``; ``min_cover``: merge/split overlap as a fraction of the truth's area;
    ``sweep``: re-derive classes and instances from ``probabilities.tif`` at ``sweep_thresholds``
    (default :func:`default_sweep_thresholds`) with ``sweep_min_area`` m² (default: the
    prediction's ``run.json``, else 0).
    """

    predicted: str
    truth: str
    aoi: str | None = None
    out: str | None = None
    error_map: str | None = None
    class_field: str | None = None
    instances: str | None = None
    iou: float = 0.5
    size_bins: tuple[float, ...] = DEFAULT_BINS
    tile_px: int = 256
    model: str | None = None
    iou_thresholds: tuple[float, ...] = DEFAULT_IOUS
    min_cover: float = DEFAULT_MIN_COVER
    sweep: bool = False
    sweep_thresholds: tuple[float, ...] | None = None
    sweep_min_area: float | None = None

    def validate(self) -> None:
        """Range checks of the options (ConfigError naming the option)."""
        if not 0 < self.iou <= 1:
            raise ConfigError(f"--iou {self.iou}: must be in (0, 1]")
        if self.tile_px < 8:
            raise ConfigError(f"--tile-px {self.tile_px}: use at least 8")
        bad = [t for t in self.iou_thresholds if not 0 < t <= 1]
        if bad or not self.iou_thresholds:
            raise ConfigError(f"--iou-thresholds {bad or '(none)'}: give one or more values in (0, 1]")
        if not 0 < self.min_cover <= 1:
            raise ConfigError(f"--min-cover {self.min_cover}: must be in (0, 1]")
        if self.sweep_thresholds is not None:
            bad = [t for t in self.sweep_thresholds if not 0 < t < 1]
            if bad or not self.sweep_thresholds:
                raise ConfigError(f"--sweep-thresholds {bad or '(none)'}: give one or more values in (0, 1)")
        if self.sweep_min_area is not None and self.sweep_min_area < 0:
            raise ConfigError(f"--sweep-min-area {self.sweep_min_area}: must be >= 0 m²")
        bad = [b for b in self.size_bins if not b > 0]
        if bad:
            raise ConfigError(f"--size-bins {bad}: object size-bin edges are areas > 0 m²")


def default_sweep_thresholds() -> tuple[float, ...]:
    """0.30, 0.35, ..., 0.80."""
    return tuple(round(0.3 + 0.05 * i, 2) for i in range(11))


def _resolve(cfg: EvaluateConfig) -> tuple[Path, Path | None]:
    p = Path(cfg.predicted)
    if not p.exists():
        raise InputNotFoundError(f"{p}: prediction not found (give a prediction directory or its classes.tif)")
    if p.is_dir():
        classes_tif = p / "classes.tif"
        inst = p / "instances.gpkg"
        if not classes_tif.exists():
            raise InputNotFoundError(f"{p}: no classes.tif in this directory; is it a `geoseg predict` output?")
        return classes_tif, Path(cfg.instances) if cfg.instances else (inst if inst.exists() else None)
    return p, Path(cfg.instances) if cfg.instances else None


def _truth_classes(
    truth: gpd.GeoDataFrame, field_name: str | None, classes: list[dict], fg: list[int], path: str
) -> np.ndarray:
    by_name = {str(c["name"]).lower(): int(c["id"]) for c in classes}
    fg_names = [c["name"] for c in classes if int(c["id"]) in fg]
    use = field_name or ("class" if "class" in truth.columns else None)
    if field_name and field_name not in truth.columns:
        cols = ", ".join(c for c in truth.columns if c != truth.geometry.name) or "(none)"
        raise LabelsError(f"{path}: truth has no field {field_name!r}; fields: {cols}")
    if use is None:
        if len(fg) != 1:
            raise LabelsError(
                f"{path}: truth has no class field and the prediction has {len(fg)} classes "
                f"({', '.join(fg_names)}); pass --class-field"
            )
        return np.full(len(truth), fg[0], np.int64)
    vals = truth[use]
    out = np.zeros(len(truth), np.int64)
    bad = set()
    for i, v in enumerate(vals.tolist()):
        key = str(v).lower()
        if key in by_name and by_name[key] in fg:
            out[i] = by_name[key]
        elif isinstance(v, (int, np.integer)) and int(v) in fg:
            out[i] = int(v)
        elif len(fg) == 1 and field_name is None:
            out[i] = fg[0]  # default field with an unrelated meaning: single-class truth
        else:
            bad.add(str(v))
    if bad:
        raise LabelsError(
            f"{path}: truth classes {', '.join(sorted(bad))} not among the predicted classes "
            f"{', '.join(fg_names)}; rename them or pass --class-field"
        )
    return out


def _write_error_map(tiles: list[dict[str, Any]], crs: Any, path: Path) -> Path:
    from geoseg.io.vectors import GPKG_OPTIONS
    from geoseg.qgis import graduated_qml, style_gpkg

    cols = ["row_off", "col_off", "pixels", "truth_px", "pred_px", "tp", "fp", "fn", "iou", "error_fraction"]
    gdf = gpd.GeoDataFrame(
        {c: [t[c] for t in tiles] for c in cols}, geometry=[t["geometry"] for t in tiles], crs=crs.to_wkt()
    )
    with atomic_path(path, suffix=".tmp.gpkg") as tmp:
        gdf.to_file(tmp, driver="GPKG", layer="errors", engine="pyogrio", geometry_type="Polygon",
                    dataset_options=GPKG_OPTIONS)  # fmt: skip
        style_gpkg(tmp, "errors", [], qml=graduated_qml("error_fraction", ERROR_RANGES), style_name="errors",
                   description="geoseg error fraction per tile")  # fmt: skip
    return path


def _read_instances(path: Path) -> gpd.GeoDataFrame:
    if not path.exists():
        raise InputNotFoundError(f"{path}: instances GeoPackage not found")
    try:
        return gpd.read_file(path, layer="instances", engine="pyogrio")
    except Exception as e:  # pyogrio raises several types; all mean "cannot read"
        msg = first_line(e)
        raise InputError(f"{path}: not a readable instances layer ({msg})") from None


def _open_probabilities(classes_tif: Path, ds: rasterio.DatasetReader) -> rasterio.DatasetReader:
    path = classes_tif.parent / "probabilities.tif"
    if not path.exists():
        raise InputNotFoundError(f"{path}: --sweep needs the prediction's probabilities.tif next to {classes_tif.name}")
    pds = open_raster(path)
    if (pds.width, pds.height) != (ds.width, ds.height) or not pds.transform.almost_equals(ds.transform):
        pds.close()
        raise InputError(f"{path}: not on the grid of {classes_tif} (size or transform differ)")
    return pds


def recorded_min_area(pred_dir: Path) -> tuple[float | None, str]:
    """Minimum object area (m²) the prediction was vectorized with, from its ``run.json`` (in
    ``pred_dir`` or its parent): ``postprocess.min_area_m2`` if numeric, else ``config.min_area``.
    Returns ``(value or None, where it came from)``."""
    import json

    for rj in (pred_dir / "run.json", pred_dir.parent / "run.json"):
        try:
            data = json.loads(rj.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        pp = data.get("postprocess")
        if isinstance(pp, dict) and isinstance(pp.get("min_area_m2"), (int, float)):
            return float(pp["min_area_m2"]), f"{rj}: postprocess.min_area_m2"
        cfg = data.get("config")
        if isinstance(cfg, dict) and isinstance(cfg.get("min_area"), (int, float)):
            return float(cfg["min_area"]), f"{rj}: config.min_area"
    return None, "default (no run.json records a minimum area)"


def _sweep(
    config: EvaluateConfig,
    *,
    probs_path: Path,
    thresholds: Sequence[float],
    cms: np.ndarray,
    fg: list[int],
    names: dict[int, str],
    classes: list[dict],
    boundary: int | None,
    region: Any,
    tobj: gpd.GeoDataFrame,
    work_dir: Path,
) -> dict[str, Any]:
    """Pixel and object scores at each probability threshold (the ``sweep`` block of eval.json).

    Instances at each threshold come from :func:`geoseg.vectorize.vectorize_prediction` (block-wise,
    bounded memory) written to a temporary GeoPackage in ``work_dir``, read back, clipped to
    ``region`` and scored like the main instances.
    """
    import tempfile

    from geoseg.vectorize import vectorize_prediction

    if config.sweep_min_area is not None:
        min_area, source = float(config.sweep_min_area), "--sweep-min-area"
    else:
        rec, source = recorded_min_area(probs_path.parent)
        min_area = rec if rec is not None else 0.0
    tg = np.asarray(tobj.geometry.values, dtype=object)
    tcls = tobj["class"].astype(str).to_numpy()
    ious = tuple(dict.fromkeys([*config.iou_thresholds, config.iou]))
    rows = []
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".geoseg-sweep-", dir=work_dir) as tmp:
        for j, t in enumerate(tqdm(thresholds, desc="sweep", unit="thr", leave=False, disable=len(thresholds) < 4)):
            gp = Path(tmp) / f"t{j}.gpkg"
            vectorize_prediction(probs_path, gp, classes=classes, boundary_class=boundary, threshold=float(t),
                                 min_area_m2=min_area, style=False)  # fmt: skip
            pred = _clip(_read_instances(gp), region)
            gp.unlink(missing_ok=True)
            pg = np.asarray(pred.geometry.values, dtype=object)
            pcls = pred["class"].astype(str).to_numpy() if len(pred) else np.zeros(0, str)
            ov = overlaps(pg, tg, pred_classes=pcls, truth_classes=tcls)
            sc = {iou_key(i): _scores_at(ov, i, None, None) for i in ious}
            ms = _merges_splits_from(ov, config.min_cover, None, None)
            pm = metrics_from_confusion(cms[j])["classes"]
            main = sc[iou_key(config.iou)]
            rows.append({
                "threshold": float(t),
                "pixel_iou": {names[k]: pm[k]["iou"] for k in fg},
                "pixel_foreground_iou": foreground_scores(cms[j], fg)["iou"],
                "object_precision": main["precision"], "object_recall": main["recall"], "object_f1": main["f1"],
                "object_f1_by_iou": {iou_key(i): sc[iou_key(i)]["f1"] for i in config.iou_thresholds},
                "n_pred": main["n_pred"], "tp": main["tp"],
                "merges": ms["merges"], "merged_truths": ms["merged_truths"],
                "splits": ms["splits"], "split_preds": ms["split_preds"],
            })  # fmt: skip

    def _best(key: str) -> dict[str, Any] | None:
        scored = [r for r in rows if r[key] is not None]
        if not scored:
            return None
        r = max(scored, key=lambda r: r[key])  # first (lowest threshold) on ties
        return {
            "threshold": r["threshold"],
            "object_f1": r["object_f1"],
            "pixel_foreground_iou": r["pixel_foreground_iou"],
        }

    return {
        "probabilities": str(probs_path),
        "thresholds": [float(t) for t in thresholds],
        "iou_threshold": float(config.iou),
        "min_area_m2": min_area,
        "min_area_source": source,
        "min_cover": float(config.min_cover),
        "rows": rows,
        "best_object_f1": _best("object_f1"),
        "best_pixel_iou": _best("pixel_foreground_iou"),
    }


def format_sweep_table(sweep: dict[str, Any]) -> str:
    """The ``sweep`` block as a plain-text table (one row per threshold, best rows marked)."""
    iou = sweep["iou_threshold"]
    keys = list(sweep["rows"][0]["object_f1_by_iou"]) if sweep["rows"] else []
    head = ["thr", "pix IoU", *[f"F1@{k}" for k in keys], f"P@{iou:g}", f"R@{iou:g}", "n_pred", "merges", "splits"]
    best_o = (sweep.get("best_object_f1") or {}).get("threshold")
    best_p = (sweep.get("best_pixel_iou") or {}).get("threshold")

    def _f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = ["  ".join(f"{h:>8}" for h in head)]
    for r in sweep["rows"]:
        cells = [f"{r['threshold']:.2f}", _f(r["pixel_foreground_iou"]),
                 *[_f(r["object_f1_by_iou"][k]) for k in keys], _f(r["object_precision"]), _f(r["object_recall"]),
                 str(r["n_pred"]), str(r["merges"]), str(r["splits"])]  # fmt: skip
        mark = (" <- best object F1" if r["threshold"] == best_o else "") + (
            " <- best pixel IoU" if r["threshold"] == best_p else ""
        )
        lines.append("  ".join(f"{c:>8}" for c in cells) + mark)
    lines.append(f"(object F1 at IoU >= {iou:g}; min area {sweep['min_area_m2']:g} m² from {sweep['min_area_source']})")
    return "\n".join(lines)


def plot_sweep(sweep: dict[str, Any], path: Path) -> Path:
    """``eval_sweep.png``: object F1 (at the sweep's IoU) and pixel IoU of the foreground class(es)
    against the probability threshold; written atomically (matplotlib Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = sweep["rows"]
    x = [r["threshold"] for r in rows]

    def _y(vals: list[Any]) -> list[float]:
        return [float("nan") if v is None else float(v) for v in vals]

    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(x, _y([r["object_f1"] for r in rows]), "o-", color="#d7191c",
            label=f"object F1 (IoU ≥ {sweep['iou_threshold']:g})")  # fmt: skip
    names = list(rows[0]["pixel_iou"]) if rows else []
    for name in names:
        ax.plot(x, _y([r["pixel_iou"][name] for r in rows]), "s--", label=f"pixel IoU {name}")
    if len(names) > 1:
        ax.plot(x, _y([r["pixel_foreground_iou"] for r in rows]), "^:", color="k", label="pixel IoU foreground")
    best = sweep.get("best_object_f1")
    if best:
        ax.axvline(best["threshold"], color="#d7191c", alpha=0.3, lw=4)
    ax.set_xlabel("probability threshold")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"threshold sweep (min area {sweep['min_area_m2']:g} m²)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def run(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a prediction; writes ``eval.json`` (and the error map, and with ``sweep`` the plot
    ``<out stem>_sweep.png``) and returns the result."""
    from geoseg.config import to_dict, write_json
    from geoseg.grid import geodesic_areas_m2
    from geoseg.io.vectors import clean_polygons, read_aoi, read_vector, to_crs
    from geoseg.vectorize import read_prediction_classes

    config.validate()
    classes_tif, inst_path = _resolve(config)
    classes, boundary = read_prediction_classes(classes_tif, Path(config.model) if config.model else None)
    table = ClassTable.of(classes, boundary, infer_boundary=True)
    boundary, fg = table.boundary, list(table.foreground)
    names = {int(c["id"]): str(c["name"]) for c in classes}
    num_classes = max(names) + 1
    out = Path(config.out) if config.out else classes_tif.parent / "eval.json"
    err_path = Path(config.error_map) if config.error_map else out.with_name(f"{out.stem}_errors.gpkg")
    sweep_thr = tuple(config.sweep_thresholds or default_sweep_thresholds()) if config.sweep else ()

    with open_raster(classes_tif, what="prediction") as ds:  # its existence was checked up front
        pds = _open_probabilities(classes_tif, ds) if sweep_thr else None
        try:
            crs = ds.crs
            region = valid_area(ds)
            if config.aoi:
                aoi = to_crs(read_aoi(config.aoi), crs)
                region = shapely.intersection(region, shapely.union_all(aoi.geometry.values))
            if region.is_empty:
                raise EmptyResultError(
                    f"{config.aoi or classes_tif}: the AOI does not overlap the prediction's valid area"
                )
            truth_raw = read_vector(config.truth, what="truth labels")
            truth, _ = clean_polygons(truth_raw, source=str(config.truth))
            truth = to_crs(truth, crs)
            truth["_cid"] = _truth_classes(truth, config.class_field, classes, fg, str(config.truth))
            truth = truth[truth.geometry.intersects(region)].copy()
            acc = _eval_windows(ds, truth, region, num_classes=num_classes, boundary_class=boundary, fg=fg,
                                tile_px=config.tile_px, probs=pds, sweep=sweep_thr)  # fmt: skip
        finally:
            if pds is not None:
                pds.close()

    pm = metrics_from_confusion(acc.cm)
    pixel = {
        "classes": {names.get(k, str(k)): v for k, v in pm["classes"].items() if k in names and k != boundary},
        "accuracy": pm["accuracy"],
        "pixels": pm["pixels"],
    }
    fg_iou = [pm["classes"][k]["iou"] for k in fg if pm["classes"][k]["iou"] is not None]
    pixel["mean_iou"] = float(np.mean(fg_iou)) if fg_iou else None
    pixel["foreground"] = foreground_scores(acc.cm, fg)
    pixel["confusion"] = {"labels": [names.get(k, str(k)) for k in range(num_classes)], "matrix": acc.cm.tolist()}

    result: dict[str, Any] = {
        "predicted": str(classes_tif),
        "truth": str(config.truth),
        "aoi": config.aoi,
        "crs": crs.to_string(),
        "region_area_m2": float(geodesic_areas_m2([region], crs)[0]),
        "truth_objects": len(truth),
        "pixel": pixel,
    }
    tobj = _clip(truth, region)
    tobj["class"] = [names[int(c)] for c in tobj["_cid"]]
    tobj["area_m2"] = geodesic_areas_m2(tobj.geometry.values, crs) if len(tobj) else np.zeros(0)
    if inst_path is not None:
        pred = _read_instances(inst_path)
        pred = to_crs(pred, crs) if pred.crs is not None else pred.set_crs(crs.to_wkt())
        pred = pred[pred.geometry.notna() & ~pred.geometry.is_empty]
        pred = _clip(pred, region)
        pred["area_m2"] = geodesic_areas_m2(pred.geometry.values, crs) if len(pred) else np.zeros(0)
        result["object"] = object_metrics(pred, tobj, iou=config.iou, bins=config.size_bins,
                                          iou_thresholds=config.iou_thresholds, min_cover=config.min_cover)  # fmt: skip
        result["instances"] = str(inst_path)
    else:
        result["object"] = None
        result["object_note"] = "no instances.gpkg: object metrics skipped (give a prediction directory)"
    if sweep_thr and acc.sweep_cm is not None:
        sw = _sweep(config, probs_path=classes_tif.parent / "probabilities.tif", thresholds=sweep_thr,
                    cms=acc.sweep_cm, fg=fg, names=names, classes=classes, boundary=boundary, region=region,
                    tobj=tobj, work_dir=out.parent)  # fmt: skip
        sw["plot"] = str(plot_sweep(sw, out.with_name(f"{out.stem}_sweep.png")))
        result["sweep"] = sw
    result["error_map"] = str(_write_error_map(acc.tiles, crs, err_path)) if acc.tiles else None
    result["config"] = to_dict(config)
    result = _clean(result)
    write_json(out, result)
    result["eval_json"] = str(out)
    return result


def _clip(gdf: gpd.GeoDataFrame, region: Any) -> gpd.GeoDataFrame:
    """Polygons of ``gdf`` intersected with ``region`` (empty and non-polygonal leftovers dropped)."""
    if len(gdf) == 0:
        return gdf.copy()
    geoms = np.asarray(gdf.geometry.values, dtype=object).copy()
    shapely.prepare(region)
    cut = ~shapely.contains(region, geoms)  # only polygons not wholly inside need the intersection
    if cut.any():
        geoms[cut] = [_polys(g) for g in shapely.intersection(geoms[cut], region)]
    out = gdf.copy()
    out[out.geometry.name] = geoms
    keep = ~shapely.is_empty(geoms) & (shapely.area(geoms) > 0)
    return out[keep].reset_index(drop=True)


def _polys(g: Any) -> Any:
    if g.geom_type in ("Polygon", "MultiPolygon"):
        return g
    parts = [p for p in getattr(g, "geoms", []) if p.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _clean(o: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None, keys to strings."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (float, np.floating)):
        v = float(o)
        return None if not math.isfinite(v) else v
    return o
