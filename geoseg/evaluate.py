"""Pixel and object metrics of a prediction against truth polygons, plus a per-tile error map.

* Pixel metrics per class (IoU, precision, recall, F1) from a confusion matrix accumulated window
  by window: truth polygons are rasterized onto the prediction grid one window at a time
  (pixel-centre rule), so memory is bounded by the window. Pixels outside the AOI or where the
  prediction is nodata are ignored. Predicted boundary-class pixels (the inner rim of objects,
  see ``geoseg.tile.labels``) count as the nearest foreground class.
* Object metrics at IoU >= 0.5 with one-to-one matching (maximum total IoU, Hungarian
  ``scipy.optimize.linear_sum_assignment`` per connected group of candidate pairs found with an
  STRtree), overall, per class and per size bin (true m² of the truth / predicted object).
* Error map: a GeoPackage of tiles (``tile_px`` pixels) with TP/FP/FN foreground pixel counts,
  IoU and error fraction, styled with a graduated colour so QGIS shows where the model is wrong.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from rasterio.windows import Window
from scipy import ndimage as ndi
from tqdm.auto import tqdm

from geoseg.errors import EmptyResultError, InputError, InputNotFoundError, LabelsError, RasterReadError, first_line
from geoseg.grid import Grid

log = logging.getLogger(__name__)

__all__ = [
    "EvaluateConfig",
    "confusion_matrix",
    "metrics_from_confusion",
    "object_metrics",
    "pixel_metrics",
    "run",
]

IGNORE = 255
DEFAULT_BINS = (50.0, 200.0)
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
def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


def _f1(p: float | None, r: float | None) -> float | None:
    if p is None or r is None:
        return None
    return 2 * p * r / (p + r) if (p + r) > 0 else 0.0


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


def metrics_from_confusion(cm: np.ndarray) -> dict[str, Any]:
    """Per-class IoU/precision/recall/F1 (None where undefined) and overall accuracy of ``cm``."""
    cm = np.asarray(cm, dtype=np.int64)
    out: dict[int, dict[str, Any]] = {}
    for k in range(cm.shape[0]):
        tp = int(cm[k, k])
        fp = int(cm[:, k].sum() - tp)
        fn = int(cm[k, :].sum() - tp)
        p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        out[k] = {"iou": _ratio(tp, tp + fp + fn), "precision": p, "recall": r, "f1": _f1(p, r),
                  "tp": tp, "fp": fp, "fn": fn}  # fmt: skip
    total = int(cm.sum())
    return {"classes": out, "accuracy": _ratio(int(np.trace(cm)), total), "pixels": total}


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


def _match(pg: np.ndarray, tg: np.ndarray, pcls: np.ndarray | None, tcls: np.ndarray | None, iou: float) -> Any:
    """One-to-one matches ``(pred index, truth index, IoU)`` with IoU >= ``iou``, maximising total IoU."""
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(pg) == 0 or len(tg) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    tree = shapely.STRtree(tg)
    pi, ti = tree.query(pg, predicate="intersects")
    if pcls is not None and tcls is not None and len(pi):
        same = pcls[pi] == tcls[ti]
        pi, ti = pi[same], ti[same]
    if len(pi) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    inter = shapely.area(shapely.intersection(pg[pi], tg[ti]))
    union = shapely.area(pg[pi]) + shapely.area(tg[ti]) - inter
    ious = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    ok = ious >= iou - 1e-12
    pi, ti, ious = pi[ok], ti[ok], ious[ok]
    if len(pi) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    n_p, n_t = len(pg), len(tg)
    graph = coo_matrix((np.ones(len(pi)), (pi, n_p + ti)), shape=(n_p + n_t, n_p + n_t))
    _, comp = connected_components(graph, directed=False)
    mp, mt, mi = [], [], []
    pair_comp = comp[pi]
    for c in np.unique(pair_comp):
        sel = pair_comp == c
        ps, ts, vs = pi[sel], ti[sel], ious[sel]
        if len(ps) == 1:
            mp.append(ps[0])
            mt.append(ts[0])
            mi.append(vs[0])
            continue
        up, ip = np.unique(ps, return_inverse=True)
        ut, it = np.unique(ts, return_inverse=True)
        m = np.zeros((len(up), len(ut)))
        m[ip, it] = vs
        rows, cols = linear_sum_assignment(m, maximize=True)
        for r, c2 in zip(rows, cols, strict=True):
            if m[r, c2] > 0:
                mp.append(up[r])
                mt.append(ut[c2])
                mi.append(m[r, c2])
    return np.array(mp, int), np.array(mt, int), np.array(mi, float)


def _prf(n_pred: int, n_truth: int, tp_pred: int, tp_truth: int) -> dict[str, Any]:
    p, r = _ratio(tp_pred, n_pred), _ratio(tp_truth, n_truth)
    return {"n_pred": n_pred, "n_truth": n_truth, "tp_pred": tp_pred, "tp_truth": tp_truth,
            "fp": n_pred - tp_pred, "fn": n_truth - tp_truth, "precision": p, "recall": r, "f1": _f1(p, r)}  # fmt: skip


def object_metrics(
    pred_gdf: gpd.GeoDataFrame,
    truth_gdf: gpd.GeoDataFrame,
    iou: float = 0.5,
    bins: Sequence[float] = DEFAULT_BINS,
    *,
    class_col: str | None = "class",
) -> dict[str, Any]:
    """Object precision/recall/F1 at ``IoU >= iou`` with one-to-one matching (max total IoU).

    Both frames in the same CRS (truth is reprojected if not). With ``class_col`` in both frames
    only same-class pairs match and ``by_class`` is reported. ``bins`` are size-bin edges in true
    m² (``area_m2`` column if present, else geodesic area): truth objects are binned by their
    area for recall, predicted objects by theirs for precision.
    """
    from geoseg.vectorize import geodesic_areas_m2

    if truth_gdf.crs is not None and pred_gdf.crs is not None and not truth_gdf.crs.equals(pred_gdf.crs):
        truth_gdf = truth_gdf.to_crs(pred_gdf.crs)
    pg = np.asarray(pred_gdf.geometry.values, dtype=object)
    tg = np.asarray(truth_gdf.geometry.values, dtype=object)
    use_cls = bool(class_col) and class_col in pred_gdf.columns and class_col in truth_gdf.columns
    pcls = pred_gdf[class_col].astype(str).to_numpy() if use_cls else None
    tcls = truth_gdf[class_col].astype(str).to_numpy() if use_cls else None
    mp, mt, mi = _match(pg, tg, pcls, tcls, iou)
    p_hit = np.zeros(len(pg), bool)
    t_hit = np.zeros(len(tg), bool)
    p_hit[mp] = True
    t_hit[mt] = True
    crs = pred_gdf.crs or truth_gdf.crs

    def _areas(gdf: gpd.GeoDataFrame, geoms: np.ndarray) -> np.ndarray:
        if "area_m2" in gdf.columns:
            return gdf["area_m2"].to_numpy(dtype=float)
        return geodesic_areas_m2(geoms, crs) if len(geoms) else np.zeros(0)

    pa, ta = _areas(pred_gdf, pg), _areas(truth_gdf, tg)
    res: dict[str, Any] = {"iou_threshold": iou}
    res.update(_prf(len(pg), len(tg), int(p_hit.sum()), int(t_hit.sum())))
    res["tp"] = len(mp)
    res["mean_matched_iou"] = float(mi.mean()) if len(mi) else None
    by_size = {}
    for name, lo, hi in _size_bins(bins):
        ps = (pa >= lo) & (pa < hi)
        ts = (ta >= lo) & (ta < hi)
        d = _prf(int(ps.sum()), int(ts.sum()), int((p_hit & ps).sum()), int((t_hit & ts).sum()))
        by_size[name] = {"range_m2": [lo, None if math.isinf(hi) else hi], **d}
    res["by_size"] = by_size
    if use_cls and pcls is not None and tcls is not None:
        by_class = {}
        for c in sorted(set(pcls) | set(tcls)):
            ps, ts = pcls == c, tcls == c
            by_class[c] = _prf(int(ps.sum()), int(ts.sum()), int((p_hit & ps).sum()), int((t_hit & ts).sum()))
        res["by_class"] = by_class
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


@dataclass
class _Acc:
    cm: np.ndarray
    tiles: list[dict[str, Any]] = field(default_factory=list)


def _eval_windows(
    ds: rasterio.DatasetReader,
    truth: gpd.GeoDataFrame,
    region: Any,
    *,
    num_classes: int,
    boundary_class: int | None,
    fg: list[int],
    tile_px: int,
) -> _Acc:
    """Confusion matrix and per-tile counts over the prediction grid, window by window."""
    grid = Grid.from_dataset(ds)
    k = max(1, 1024 // tile_px)
    bs = tile_px * k
    tgeoms = np.asarray(truth.geometry.values, dtype=object)
    tvals = truth["_cid"].to_numpy(dtype=np.int64)
    tree = shapely.STRtree(tgeoms) if len(tgeoms) else None
    shapely.prepare(region)
    acc = _Acc(np.zeros((num_classes, num_classes), np.int64))
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
            shift = Affine.translation(c0, r0)
            for g, _ in rasterio.features.shapes(m, mask=m.astype(bool), connectivity=4, transform=shift):
                parts.append(shapely.geometry.shape(g))
    if not parts:
        return shapely.Polygon()
    u = shapely.union_all(parts)
    t = ds.transform
    return shapely.affinity.affine_transform(u, [t.a, t.b, t.d, t.e, t.c, t.f])


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluateConfig:
    """Options of ``geoseg evaluate``."""

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
    from geoseg.qgis import graduated_qml, style_gpkg
    from geoseg.vectorize import GPKG_OPTIONS

    cols = ["row_off", "col_off", "pixels", "truth_px", "pred_px", "tp", "fp", "fn", "iou", "error_fraction"]
    gdf = gpd.GeoDataFrame(
        {c: [t[c] for t in tiles] for c in cols}, geometry=[t["geometry"] for t in tiles], crs=crs.to_wkt()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.gpkg")
    tmp.unlink(missing_ok=True)
    try:
        gdf.to_file(tmp, driver="GPKG", layer="errors", engine="pyogrio", geometry_type="Polygon",
                    dataset_options=GPKG_OPTIONS)  # fmt: skip
        style_gpkg(tmp, "errors", [], qml=graduated_qml("error_fraction", ERROR_RANGES), style_name="errors",
                   description="geoseg error fraction per tile")  # fmt: skip
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _read_instances(path: Path) -> gpd.GeoDataFrame:
    if not path.exists():
        raise InputNotFoundError(f"{path}: instances GeoPackage not found")
    try:
        return gpd.read_file(path, layer="instances", engine="pyogrio")
    except Exception as e:  # pyogrio raises several types; all mean "cannot read"
        msg = first_line(e)
        raise InputError(f"{path}: not a readable instances layer ({msg})") from None


def run(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a prediction; writes ``eval.json`` (and the error map) and returns the result."""
    from geoseg.config import to_dict, write_json
    from geoseg.io.vectors import clean_polygons, read_aoi, read_vector, to_crs
    from geoseg.vectorize import geodesic_areas_m2, read_prediction_classes

    if not 0 < config.iou <= 1:
        raise InputError(f"--iou {config.iou}: must be in (0, 1]")
    if config.tile_px < 8:
        raise InputError(f"--tile-px {config.tile_px}: use at least 8")
    classes_tif, inst_path = _resolve(config)
    classes, boundary = read_prediction_classes(classes_tif, Path(config.model) if config.model else None)
    if boundary is None:
        boundary = next((int(c["id"]) for c in classes if str(c["name"]).lower() == "boundary"), None)
    fg = [int(c["id"]) for c in classes if int(c["id"]) not in (0, boundary)]
    names = {int(c["id"]): str(c["name"]) for c in classes}
    num_classes = max(names) + 1
    out = Path(config.out) if config.out else classes_tif.parent / "eval.json"
    err_path = Path(config.error_map) if config.error_map else out.with_name(f"{out.stem}_errors.gpkg")

    try:
        ds = rasterio.open(classes_tif)
    except rasterio.errors.RasterioIOError as e:
        raise RasterReadError(f"{classes_tif}: not a readable raster ({first_line(e)})") from None
    with ds:
        crs = ds.crs
        region = valid_area(ds)
        if config.aoi:
            aoi = to_crs(read_aoi(config.aoi), crs)
            region = shapely.intersection(region, shapely.union_all(aoi.geometry.values))
        if region.is_empty:
            raise EmptyResultError(f"{config.aoi or classes_tif}: the AOI does not overlap the prediction's valid area")
        truth_raw = read_vector(config.truth, what="truth labels")
        truth, _ = clean_polygons(truth_raw, source=str(config.truth))
        truth = to_crs(truth, crs)
        truth["_cid"] = _truth_classes(truth, config.class_field, classes, fg, str(config.truth))
        truth = truth[truth.geometry.intersects(region)].copy()
        acc = _eval_windows(ds, truth, region, num_classes=num_classes, boundary_class=boundary, fg=fg,
                            tile_px=config.tile_px)  # fmt: skip

    pm = metrics_from_confusion(acc.cm)
    pixel = {
        "classes": {names.get(k, str(k)): v for k, v in pm["classes"].items() if k in names and k != boundary},
        "accuracy": pm["accuracy"],
        "pixels": pm["pixels"],
    }
    fg_iou = [pm["classes"][k]["iou"] for k in fg if pm["classes"][k]["iou"] is not None]
    pixel["mean_iou"] = float(np.mean(fg_iou)) if fg_iou else None
    cm_fg = acc.cm.copy()
    tp = int(sum(cm_fg[a, b] for a in fg for b in fg))  # foreground vs background
    fp = int(sum(cm_fg[a, b] for a in range(num_classes) for b in fg if a not in fg))
    fn = int(sum(cm_fg[a, b] for a in fg for b in range(num_classes) if b not in fg))
    fpr, frc = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    pixel["foreground"] = {"iou": _ratio(tp, tp + fp + fn), "precision": fpr, "recall": frc, "f1": _f1(fpr, frc),
                           "tp": tp, "fp": fp, "fn": fn}  # fmt: skip
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
    if inst_path is not None:
        pred = _read_instances(inst_path)
        pred = to_crs(pred, crs) if pred.crs is not None else pred.set_crs(crs.to_wkt())
        pred = pred[pred.geometry.notna() & ~pred.geometry.is_empty]
        pred = _clip(pred, region)
        tobj = _clip(truth, region)
        tobj["class"] = [names[int(c)] for c in tobj["_cid"]]
        for g in (pred, tobj):
            g["area_m2"] = geodesic_areas_m2(g.geometry.values, crs) if len(g) else np.zeros(0)
        result["object"] = object_metrics(pred, tobj, iou=config.iou, bins=config.size_bins)
        result["instances"] = str(inst_path)
    else:
        result["object"] = None
        result["object_note"] = "no instances.gpkg: object metrics skipped (give a prediction directory)"
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
    geoms = shapely.intersection(np.asarray(gdf.geometry.values, dtype=object), region)
    geoms = np.array([_polys(g) for g in geoms], dtype=object)
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
