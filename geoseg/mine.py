"""``geoseg mine``: a model's own hard negatives, missed labels and review areas.

``geoseg mine SCENE... --model RUN --labels LABELS [--coverage LAYER] --out DIR`` predicts each scene
once (:func:`geoseg.predict.run.run` into ``OUT/predict/<scene stem>/``), compares the predicted
instances with the labels valid at the scene date (the validity rule of :mod:`geoseg.tile.labels`)
by one-to-one matching at IoU >= ``iou`` (:func:`geoseg.evaluate.match_objects`, the matching of
``geoseg evaluate``; only same-class pairs match), and writes, styled for QGIS:

* ``false_positives.gpkg`` (layer ``false_positives``): predicted objects *inside the coverage* that
  match no valid label: ``class``, ``score``, ``area_m2``, ``best_iou`` (highest IoU with any label of
  the class), ``scene``, ``scene_date`` and ``geoseg_mined`` (sha256 of the model weights: it marks the
  layer as mined for ``geoseg tile --hard-negatives``). A prediction touching a label that is *not*
  valid at the scene date (outdated, future) is ambiguous and left out (counted in ``mine.json``);
* ``false_negatives.gpkg`` (layer ``false_negatives``): valid labels inside the coverage that match no
  prediction: ``class``, ``area_m2``, ``best_iou``, ``scene``, ``scene_date``;
* ``review.gpkg`` (layer ``review``): outside the coverage (inside the predicted area), the cells of a
  grid of ``review_cell`` pixels (default: the model's tile size) anchored at each scene's top-left
  pixel, ranked: ``uncertainty`` = mean of ``2 min(p, 1 - p)`` with ``p`` = 1 - background
  probability (0 certain .. 1 a coin flip), ``foreground`` = share of pixels with ``p`` >= the
  instance threshold, ``objects`` = predicted objects whose representative point is in the cell,
  ``score`` = max(uncertainty, foreground), ``rank`` 1 = highest score (ties: more objects first).
  A cell is listed when at least half of its pixels are valid and unannotated;
* ``mine.json``: counts, score statistics, the model (path, weights sha256, config) and the options;
  ``run.json`` like the other stages.

"Inside the coverage" = the object's representative point lies in coverage ∩ predicted area; without
``--coverage`` the whole predicted area counts as annotated and there is no review grid.

Contract: the prediction covers each whole scene (or ``--aoi`` ∩ scene) so the review grid sees the
unannotated areas; with ``--no-review`` only coverage ∩ scene is predicted. Time: one ``geoseg
predict`` of that area plus a vector comparison. Memory: the prediction is bounded by strip size
(see predict); the comparison holds the predicted objects and labels of one scene (O(objects), as
``geoseg evaluate``); the review grid reads ``probabilities.tif`` one strip of ``review_cell`` rows at
a time (``review_cell x width x classes`` bytes) and keeps one small record per cell.
Outputs other than ``OUT/predict`` are staged and moved into ``OUT`` at the end (nothing half-written);
one run per ``OUT`` at a time.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from geoseg.config import StageConfig, read_json, to_dict, write_json
from geoseg.errors import ConfigError, InputError, LabelsError, NoOverlapError
from geoseg.io.lock import output_lock
from geoseg.io.output import check_writable_dir, staged_output
from geoseg.tile.hardneg import MINED_FIELD

log = logging.getLogger(__name__)

__all__ = ["Comparison", "MineConfig", "MineResult", "compare_objects", "inside", "review_grid", "run"]

FALSE_POSITIVES = "false_positives.gpkg"
FALSE_NEGATIVES = "false_negatives.gpkg"
REVIEW = "review.gpkg"
WORK_DIR = ".geoseg-mine"
#: share of a review cell's pixels that must be valid and unannotated for the cell to be listed
REVIEW_MIN_SHARE = 0.5
SCORE_RANGES = (
    (0.0, 0.6, "#fee5d9", "< 0.6"),
    (0.6, 0.7, "#fcae91", "0.6-0.7"),
    (0.7, 0.8, "#fb6a4a", "0.7-0.8"),
    (0.8, 0.9, "#de2d26", "0.8-0.9"),
    (0.9, 1.0001, "#a50f15", ">= 0.9"),
)
REVIEW_RANGES = (
    (0.0, 0.1, "#f7fcf5", "< 0.1"),
    (0.1, 0.25, "#c7e9c0", "0.1-0.25"),
    (0.25, 0.5, "#74c476", "0.25-0.5"),
    (0.5, 0.75, "#31a354", "0.5-0.75"),
    (0.75, 1.0001, "#006d2c", ">= 0.75"),
)


@dataclass(frozen=True)
class MineConfig(StageConfig):
    """Options of ``geoseg mine`` (written to ``mine.json`` and ``run.json``); validated on construction.

    ``scene_dates``: one for all scenes or one per scene (else the GeoTIFF tag, else YYYYMMDD in the name);
    ``class_field`` / ``date_field`` / ``valid_from_field`` / ``valid_to_field`` / ``labels_layer`` /
    ``max_label_age`` (days) / ``undated`` read the labels as ``geoseg tile`` does; ``iou``: match threshold
    (as ``geoseg evaluate --iou``); ``aoi`` bounds the prediction (default: every whole scene);
    ``review``: predict outside the coverage too and write the review grid of ``review_cell`` pixels
    (default: the model's tile size); ``device`` / ``workers`` / ``batch_size`` / ``progress`` as predict.
    """

    scenes: tuple[str, ...]
    model: str
    labels: str
    out: str
    coverage: str | None = None
    aoi: str | None = None
    scene_dates: tuple[str, ...] = ()
    class_field: str | None = None
    date_field: str = "date"
    valid_from_field: str = "valid_from"
    valid_to_field: str = "valid_to"
    labels_layer: str | None = None
    max_label_age: int | None = None
    undated: str = "keep"
    iou: float = 0.5
    review: bool = True
    review_cell: int | None = None
    device: str = "auto"
    workers: int = 1
    batch_size: int = 8
    asset: str | None = None
    progress: bool = True

    def normalize(self) -> None:
        for name in ("scenes", "scene_dates"):
            v = getattr(self, name)
            if isinstance(v, (str, Path)):
                self._set(name, (str(v),))
            elif isinstance(v, list):
                self._set(name, tuple(v))

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the option (called on construction)."""
        checks = [
            (len(self.scenes) > 0, "give at least one SCENE"),
            (len(set(map(str, self.scenes))) == len(self.scenes), "the same SCENE is given twice"),
            (len(self.scene_dates) in (0, 1, len(self.scenes)), "give one --scene-date, or one per scene"),
            (0 < self.iou <= 1, f"--iou must be in (0, 1], got {self.iou!r}"),
            (self.undated in ("keep", "drop"), "--undated must be keep or drop"),
            (self.max_label_age is None or self.max_label_age >= 0, "--max-label-age must be >= 0 days"),
            (self.review_cell is None or self.review_cell >= 8, "--review-cell must be at least 8 pixels"),
            (self.workers >= 0, "--workers must be >= 1 (1 = in-process)"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)


@dataclass
class MineResult:
    out: Path
    counts: dict[str, int]
    files: dict[str, str]
    mine_json: Path
    per_scene: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# pure core
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare_objects`: per prediction / per truth, matched or not, and the best IoU."""

    pred_matched: np.ndarray
    truth_matched: np.ndarray
    pred_best_iou: np.ndarray
    truth_best_iou: np.ndarray

    @property
    def false_positives(self) -> np.ndarray:
        """Indexes of the predictions that match no truth."""
        return np.flatnonzero(~self.pred_matched)

    @property
    def false_negatives(self) -> np.ndarray:
        """Indexes of the truths that match no prediction."""
        return np.flatnonzero(~self.truth_matched)


def compare_objects(
    pred_geoms: Any, pred_classes: Any, truth_geoms: Any, truth_classes: Any, *, iou: float = 0.5
) -> Comparison:
    """One-to-one matching of predictions and truths at IoU >= ``iou`` (same class only), as in
    ``geoseg evaluate``. Geometries: shapely polygons in one projected CRS. Memory O(n + overlapping pairs)."""
    from geoseg.evaluate import match_objects, overlaps

    ov = overlaps(
        pred_geoms,
        truth_geoms,
        pred_classes=np.asarray(pred_classes, dtype=object),
        truth_classes=np.asarray(truth_classes, dtype=object),
    )
    n_p, n_t = len(ov.pred_area), len(ov.truth_area)
    mp, mt, _ = match_objects(ov, iou)
    pm, tm = np.zeros(n_p, bool), np.zeros(n_t, bool)
    pm[mp], tm[mt] = True, True
    pb, tb = np.zeros(n_p), np.zeros(n_t)
    ious = ov.iou
    np.maximum.at(pb, ov.pred, ious)
    np.maximum.at(tb, ov.truth, ious)
    return Comparison(pm, tm, pb, tb)


def inside(geoms: Any, region: Any) -> np.ndarray:
    """Bool per geometry: its representative point lies in ``region`` (boundary included)."""
    arr = np.asarray(geoms, dtype=object)
    if len(arr) == 0 or region is None or region.is_empty:
        return np.zeros(len(arr), bool)
    shapely.prepare(region)
    return np.asarray(shapely.covers(region, shapely.point_on_surface(arr)), bool)


def review_grid(
    probabilities: str | Path,
    annotated: Any,
    *,
    cell: int,
    threshold: float,
    object_points: Any = (),
) -> tuple[list[Any], dict[str, np.ndarray]]:
    """Cells (``cell`` px, anchored at the raster's top-left pixel) of the *unannotated* valid area of
    a ``probabilities.tif``: ``(cell polygons, {"row_off", "col_off", "pixels", "uncertainty",
    "foreground", "objects", "score"})``, listing cells with at least :data:`REVIEW_MIN_SHARE` of their
    pixels valid and outside ``annotated`` (a shapely geometry in the raster CRS, or None). Definitions
    in the module docstring. Reads one strip of ``cell`` rows at a time (memory ``cell x width x bands``)."""
    import rasterio
    import rasterio.features
    from rasterio.windows import Window

    cols: dict[str, list[Any]] = {
        k: [] for k in ("row_off", "col_off", "pixels", "uncertainty", "foreground", "objects")
    }
    polys: list[Any] = []
    pts = np.asarray(object_points, dtype=object)
    with rasterio.open(probabilities) as ds:
        width, height, tr = ds.width, ds.height, ds.transform
        floating = np.issubdtype(np.dtype(ds.dtypes[0]), np.floating)
        scale = 1.0 if floating else (float(ds.scales[0]) if ds.scales and ds.scales[0] not in (0, 1) else 1 / 254)
        nod = ds.nodata
        obj_rc = np.zeros((0, 2), np.int64)
        if len(pts):
            xy = shapely.get_coordinates(pts)
            c, r = ~tr * (xy[:, 0], xy[:, 1])
            obj_rc = np.column_stack([np.floor(np.asarray(r) / cell), np.floor(np.asarray(c) / cell)]).astype(np.int64)
        geoms = [] if annotated is None or annotated.is_empty else [annotated]
        starts = np.arange(0, width, cell)
        for r0 in range(0, height, cell):
            h = min(cell, height - r0)
            win = Window(0, r0, width, h)
            bg = ds.read(1, window=win)
            if floating:
                valid = np.isfinite(bg) & (bg != nod if nod is not None and np.isfinite(nod) else True)
                p = 1.0 - np.nan_to_num(bg.astype(np.float32), nan=1.0)
            else:
                valid = bg != (255 if nod is None else nod)
                p = 1.0 - bg.astype(np.float32) * np.float32(scale)
            if geoms:
                ann = rasterio.features.rasterize(
                    [(g, 1) for g in geoms],
                    out_shape=(h, width),
                    transform=ds.window_transform(win),
                    fill=0,
                    dtype="uint8",
                )
                use = valid & (ann == 0)
            else:
                use = valid
            if not use.any():
                continue
            p = np.clip(p, 0.0, 1.0)
            unc = np.where(use, 2.0 * np.minimum(p, 1.0 - p), 0.0)
            fg = use & (p >= threshold)
            n = np.add.reduceat(use.sum(axis=0), starts)
            u = np.add.reduceat(unc.sum(axis=0), starts)
            f = np.add.reduceat(fg.sum(axis=0), starts)
            ci = r0 // cell
            for j, c0 in enumerate(starts.tolist()):
                w = min(cell, width - c0)
                if n[j] == 0 or n[j] < REVIEW_MIN_SHARE * h * w:
                    continue
                cols["row_off"].append(r0)
                cols["col_off"].append(c0)
                cols["pixels"].append(int(n[j]))
                cols["uncertainty"].append(float(u[j] / n[j]))
                cols["foreground"].append(float(f[j] / n[j]))
                cols["objects"].append(int(((obj_rc[:, 0] == ci) & (obj_rc[:, 1] == j)).sum()) if len(obj_rc) else 0)
                x0, y0 = tr * (c0, r0 + h)
                x1, y1 = tr * (c0 + w, r0)
                polys.append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    out = {k: np.asarray(v) for k, v in cols.items()}
    out["score"] = np.maximum(out["uncertainty"], out["foreground"]) if len(polys) else np.zeros(0)
    return polys, out


def rank_cells(score: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """1-based rank per cell: highest ``score`` first, then most ``objects``, then table order."""
    order = np.lexsort([np.arange(len(score)), -np.asarray(objects), -np.asarray(score)])
    rank = np.empty(len(score), np.int64)
    rank[order] = np.arange(1, len(score) + 1)
    return rank


def _stats(values: Sequence[float]) -> dict[str, float | int | None]:
    v = np.asarray(values, float)
    if len(v) == 0:
        return {"n": 0, "min": None, "p25": None, "median": None, "mean": None, "p75": None, "max": None}
    q = np.percentile(v, [25, 50, 75])
    return {
        "n": len(v),
        "min": float(v.min()),
        "p25": float(q[0]),
        "median": float(q[1]),
        "mean": float(v.mean()),
        "p75": float(q[2]),
        "max": float(v.max()),
    }


# --------------------------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------------------------
def run(config: MineConfig) -> MineResult:
    """Predict, compare and write the mined layers (see the module docstring). One run per ``--out``."""
    config.validate()
    check_writable_dir(config.out)
    with output_lock(config.out):
        return _run(config)


def _label_classes(
    class_names: Sequence[str], model_classes: list[dict[str, Any]], fg: Sequence[int], path: str
) -> list[str]:
    """Model class name per label class (by name, case-insensitive; any name when the model has one class)."""
    by_name = {str(c["name"]).lower(): str(c["name"]) for c in model_classes if int(c["id"]) in fg}
    out, bad = [], []
    fg_names = [str(c["name"]) for c in model_classes if int(c["id"]) in fg]
    for n in class_names:
        if str(n).lower() in by_name:
            out.append(by_name[str(n).lower()])
        elif len(fg_names) == 1:
            out.append(fg_names[0])
        else:
            bad.append(str(n))
    if bad:
        raise LabelsError(
            f"{path}: label classes {', '.join(bad)} are not classes of the model "
            f"({', '.join(fg_names)}); rename them or pass --class-field"
        )
    return out


@dataclass(frozen=True)
class _Inputs:
    """The read phase's result: everything checked before any work (regions in each scene's CRS)."""

    model_dir: Path
    model_config: dict[str, Any]
    model_classes: list[dict[str, Any]]
    sha: str  # sha256 of the model weights
    cell: int  # review cell edge in pixels
    scenes: list[Any]  # SceneInfo
    labels: Any  # tile.labels.Labels
    label_names: list[str]  # model class name per label class id - 1
    regions: list[tuple[Any, Any]]  # (predicted area, annotated area) per scene
    review: bool  # write the review grid (--review and a coverage)

    @property
    def out_crs(self) -> Any:
        return self.scenes[0].grid.crs


@dataclass
class _SceneResult:
    """One scene's rows of the three layers (output CRS; None = no rows) and its ``per_scene`` record."""

    info: dict[str, Any]
    fp: gpd.GeoDataFrame | None = None
    fn: gpd.GeoDataFrame | None = None
    review: gpd.GeoDataFrame | None = None
    matched_scores: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class _Prediction:
    """One scene's ``geoseg predict`` output: its directory, instance threshold and instances (scene CRS)."""

    pred_dir: Path
    threshold: float
    instances: gpd.GeoDataFrame

    @property
    def geoms(self) -> np.ndarray:
        return np.asarray(self.instances.geometry.values, dtype=object)


def _run(cfg: MineConfig) -> MineResult:
    """Phases: read inputs -> per scene (predict -> compare -> review) -> merge -> write outputs."""
    t_start = time.perf_counter()
    inp = _read_inputs(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / WORK_DIR
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        results = [_mine_scene(cfg, inp, i, work, out) for i in range(len(inp.scenes))]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _write_outputs(cfg, inp, out, results, t_start)


def _read_inputs(cfg: MineConfig) -> _Inputs:
    """Open the model, scenes, labels, coverage and AOI; check they fit together (raises before any work)."""
    from geoseg.classes import ClassTable
    from geoseg.io.rasters import scene_info
    from geoseg.modeldir import file_sha256, read_model_config, resolve_model_dir
    from geoseg.tile.labels import read_scene_labels

    model_dir = resolve_model_dir(cfg.model)
    mcfg = read_model_config(model_dir)
    table = ClassTable.from_model_config(mcfg)
    model_classes = table.to_json()
    sha = str(mcfg.get("weights_sha256") or file_sha256(model_dir / "model.pt"))
    dates = cfg.scene_dates * len(cfg.scenes) if len(cfg.scene_dates) == 1 else cfg.scene_dates
    scenes = [scene_info(p, dates[i] if dates else None, asset=cfg.asset) for i, p in enumerate(cfg.scenes)]
    stems = [s.stem for s in scenes]
    if len(set(stems)) != len(stems):
        raise InputError("scenes with the same file name stem: outputs would collide; rename one")
    labels = read_scene_labels(cfg, scenes)
    label_names = _label_classes(labels.class_names, model_classes, list(table.foreground), cfg.labels)
    has_coverage, regions = _regions(cfg, scenes)
    return _Inputs(
        model_dir=model_dir,
        model_config=mcfg,
        model_classes=model_classes,
        sha=sha,
        cell=int(cfg.review_cell or mcfg["tile_size"]),
        scenes=scenes,
        labels=labels,
        label_names=label_names,
        regions=regions,
        review=bool(cfg.review and has_coverage),
    )


def _regions(cfg: MineConfig, scenes: Sequence[Any]) -> tuple[bool, list[tuple[Any, Any]]]:
    """Whether a coverage is given, and (predicted area, annotated area) per scene in the scene CRS;
    raises :class:`NoOverlapError` when no scene has an annotated area."""
    from geoseg.io.vectors import read_aoi, to_crs
    from geoseg.tile.labels import read_polygons

    coverage = read_polygons(cfg.coverage, what="coverage") if cfg.coverage else None
    aoi = read_aoi(cfg.aoi) if cfg.aoi else None
    regions = []
    for s in scenes:
        area = s.grid.footprint
        if aoi is not None:
            area = shapely.intersection(area, shapely.union_all(to_crs(aoi, s.grid.crs).geometry.values))
        cov = None if coverage is None else shapely.union_all(to_crs(coverage, s.grid.crs).geometry.values)
        annotated = area if cov is None else shapely.intersection(area, cov)
        predicted = area if cfg.review else annotated
        regions.append((predicted, annotated))
    if all(ann.is_empty for _, ann in regions):
        what = "--coverage" if coverage is not None else "--aoi"
        raise NoOverlapError(f"{cfg.coverage or cfg.aoi}: {what} does not overlap any scene")
    return coverage is not None, regions


def _mine_scene(cfg: MineConfig, inp: _Inputs, i: int, work: Path, out: Path) -> _SceneResult:
    """Predict scene ``i``, compare with its valid labels and grade its unannotated area."""
    s = inp.scenes[i]
    predicted, annotated = inp.regions[i]
    info: dict[str, Any] = {"scene": s.name, "scene_date": s.date.isoformat() if s.date else None}
    if annotated.is_empty:
        log.warning("%s: no annotated area (coverage ∩ scene) here; skipped", s.path)
        return _SceneResult({**info, "skipped": True})
    pred = _predict_scene(cfg, inp, i, work, out)
    res, p_in, counts = _compare_scene(cfg, inp, s, annotated, pred)
    n_cells = 0
    if inp.review:
        res.review = _review_scene(inp, s, pred, predicted, annotated, p_in)
        n_cells = 0 if res.review is None else len(res.review)
    res.info = {
        **info,
        "skipped": False,
        "predict": str(pred.pred_dir),
        "threshold": pred.threshold,
        **counts,
        "review_cells": n_cells,
    }
    return res


def _predict_scene(cfg: MineConfig, inp: _Inputs, i: int, work: Path, out: Path) -> _Prediction:
    """``geoseg predict`` of scene ``i`` over its predicted area into ``OUT/predict/<stem>/``."""
    from geoseg.io.vectors import to_crs
    from geoseg.predict.run import PredictConfig
    from geoseg.predict.run import run as run_predict

    s = inp.scenes[i]
    crs_wkt = s.grid.crs.to_wkt()
    aoi_file = work / f"aoi_{i:03d}.gpkg"
    gpd.GeoDataFrame(geometry=[inp.regions[i][0]], crs=crs_wkt).to_file(aoi_file, driver="GPKG", engine="pyogrio")
    pred_dir = out / "predict" / s.stem
    pres = run_predict(
        PredictConfig(
            scenes=(str(cfg.scenes[i]),),
            model=str(inp.model_dir),
            out=str(pred_dir),
            aoi=str(aoi_file),
            batch_size=cfg.batch_size,
            device=cfg.device,
            workers=cfg.workers,
            progress=cfg.progress,
            asset=cfg.asset,
        )
    )
    prun = read_json(pres.run_json, what="predict run.json")
    threshold = float((prun.get("postprocess") or {}).get("threshold") or 0.5)
    inst_path = pred_dir / "instances.gpkg"
    if inst_path.exists():
        pred = gpd.read_file(inst_path, layer="instances", engine="pyogrio")
        pred = pred.set_crs(crs_wkt, allow_override=True) if pred.crs is None else to_crs(pred, s.grid.crs)
    else:
        pred = gpd.GeoDataFrame({"class": [], "score": [], "area_m2": []}, geometry=[], crs=crs_wkt)
    return _Prediction(pred_dir, threshold, pred)


def _compare_scene(
    cfg: MineConfig, inp: _Inputs, s: Any, annotated: Any, pred: _Prediction
) -> tuple[_SceneResult, np.ndarray, dict[str, int]]:
    """False positives / negatives of one scene inside its annotated area (output CRS), the predictions'
    inside-the-coverage flags, and the scene's counts (``per_scene`` keys, in order)."""
    from geoseg.grid import geodesic_areas_m2
    from geoseg.io.vectors import to_crs

    crs_wkt = s.grid.crs.to_wkt()
    inst, pgeoms = pred.instances, pred.geoms
    p_in = inside(pgeoms, annotated)
    lab = to_crs(inp.labels.gdf, s.grid.crs)
    valid = inp.labels.validity(s.date, max_age_days=cfg.max_label_age, undated=cfg.undated)
    lgeoms = np.asarray(lab.geometry.values, dtype=object)
    lnames = np.array([inp.label_names[int(c) - 1] for c in lab["class_id"]], dtype=object)
    inval = lgeoms[~valid]
    ambiguous = np.zeros(len(pgeoms), bool)
    if len(inval) and len(pgeoms):
        hit = shapely.STRtree(inval).query(pgeoms, predicate="intersects")[0]
        ambiguous[np.unique(hit)] = True
    pi = np.flatnonzero(p_in & ~ambiguous)
    ti = np.flatnonzero(valid & inside(lgeoms, annotated))
    comp = compare_objects(pgeoms[pi], inst["class"].to_numpy(object)[pi], lgeoms[ti], lnames[ti], iou=cfg.iou)
    fp, fn = pi[comp.false_positives], ti[comp.false_negatives]
    res = _SceneResult({}, matched_scores=inst["score"].to_numpy(float)[pi[comp.pred_matched]].tolist())
    date = s.date.isoformat() if s.date else None
    if len(fp):
        g = inst.iloc[fp][["class", "score", "area_m2", "geometry"]].copy()
        g["best_iou"] = comp.pred_best_iou[comp.false_positives]
        g["scene"], g["scene_date"], g[MINED_FIELD] = s.name, date, inp.sha
        res.fp = to_crs(gpd.GeoDataFrame(g, geometry="geometry", crs=crs_wkt), inp.out_crs)
    if len(fn):
        fgeo = lgeoms[fn]
        columns = {
            "class": lnames[fn],
            "area_m2": geodesic_areas_m2(fgeo, s.grid.crs),
            "best_iou": comp.truth_best_iou[comp.false_negatives],
            "scene": s.name,
            "scene_date": date,
        }
        res.fn = to_crs(gpd.GeoDataFrame(columns, geometry=list(fgeo), crs=crs_wkt), inp.out_crs)
    counts = {
        "predicted_inside_coverage": int(p_in.sum()),
        "ambiguous": int((p_in & ambiguous).sum()),
        "labels_inside_coverage": len(ti),
        "invalid_labels": int((~valid).sum()),
        "matched": int(comp.pred_matched.sum()),
        "false_positives": len(fp),
        "false_negatives": len(fn),
    }
    return res, p_in, counts


def _review_scene(
    inp: _Inputs, s: Any, pred: _Prediction, predicted: Any, annotated: Any, p_in: np.ndarray
) -> gpd.GeoDataFrame | None:
    """The review cells of one scene's unannotated area (output CRS), or None when there are none."""
    from geoseg.io.vectors import to_crs

    unann = shapely.difference(predicted, annotated)
    if unann.is_empty:
        return None
    pgeoms = pred.geoms
    outside = pgeoms[~p_in & inside(pgeoms, predicted)] if len(pgeoms) else pgeoms
    polys, stats = review_grid(
        pred.pred_dir / "probabilities.tif",
        annotated,
        cell=inp.cell,
        threshold=pred.threshold,
        object_points=shapely.point_on_surface(outside) if len(outside) else [],
    )
    if not polys:
        return None
    date = s.date.isoformat() if s.date else None
    g = gpd.GeoDataFrame({**stats, "scene": s.name, "scene_date": date}, geometry=polys, crs=s.grid.crs.to_wkt())
    return to_crs(g, inp.out_crs)


_FP_COLUMNS = ["class", "score", "area_m2", "best_iou", "scene", "scene_date", MINED_FIELD]
_FN_COLUMNS = ["class", "area_m2", "best_iou", "scene", "scene_date"]
_REVIEW_COLUMNS = [
    "row_off",
    "col_off",
    "pixels",
    "uncertainty",
    "foreground",
    "objects",
    "score",
    "scene",
    "scene_date",
]
_COUNT_KEYS = (
    "predicted_inside_coverage",
    "ambiguous",
    "labels_inside_coverage",
    "matched",
    "false_positives",
    "false_negatives",
    "review_cells",
)
#: per layer: graduated ``score`` ranges (None: categorized by class), style name, style description
_STYLES = {
    "false_positives": (SCORE_RANGES, "by score", "geoseg mined false positives (by score)"),
    "false_negatives": (None, "by class", "geoseg missed labels (by class)"),
    "review": (REVIEW_RANGES, "by score", "geoseg review cells (by score)"),
}


def _write_outputs(cfg: MineConfig, inp: _Inputs, out: Path, results: list[_SceneResult], t_start: float) -> MineResult:
    """Merge the scenes' rows (review ranked), write the three styled layers, ``mine.json`` and ``run.json``
    through a staging directory."""
    crs = inp.out_crs
    fps = _concat([r.fp for r in results if r.fp is not None], crs, _FP_COLUMNS)
    fns = _concat([r.fn for r in results if r.fn is not None], crs, _FN_COLUMNS)
    rvs = _concat([r.review for r in results if r.review is not None], crs, _REVIEW_COLUMNS)
    rvs.insert(0, "rank", rank_cells(rvs["score"].to_numpy(float), rvs["objects"].to_numpy(int)))
    rvs = rvs.sort_values("rank", kind="stable").reset_index(drop=True)
    per_scene = [r.info for r in results]
    counts = {k: sum(int(p.get(k, 0)) for p in per_scene) for k in _COUNT_KEYS}
    files = {
        "false_positives": str(out / FALSE_POSITIVES),
        "false_negatives": str(out / FALSE_NEGATIVES),
        "review": str(out / REVIEW),
        "predict": str(out / "predict"),
    }
    with staged_output(out) as stage:
        _write_styled(fps, stage / FALSE_POSITIVES, "false_positives", inp.model_classes)
        _write_styled(fns, stage / FALSE_NEGATIVES, "false_negatives", inp.model_classes)
        if inp.review:
            _write_styled(rvs, stage / REVIEW, "review", inp.model_classes)
        else:
            files["review"] = ""
            (out / REVIEW).unlink(missing_ok=True)  # (an older run's grid would not match these options)
        matched = [v for r in results for v in r.matched_scores]
        write_json(stage / "mine.json", _mine_json(cfg, inp, fps, fns, matched, counts, per_scene, files))
        run_json = {
            "stage": "mine",
            "config": to_dict(cfg),
            "model_dir": str(inp.model_dir.resolve()),
            "counts": counts,
            "total_s": round(time.perf_counter() - t_start, 3),
        }
        write_json(stage / "run.json", run_json)
    log.info(
        "mine: %d false positives, %d false negatives, %d review cells -> %s",
        counts["false_positives"],
        counts["false_negatives"],
        counts["review_cells"],
        out,
    )
    return MineResult(out, counts, files, out / "mine.json", per_scene)


def _mine_json(
    cfg: MineConfig,
    inp: _Inputs,
    fps: gpd.GeoDataFrame,
    fns: gpd.GeoDataFrame,
    matched_scores: list[float],
    counts: dict[str, int],
    per_scene: list[dict[str, Any]],
    files: dict[str, str],
) -> dict[str, Any]:
    """The ``mine.json`` payload (see the module docstring)."""
    return {
        "stage": "mine",
        "model": {"path": str(inp.model_dir.resolve()), "weights_sha256": inp.sha, "config": inp.model_config},
        "options": to_dict(cfg),
        "counts": counts,
        "scores": {"false_positives": _stats(fps["score"].to_numpy(float)), "matched": _stats(matched_scores)},
        "areas_m2": {
            "false_positives": _stats(fps["area_m2"].to_numpy(float)),
            "false_negatives": _stats(fns["area_m2"].to_numpy(float)),
        },
        "review": {
            "cell_px": inp.cell,
            "enabled": inp.review,
            "min_share": REVIEW_MIN_SHARE,
            "score": "max(uncertainty, foreground); uncertainty = mean 2 min(p, 1 - p), p = 1 - "
            "P(background); foreground = share of p >= the instance threshold",
        },
        "rules": {
            "match": f"one-to-one, same class, IoU >= {cfg.iou} (geoseg evaluate's matching)",
            "inside": "representative point in coverage ∩ predicted area",
            "ambiguous": "predictions touching a label not valid at the scene date are left out",
        },
        "per_scene": per_scene,
        "files": files,
        "crs": inp.out_crs.to_wkt(),
    }


def _write_styled(gdf: gpd.GeoDataFrame, path: Path, layer: str, model_classes: list[dict[str, Any]]) -> None:
    """Write ``layer`` (see :func:`_write`) with its default QGIS style from :data:`_STYLES`."""
    from geoseg.qgis import graduated_qml, style_gpkg

    ranges, style_name, description = _STYLES[layer]
    _write(gdf, path, layer)
    if ranges is None:
        style_gpkg(path, layer, model_classes, style_name=style_name, description=description)
    else:
        style_gpkg(path, layer, [], qml=graduated_qml("score", ranges), style_name=style_name, description=description)


def _concat(parts: list[gpd.GeoDataFrame], crs: Any, columns: list[str]) -> gpd.GeoDataFrame:
    import pandas as pd

    if not parts:
        return gpd.GeoDataFrame({c: [] for c in columns}, geometry=[], crs=crs.to_wkt())
    return gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), geometry="geometry", crs=crs.to_wkt())


def _write(gdf: gpd.GeoDataFrame, path: Path, layer: str) -> None:
    from geoseg.io.vectors import GPKG_OPTIONS

    gdf = gdf.copy()
    for c in gdf.columns:
        if c != gdf.geometry.name and gdf[c].dtype == object:
            gdf[c] = gdf[c].astype(str).where(gdf[c].notna(), None)
    gdf.to_file(
        path,
        driver="GPKG",
        layer=layer,
        engine="pyogrio",
        geometry_type="MultiPolygon",
        promote_to_multi=True,
        dataset_options=GPKG_OPTIONS,
    )
