"""``geoseg predict``: the one function doing I/O around the pure planning/stitching core.

Layout of ``OUT`` (documented in the README):

- one scene: ``OUT/probabilities.tif``, ``OUT/classes.tif``, ``OUT/instances.gpkg``, ``*.qml``;
- several scenes: the same files in ``OUT/<scene stem>/`` for each scene (each on its own grid,
  overlapping scenes are predicted independently; no mosaic);
- ``OUT/project.qgs`` and ``OUT/run.json`` (config, model config, per-scene timing) in both cases.

Phases: :func:`_prepare` (validate every input, plan the windows; nothing written) -> the row ranges
(:func:`run_row_range`, one task per :class:`~geoseg.predict.plan.RowRange` of a scene, in-process or
on dask through :class:`geoseg.parallel.Executor`) -> assemble (:func:`_assemble_scenes`: COGs,
polygons and styles per scene) -> publish (:func:`_publish`: move into ``OUT``, ``project.qgs``,
``run.json``).

Work happens in ``OUT/.geoseg-predict/`` (row chunks + per-range checkpoints); finished files are
moved into place only when every scene is done, so a file with a final name is always complete.
``--resume`` continues from the checkpoints; without it an old work folder is discarded.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from geoseg import __version__
from geoseg.classes import ClassTable
from geoseg.config import StageConfig, naming, read_json, to_dict, write_json
from geoseg.errors import ConfigError, InputError, ModelError, NoOverlapError, first_line, format_bounds
from geoseg.grid import Window
from geoseg.io.gdal_env import gdal_env
from geoseg.io.lock import output_lock
from geoseg.io.output import check_writable_dir, warn_if_low_space
from geoseg.io.rasters import SceneInfo, is_remote, open_raster, read_window, scene_info, scene_key
from geoseg.io.vectors import read_aoi
from geoseg.parallel import Executor, is_distributed
from geoseg.postprocess import PostProcess, resolve_postprocess
from geoseg.predict.blend import BLEND_WINDOWS, weight_2d
from geoseg.predict.plan import RowRange, ScenePlan, aoi_geometry, plan_scene
from geoseg.predict.stitch import NODATA_U8, PredictFn, RowReader, RowsOut, input_width, predict_row_range
from geoseg.predict.writer import CLASSES, PROBABILITIES, ChunkStore, RowRangeWriter, assemble_cogs

log = logging.getLogger(__name__)

WORK_DIR = ".geoseg-predict"
INSTANCES = "instances.gpkg"
COMPRESSIONS = ("ZSTD", "DEFLATE", "LZW", "NONE")
ENGINES = ("torch", "onnx")


@dataclass(frozen=True)
class PredictConfig(StageConfig):
    """Options of ``geoseg predict`` (written to ``run.json``).

    ``overlap`` (pixels) defaults to a quarter of the tile; ``tile_size`` to the model's;
    ``bands`` are 1-based scene band indexes fed to the model (default: all, in order);
    ``threshold``, ``min_area`` and ``fill_holes`` (true m²) and ``core_boundary_max`` default
    (None) to the model's calibrated or data-derived values (:mod:`geoseg.postprocess`);
    ``regularize`` names the classes whose instance polygons get regular footprints (see
    :mod:`geoseg.regularize`); ``workers`` > 1 starts a local dask cluster of that many worker processes
    (1, and the legacy 0, run in-process), ``scheduler`` connects to an existing one (:mod:`geoseg.parallel`).
    ``engine`` ``onnx`` runs the model with ONNX Runtime: ``model`` is then a run/model directory (its
    ``model.onnx`` when exported from the current weights, else exported into the work folder) or an
    ``.onnx`` file with its ``.onnx.json`` (or embedded config) beside it. ``scenes`` may be URLs or STAC
    Items (:func:`geoseg.io.rasters.resolve_scene`); ``asset`` picks the STAC asset.
    """

    scenes: tuple[str, ...]
    model: str
    out: str
    aoi: str | None = None
    bbox: str | None = None
    overlap: int | None = None
    tile_size: int | None = None
    batch_size: int = 8
    device: str = "auto"
    amp: bool = True
    tta: bool = False
    float_output: bool = False
    blend: str = "hann"
    bands: tuple[int, ...] | None = None
    threshold: float | None = None
    min_area: float | None = None
    fill_holes: float | None = None
    core_boundary_max: float | None = None
    regularize: tuple[str, ...] = ()
    vectorize: bool = True
    resume: bool = False
    workers: int = 1
    scheduler: str | None = None
    compress: str = "ZSTD"
    progress: bool = True
    engine: str = "torch"
    asset: str | None = None

    def validate(self) -> None:
        """Range checks that need no file (run on construction, so before any stage of ``geoseg run``)."""
        if not self.scenes:
            raise ConfigError("give at least one scene")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"--workers must be an integer >= 1 (1 = in-process), got {self.workers!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"--batch-size must be an integer >= 1, got {self.batch_size!r}")
        if str(self.compress).upper() not in COMPRESSIONS:
            raise ConfigError(f"--compress {self.compress!r}: use one of {', '.join(COMPRESSIONS)}")
        with naming("--blend"):
            BLEND_WINDOWS[self.blend]  # unknown name: the error lists the valid ones
        for opt, val in (("--threshold", self.threshold), ("--core-boundary-max", self.core_boundary_max)):
            if val is not None and not (isinstance(val, int | float) and 0.0 < val < 1.0):
                raise ConfigError(f"{opt} must be between 0 and 1, got {val!r}")
        for opt, val in (("--min-area", self.min_area), ("--fill-holes", self.fill_holes)):
            if val is not None and not (isinstance(val, int | float) and val >= 0):
                raise ConfigError(f"{opt} must be >= 0 m², got {val!r}")
        for opt, ival in (("--overlap", self.overlap), ("--tile-size", self.tile_size)):
            if ival is not None and not (isinstance(ival, int) and ival >= 0):
                raise ConfigError(f"{opt} must be an integer >= 0, got {ival!r}")
        if self.bands is not None and not all(isinstance(b, int) and b >= 1 for b in self.bands):
            raise ConfigError(f"--bands must be 1-based band numbers, got {self.bands!r}")
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine {self.engine!r}: use one of {', '.join(ENGINES)}")


@dataclass
class SceneResult:
    """One scene's entry in ``run.json``; ``bands`` is the number of row ranges (tasks) it was split in
    (the key predates the :class:`~geoseg.predict.plan.RowRange` name and is kept for readers of run.json)."""

    scene: str
    out_dir: str
    date: str | None
    windows: int
    bands: int
    plan: dict[str, Any]
    timing_s: dict[str, float] = field(default_factory=dict)
    polygons: int | None = None
    files: list[str] = field(default_factory=list)


@dataclass
class PredictResult:
    out: Path
    scenes: list[SceneResult]
    skipped: list[str]
    run_json: Path


@dataclass(frozen=True)
class RowRangeTask:
    """Everything a (possibly remote) worker needs to predict one row range of one scene (picklable).

    ``indexes`` are the 1-based spectral bands read from the scene."""

    scene: str
    indexes: tuple[int, ...]
    plan: ScenePlan
    rows: RowRange
    work: str
    model: str
    device: str
    amp: bool
    tta: bool
    batch_size: int
    float_output: bool
    blend: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    engine: str = "torch"
    onnx: str | None = None


# --------------------------------------------------------------------------------------------
def make_reader(ds: Any, plan: ScenePlan, indexes: tuple[int, ...], mean: np.ndarray, std: np.ndarray) -> RowReader:
    """Row reader for the stitcher: normalised float32 over the plan's input columns + keep mask.

    ``keep`` = scene valid (nodata/mask) and pixel centre inside the AOI. Invalid pixels are set
    to 0 (the band mean) before the model sees them. Reads inside the scene are not boundless.
    """
    width = input_width(plan)
    mean32 = np.asarray(mean, np.float32)[:, None, None]
    inv_std = (1.0 / np.asarray(std, np.float64)).astype(np.float32)[:, None, None]
    identity = bool(np.all(mean32 == 0) and np.all(inv_std == 1))
    idx = list(indexes)

    def read(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        h = r1 - r0
        c0 = plan.col_lo
        rr0, rr1 = max(r0, 0), min(r1, ds.height)
        cc1 = min(c0 + width, ds.width)
        if rr1 <= rr0 or cc1 <= c0:
            return np.zeros((len(idx), h, width), np.float32), np.zeros((h, width), bool)
        win = Window(c0, rr0, cc1 - c0, rr1 - rr0)
        data, v = read_window(ds, win, idx)  # the same validity rule as the tile stage
        x = data.astype(np.float32, copy=False)
        if not identity:  # in place: no full-size temporaries
            x -= mean32
            x *= inv_std
        x[:, ~v] = 0.0
        if x.shape[1:] != (h, width):  # strip passes the scene edge: pad (invalid, 0)
            out = np.zeros((len(idx), h, width), np.float32)
            valid = np.zeros((h, width), bool)
            out[:, rr0 - r0 : rr1 - r0, : cc1 - c0] = x
            valid[rr0 - r0 : rr1 - r0, : cc1 - c0] = v
            x, v = out, valid
        return x, v & plan.aoi_mask((r0, r1), width)

    return read


def read_cache_bytes(ds: Any, tile: int) -> int:
    """GDAL block cache for reading a scene strip by strip: the block rows under one strip of windows.

    Sized to the work (not a constant) so memory stays bounded by the scene width: a too-small
    cache re-decodes blocks, a whole-scene one grows with the scene. 64 MB .. 1 GB, in bytes.
    """
    block_h = int(ds.block_shapes[0][0]) if ds.block_shapes else 256
    row_bytes = ds.width * ds.count * np.dtype(ds.dtypes[0]).itemsize
    return int(min(max(row_bytes * (tile + 2 * block_h), 64 * 2**20), 2**30))


def run_row_range(
    task: RowRangeTask, predict_fn: PredictFn | None = None, on_windows: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Predict one row range into the scene's chunk store (resumes from its checkpoint). Worker-safe."""
    t0 = time.perf_counter()
    store = ChunkStore(task.work)
    index = task.rows.index
    if store.range_finished(index):
        return {"range": index, "windows": 0, "seconds": 0.0, "skipped": True, "resumed": True}
    device, predict_fn = _task_predictor(task, predict_fn)
    emit_from = store.rows_done(index)
    writer = RowRangeWriter(store, index)
    valid = [0]

    def on_rows(rows: RowsOut) -> None:
        valid[0] += int(np.count_nonzero(rows.classes != NODATA_U8))
        writer.rows(rows)

    weight = weight_2d(task.blend, task.plan.tile)
    with gdal_env(), open_raster(task.scene) as ds, rasterio.Env(GDAL_CACHEMAX=read_cache_bytes(ds, task.plan.tile)):
        reader = make_reader(ds, task.plan, task.indexes, np.array(task.mean), np.array(task.std))
        try:
            n = predict_row_range(
                task.plan,
                task.rows,
                reader,
                predict_fn,
                on_rows,
                num_classes=task.num_classes,
                weight=weight,
                batch_size=task.batch_size,
                device=device,
                float_output=task.float_output,
                emit_from=emit_from,
                on_windows=on_windows,
                on_done=writer.done,
            )
        finally:
            writer.close()
    store.mark(index, task.rows.row_hi, finished=True)
    return {"range": index, "windows": n, "seconds": time.perf_counter() - t0, "skipped": False,
            "valid_px": valid[0], "resumed": emit_from > 0}  # fmt: skip


def _task_predictor(task: RowRangeTask, predict_fn: PredictFn | None) -> tuple[Any, PredictFn]:
    """The device and model forward of a task: ``predict_fn`` when given, else the (cached) model or ONNX session."""
    from geoseg.predict.adapter import TorchPredictor, cached_model, resolve_device

    device = resolve_device(task.device)
    if predict_fn is not None:
        return device, predict_fn
    if task.engine == "onnx":
        from geoseg.predict.adapter import OnnxPredictor, cached_session

        assert task.onnx is not None  # set by run() for the onnx engine
        return device, OnnxPredictor(cached_session(task.onnx, device), device, tta=task.tta)
    net, _ = cached_model(task.model, device)
    return device, TorchPredictor(net, device, amp=task.amp, tta=task.tta)


# --------------------------------------------------------------------------------------------
@dataclass
class _Prepared:
    cfg: PredictConfig
    model_dir: Path
    model_cfg: dict[str, Any]
    infos: list[SceneInfo]
    plans: list[ScenePlan]
    skipped: list[str]
    indexes: tuple[int, ...]
    tile: int
    overlap: int
    out: Path
    scene_dirs: list[Path]
    fingerprint: str
    post: PostProcess | None = None
    onnx: Path | None = None  # engine onnx: the ONNX file to run (None: export from model_dir in run())


def _prepare(cfg: PredictConfig) -> _Prepared:
    """Phase 1: validate every input and plan every scene before anything is written (bad input -> one-line
    GeosegError). Reads the model config (not the weights), the scene headers and a few sample windows."""
    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")
    model_dir, mcfg, onnx_file = _model_config(cfg)
    tile = int(cfg.tile_size or mcfg["tile_size"])
    overlap = tile // 4 if cfg.overlap is None else int(cfg.overlap)
    if not 0 <= overlap < tile:
        raise ConfigError(f"--overlap must be in [0, {tile - 1}] pixels for tile size {tile}, got {overlap}")
    infos = _scene_infos(cfg, int(mcfg["in_channels"]), mcfg, model_dir)
    aoi = read_aoi(cfg.aoi, cfg.bbox)
    kept, plans, skipped = _plan_scenes(cfg, aoi, infos, tile, overlap)
    for info, plan in zip(kept, plans, strict=True):
        _warn_subpixel_aoi(info, plan)
        idx = tuple(cfg.bands) if cfg.bands else tuple(range(1, info.count + 1))
        _warn_band_statistics(info, plan, idx, mcfg["normalisation"], model_dir)
    indexes = tuple(cfg.bands) if cfg.bands else tuple(range(1, int(mcfg["in_channels"]) + 1))
    scene_dirs = [out if len(kept) == 1 else out / i.stem for i in kept]
    fp = _fingerprint(cfg, onnx_file or model_dir / "model.pt", mcfg, kept, plans, indexes)
    post = resolve_postprocess(
        mcfg, fg_classes=list(ClassTable.from_model_config(mcfg).foreground),
        threshold=cfg.threshold, min_area_m2=cfg.min_area, fill_holes_m2=cfg.fill_holes,
        core_boundary_max=cfg.core_boundary_max,
    )  # fmt: skip
    return _Prepared(
        cfg, model_dir, mcfg, kept, plans, skipped, indexes, tile, overlap, out, scene_dirs, fp, post, onnx_file
    )


def _model_config(cfg: PredictConfig) -> tuple[Path, dict[str, Any], Path | None]:
    """``(model_dir, model config, ONNX file or None)`` of ``--model``, checked (one-line ModelError)."""
    from geoseg.modeldir import read_model_config, resolve_model_dir

    onnx_file: Path | None = None
    try:
        if str(cfg.model).lower().endswith(".onnx"):
            from geoseg.export import read_onnx_config

            if cfg.engine != "onnx":
                raise ConfigError(f"--model {cfg.model}: an ONNX model needs --engine onnx")
            model_dir = onnx_file = Path(cfg.model)
            mcfg = read_onnx_config(onnx_file)
            cfg_path = onnx_file.with_name(onnx_file.name + ".json")
            for key in ("arch", "in_channels", "num_classes", "classes", "normalisation", "tile_size"):
                if key not in mcfg:
                    raise ModelError(f"{cfg_path}: missing key {key!r}; re-export the model")
        else:
            model_dir = resolve_model_dir(cfg.model)
            mcfg = read_model_config(model_dir)
            cfg_path = model_dir / "config.json"
            if cfg.engine == "onnx":
                from geoseg.export import onnx_for_run

                onnx_file = onnx_for_run(model_dir)
    except ConfigError as e:
        raise ModelError(str(e)) from None
    in_ch, k = int(mcfg["in_channels"]), int(mcfg["num_classes"])
    classes = mcfg["classes"]
    if len(classes) != k or sorted(int(c["id"]) for c in classes) != list(range(k)):
        raise ModelError(f"{cfg_path}: classes must list ids 0..{k - 1} (num_classes={k})")
    norm = mcfg["normalisation"]
    if len(norm.get("mean", [])) != in_ch or len(norm.get("std", [])) != in_ch:
        raise ModelError(f"{cfg_path}: normalisation needs {in_ch} mean/std values")
    if any(float(s) <= 0 for s in norm["std"]):
        raise ModelError(f"{cfg_path}: normalisation std must be > 0")
    if cfg.regularize:
        from geoseg.vectorize import regularize_class_ids

        regularize_class_ids(cfg.regularize, classes, mcfg.get("boundary_class"), what=str(model_dir))
    return model_dir, mcfg, onnx_file


def _scene_infos(cfg: PredictConfig, in_ch: int, mcfg: dict[str, Any], model_dir: Path) -> list[SceneInfo]:
    """Every scene's header, checked: unique stems, ``--bands`` in range and as many as the model's inputs."""
    infos = [scene_info(p, asset=cfg.asset) for p in cfg.scenes]
    stems = [i.stem for i in infos]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise InputError(f"scenes with the same file name stem {dup[0]!r}: outputs would collide; rename one")
    for info in infos:
        idx = tuple(cfg.bands) if cfg.bands else tuple(range(1, info.count + 1))
        bad = [i for i in idx if not 1 <= i <= info.count]
        if bad:
            raise InputError(f"{info.path}: --bands {bad[0]} out of range; the scene has {info.count} bands")
        if len(idx) != in_ch:
            names = ", ".join(str(b) for b in mcfg.get("bands", [])) or f"{in_ch} bands"
            raise ModelError(
                f"{info.path}: {len(idx)} band(s) but model {model_dir} expects {in_ch} ({names}); "
                "choose bands with --bands"
            )
    return infos


def _plan_scenes(
    cfg: PredictConfig, aoi: Any, infos: list[SceneInfo], tile: int, overlap: int
) -> tuple[list[SceneInfo], list[ScenePlan], list[str]]:
    """``(scenes the AOI touches, their plans, paths of the others)``; no scene touched: NoOverlapError."""
    plans: list[ScenePlan] = []
    kept: list[SceneInfo] = []
    skipped: list[str] = []
    for info in infos:
        plan = plan_scene(info.grid, aoi_geometry(aoi, info.grid), tile, overlap)
        if plan is None:
            skipped.append(info.path)
        else:
            plans.append(plan)
            kept.append(info)
    if not plans:
        raise NoOverlapError(_no_overlap_message(cfg, aoi, infos))
    for path in skipped:
        log.warning("%s: outside the AOI, skipped", path)
    return kept, plans, skipped


def _warn_subpixel_aoi(info: SceneInfo, plan: ScenePlan, max_px: int = 10_000_000) -> None:
    """Warn when the AOI touches the scene but covers no pixel centre (e.g. a quarter-pixel overlap)."""
    r = plan.region
    if r.width * r.height > max_px:  # a large overlap always covers some centre; don't rasterise it
        return
    rows = (int(r.row_off), int(r.row_off + r.height))
    if not plan.aoi_mask(rows).any():
        log.warning("%s: the AOI overlaps the scene by less than a pixel (it covers no pixel centre); "
                    "the outputs will be all nodata", info.path)  # fmt: skip


#: a band whose sampled median is this many training std away from the training mean gets a warning
STATS_WARN_Z = 4.0


def _warn_band_statistics(
    info: SceneInfo, plan: ScenePlan, indexes: tuple[int, ...], norm: dict[str, Any], model_dir: Path, n: int = 3
) -> None:
    """Sample ``n x n`` windows (256² or smaller) of the plan's region and warn about bands far from the model's
    training statistics (``|median - mean| > STATS_WARN_Z * std``, or spread > ``STATS_WARN_Z`` x std): the
    wrong bands, another sensor, or another radiometric scale. Reads at most ``n² x 256²`` pixels per band
    (local scenes only: for a URL these reads would be extra HTTP range requests)."""
    if is_remote(info.path):
        return
    mean, std = np.asarray(norm["mean"], np.float64), np.asarray(norm["std"], np.float64)
    r = plan.region
    size = int(min(256, r.width, r.height))
    if size <= 0:
        return
    rows = np.linspace(r.row_off, r.row_off + r.height - size, n).astype(int)
    cols = np.linspace(r.col_off, r.col_off + r.width - size, n).astype(int)
    samples: list[np.ndarray] = []
    try:
        with gdal_env(), open_raster(info.path) as ds:
            for r0 in sorted(set(rows.tolist())):
                for c0 in sorted(set(cols.tolist())):
                    data, v = read_window(ds, Window(c0, r0, size, size), list(indexes))
                    if v.any():
                        samples.append(data[:, v].astype(np.float64))
    except Exception as e:  # a check, not a stage: unreadable samples are reported by the predict itself
        log.debug("%s: band statistics not sampled (%s)", info.path, first_line(e))
        return
    if not samples:
        return
    px = np.concatenate(samples, axis=1)
    med = np.median(px, axis=1)
    spread = np.percentile(px, 84, axis=1) - np.percentile(px, 16, axis=1)  # ~2 std for a normal band
    bad = [
        f"band {b} (median {m:.4g}, model mean {mu:.4g} ± {sd:.4g})"
        for b, m, sp, mu, sd in zip(indexes, med, spread, mean, std, strict=True)
        if abs(m - mu) > STATS_WARN_Z * sd or sp > 2 * STATS_WARN_Z * sd
    ]
    if bad:
        log.warning("%s: far from the training statistics of model %s: %s; check --bands and the sensor/scale",
                    info.path, model_dir, "; ".join(bad))  # fmt: skip


def _no_overlap_message(cfg: PredictConfig, aoi: Any, infos: list[SceneInfo]) -> str:
    src = cfg.aoi or f"--bbox {cfg.bbox}"
    ab = format_bounds(aoi.total_bounds)[1:-1]
    aoi_crs = aoi.crs.to_string() if aoi.crs else "?"
    parts = []
    for i in infos:
        import geopandas as gpd

        fp = gpd.GeoSeries([i.grid.footprint], crs=i.grid.crs.to_wkt()).to_crs(aoi.crs)
        parts.append(f"{i.name} [{format_bounds(fp.total_bounds)[1:-1]}]")
    return f"{src}: AOI [{ab}] ({aoi_crs}) misses every scene: {'; '.join(parts)} (same CRS); check the AOI and scenes"


def _fingerprint(
    cfg: PredictConfig,
    wt: Path,
    mcfg: dict[str, Any],
    infos: list[SceneInfo],
    plans: list[ScenePlan],
    indexes: tuple[int, ...],
) -> str:
    h = hashlib.sha256()
    st = wt.stat()
    h.update(json.dumps([str(wt.resolve()), st.st_size, st.st_mtime_ns], sort_keys=True).encode())
    h.update(json.dumps({k: v for k, v in mcfg.items() if k not in ("created",)}, sort_keys=True, default=str).encode())
    for i, p in zip(infos, plans, strict=True):
        s = (0, 0) if is_remote(i.path) else (Path(i.path).stat().st_size, Path(i.path).stat().st_mtime_ns)
        h.update(json.dumps([scene_key(i.path), *s, p.fingerprint()]).encode())
    h.update(json.dumps([cfg.tta, cfg.float_output, cfg.blend, list(indexes), cfg.amp, cfg.engine]).encode())
    return h.hexdigest()[:20]


def _range_tasks(
    prep: _Prepared, work: Path, n_ranges: list[int], onnx: Path | None = None
) -> list[list[RowRangeTask]]:
    """Per scene, its row-range tasks (``n_ranges[i]`` or fewer for scene ``i``, each writing to its work folder)."""
    cfg, mcfg = prep.cfg, prep.model_cfg
    mean = tuple(float(v) for v in mcfg["normalisation"]["mean"])
    std = tuple(float(v) for v in mcfg["normalisation"]["std"])
    k = int(mcfg["num_classes"])
    return [
        [
            RowRangeTask(scene_key(info.path), prep.indexes, plan, rr, str((work / f"scene_{i:03d}").resolve()),
                         str(prep.model_dir.resolve()), cfg.device,
                         cfg.amp, cfg.tta, cfg.batch_size, cfg.float_output, cfg.blend, mean, std, k,
                         engine=cfg.engine, onnx=str(onnx.resolve()) if onnx else None)
            for rr in plan.row_ranges(n_ranges[i])
        ]
        for i, (info, plan) in enumerate(zip(prep.infos, prep.plans, strict=True))
    ]  # fmt: skip


def _finish_scene(
    prep: _Prepared, i: int, stage: Path, store: ChunkStore
) -> tuple[list[Path], int | None, dict[str, float]]:
    """Assemble the COGs, vectorize and style one scene into ``stage`` (work folder)."""
    info, plan, mcfg, cfg = prep.infos[i], prep.plans[i], prep.model_cfg, prep.cfg
    timing: dict[str, float] = {}
    t = time.perf_counter()
    tags = {
        "GEOSEG_VERSION": __version__,
        "MODEL": str(prep.model_dir.resolve()),
        "ARCH": str(mcfg.get("arch")),
        "ENCODER": str(mcfg.get("encoder")),
        "SCENE": info.name,
        "SCENE_PATH": scene_key(info.path),
        "SCENE_DATE": info.date.isoformat() if info.date else "",
        "TILE_SIZE": str(plan.tile),
        "OVERLAP": str(plan.overlap),
        "BLEND": cfg.blend,
        "TTA": str(cfg.tta),
    }
    if info.date:
        tags["ACQUISITIONDATETIME"] = info.date.isoformat()
    classes = mcfg["classes"]
    with gdal_env():
        prob, cls = assemble_cogs(
            store,
            info.grid,
            stage,
            classes=classes,
            float_output=cfg.float_output,
            tags=tags,
            compress=cfg.compress.upper(),
        )
    timing["cog_s"] = time.perf_counter() - t
    files = [prob, cls]
    n_poly: int | None = None
    from geoseg import qgis as qg

    if cfg.vectorize:
        t = time.perf_counter()
        n_poly = _vectorize_scene(prep, i, prob, stage / INSTANCES)
        if (stage / INSTANCES).exists():
            files.append(stage / INSTANCES)
        timing["vectorize_s"] = time.perf_counter() - t
    files += [Path(p) for p in qg.write_raster_styles(cls, prob, classes, boundary_class=mcfg.get("boundary_class"))]
    if (stage / INSTANCES).exists():
        qg.style_gpkg(stage / INSTANCES, "instances", classes)
    return files, n_poly, timing


def _vectorize_scene(prep: _Prepared, i: int, prob: Path, gpkg: Path) -> int:
    """Instance polygons of scene ``i`` from its ``probabilities.tif`` into ``gpkg``; returns their number."""
    from geoseg import vectorize as vec
    from geoseg.progress import quiet_progress

    info, mcfg, post = prep.infos[i], prep.model_cfg, prep.post
    assert post is not None  # resolved in _prepare
    with gdal_env(), quiet_progress(not prep.cfg.progress):
        return int(
            vec.vectorize_prediction(
                prob,
                gpkg,
                classes=mcfg["classes"],
                boundary_class=mcfg.get("boundary_class"),
                threshold=post.threshold,
                min_area_m2=post.min_area_m2,
                fill_holes_m2=post.fill_holes_m2,
                core_boundary_max=post.core_boundary_max,
                simplify_px=post.simplify_px,
                regularize=tuple(prep.cfg.regularize),
                scene=info.name,
                scene_date=info.date.isoformat() if info.date else None,
            )
        )


def run(config: PredictConfig, *, predict_fn: PredictFn | None = None) -> PredictResult:
    """Predict every scene over the AOI and write the outputs (see the module docstring).

    ``predict_fn`` replaces the model's forward (tests: identity model); the model directory still
    supplies classes, normalisation and tile size. It is only used in-process (not with dask).
    Memory: bounded by strip size (tile x scene width x bands/classes), never by scene height.
    One run per ``--out`` at a time (:func:`geoseg.io.lock.output_lock`).
    """
    check_writable_dir(config.out)
    with output_lock(config.out):
        return _run(config, predict_fn)


def _run(config: PredictConfig, predict_fn: PredictFn | None) -> PredictResult:
    """prepare -> run the row ranges -> assemble each scene -> publish."""
    t_start = time.perf_counter()
    prep = _prepare(config)
    cfg = prep.cfg
    per_px = (int(prep.model_cfg["num_classes"]) + 1) * (4 if cfg.float_output else 1) * 2  # COGs + work chunks
    warn_if_low_space(cfg.out, sum(i.grid.width * i.grid.height * per_px for i in prep.infos))
    _check_weights(prep, predict_fn)
    work = prep.out / WORK_DIR
    state = _resume_state(prep, work)
    with Executor(cfg.workers, cfg.scheduler, processes=True, what="predict task", resumable=True) as ex:
        if state is None:
            state = _new_work(prep, work, ex.n_workers)
        onnx = _onnx_for_tasks(prep, work, predict_fn)
        tasks = _range_tasks(prep, work, [int(n) for n in state["bands"]], onnx)
        range_stats = _run_ranges(prep, tasks, ex, predict_fn)
    for i, info in enumerate(prep.infos):
        if not any(b.get("resumed") for b in range_stats[i]) and sum(b.get("valid_px", 0) for b in range_stats[i]) == 0:
            log.warning("%s: no valid pixel inside the AOI (the scene is nodata/NaN there, or the AOI covers no "
                        "pixel centre); the outputs are all nodata", info.path)  # fmt: skip
    results, staged = _assemble_scenes(prep, work, tasks, range_stats)
    return _publish(prep, work, results, staged, t_start)


def _check_weights(prep: _Prepared, predict_fn: PredictFn | None) -> None:
    """Load the weights (or ONNX session) once before anything is written: unreadable ones fail here."""
    cfg = prep.cfg
    if predict_fn is not None:
        return
    from geoseg.predict.adapter import resolve_device

    if cfg.engine == "onnx":
        from geoseg.export import require_onnx
        from geoseg.predict.adapter import cached_session

        require_onnx()
        if prep.onnx is not None:
            cached_session(str(prep.onnx), resolve_device(cfg.device))
            return
    elif not is_distributed(cfg.workers, cfg.scheduler):
        from geoseg.predict.adapter import cached_model

        cached_model(str(prep.model_dir), resolve_device(cfg.device))  # in-process: the tasks reuse it
        return
    from geoseg.modeldir import load_model

    load_model(prep.model_dir, "cpu")  # (dask: each worker loads its own copy)
    if cfg.engine != "onnx":
        resolve_device(cfg.device)


def _resume_state(prep: _Prepared, work: Path) -> dict[str, Any] | None:
    """The work folder's state when ``--resume`` can continue it (else None); another run's: ConfigError."""
    cfg, state_path = prep.cfg, work / "state.json"
    if work.exists() and cfg.resume and state_path.exists():
        state = read_json(state_path, what="predict work state")
        if state.get("fingerprint") != prep.fingerprint:
            raise ConfigError(
                f"{work}: left by a run with other scenes/model/AOI/options; rerun without --resume to start over"
            )
        log.info("resuming from %s", work)
        return state
    if cfg.resume:
        log.info("nothing to resume in %s; starting", prep.out)
    return None


def _new_work(prep: _Prepared, work: Path, n_workers: int) -> dict[str, Any]:
    """A fresh work folder (an old one is discarded) and its state: the fingerprint and, per scene, the
    number of row ranges (enough to keep ``n_workers`` busy; outputs do not depend on it)."""
    if work.exists():
        log.info("discarding the unfinished run in %s (use --resume to continue it)", work)
        shutil.rmtree(work)
    per_scene = max(1, math.ceil(n_workers / len(prep.plans)))
    state = {"fingerprint": prep.fingerprint, "bands": [min(per_scene, len(p.strips)) for p in prep.plans]}
    work.mkdir(parents=True)
    write_json(work / "state.json", state)
    return state


def _onnx_for_tasks(prep: _Prepared, work: Path, predict_fn: PredictFn | None) -> Path | None:
    """The ONNX file the tasks run (engine onnx), exported into the work folder when the model has none."""
    onnx = prep.onnx
    if prep.cfg.engine == "onnx" and predict_fn is None and onnx is None:
        onnx = work / "model.onnx"
        if not onnx.exists():
            from geoseg.export import export_onnx

            res = export_onnx(prep.model_dir, onnx)
            log.info("exported %s to ONNX for this run (max abs diff vs torch %.2g); keep one with geoseg export",
                     prep.model_dir, res.max_abs_diff)  # fmt: skip
    return onnx


def _run_ranges(
    prep: _Prepared, tasks: list[list[RowRangeTask]], ex: Executor, predict_fn: PredictFn | None
) -> list[list[dict[str, Any]]]:
    """Phase 2: run every row-range task (in-process in order, or on dask); per scene, the tasks' stats."""
    stats: list[list[dict[str, Any]]] = [[] for _ in tasks]
    items = [((i, j), t) for i, ts in enumerate(tasks) for j, t in enumerate(ts)]
    if ex.distributed:
        bar = _bar(prep.cfg, len(items), "bands")
        fn: Callable[[RowRangeTask], dict[str, Any]] = run_row_range
    else:
        bar = _bar(prep.cfg, sum(p.n_windows for p in prep.plans), "windows")
        fn = functools.partial(run_row_range, predict_fn=predict_fn, on_windows=bar.update)
    try:
        for (i, _), st in ex.map(fn, items):
            stats[i].append(st)
            if ex.distributed:
                bar.update(1)
    finally:
        bar.close()
    return stats


def _assemble_scenes(
    prep: _Prepared, work: Path, tasks: list[list[RowRangeTask]], range_stats: list[list[dict[str, Any]]]
) -> tuple[list[SceneResult], list[tuple[Path, list[Path]]]]:
    """Phase 3: per scene, its outputs in the work folder (a resumed run reuses finished ones) and result."""
    cfg = prep.cfg
    results: list[SceneResult] = []
    staged: list[tuple[Path, list[Path]]] = []
    for i, info in enumerate(prep.infos):
        store = ChunkStore(work / f"scene_{i:03d}")
        stage = work / f"scene_{i:03d}_out"
        done = stage / ".done.json"
        if done.exists() and cfg.resume:
            meta = json.loads(done.read_text())
            files, n_poly, timing = [Path(f) for f in meta["files"]], meta["polygons"], meta["timing"]
        else:
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir(parents=True)
            files, n_poly, timing = _finish_scene(prep, i, stage, store)
            write_json(done, {"files": [str(f) for f in files], "polygons": n_poly, "timing": timing}, stamped=False)
        timing = {
            "predict_s": round(sum(b["seconds"] for b in range_stats[i]), 3),
            **{k2: round(v, 3) for k2, v in timing.items()},
        }
        staged.append((prep.scene_dirs[i], files))
        results.append(
            SceneResult(
                scene=info.path,
                out_dir=str(prep.scene_dirs[i]),
                date=info.date.isoformat() if info.date else None,
                windows=sum(b["windows"] for b in range_stats[i]),
                bands=len(tasks[i]),
                plan=prep.plans[i].to_dict(),
                timing_s=timing,
                polygons=n_poly,
                files=[str(prep.scene_dirs[i] / f.name) for f in files],
            )
        )
    return results, staged


def _publish(
    prep: _Prepared, work: Path, results: list[SceneResult], staged: list[tuple[Path, list[Path]]], t_start: float
) -> PredictResult:
    """Phase 4: everything done: move the finished files into place (one rename each), then the QGIS
    project and ``run.json``; the work folder is removed last."""
    cfg, out = prep.cfg, prep.out
    for dest_dir, files in staged:
        dest_dir.mkdir(parents=True, exist_ok=True)
        for f in files:
            if f.exists() or not (dest_dir / f.name).exists():  # (a resumed run may have moved it already)
                os.replace(f, dest_dir / f.name)  # a finished file: one atomic rename (same file system)
    from geoseg import qgis as qg

    rasters = [d / n for d, _ in staged for n in (PROBABILITIES, CLASSES)]
    vectors = [d / INSTANCES for d, _ in staged if (d / INSTANCES).exists()]
    with rasterio.Env(GDAL_CACHEMAX=64 * 2**20):  # it samples the imagery: keep the block cache small
        imagery = [Path(i.path).resolve() for i in prep.infos if not is_remote(i.path)]  # (remote: not in the project)
        project = qg.write_project(out, imagery, rasters, vectors)
    run_json = write_json(
        out / "run.json",
        {
            "stage": "predict",
            "config": to_dict(cfg),
            "model_dir": str(prep.model_dir.resolve()),
            "model_config": prep.model_cfg,
            "tile_size": prep.tile,
            "overlap": prep.overlap,
            "postprocess": prep.post.to_dict() if prep.post is not None else None,
            "layout": "flat" if len(prep.infos) == 1 else "per-scene",
            "scenes": [to_dict(r) for r in results],
            "skipped_scenes": prep.skipped,
            "project": str(project) if project else None,
            "total_s": round(time.perf_counter() - t_start, 3),
        },
    )
    shutil.rmtree(work, ignore_errors=True)
    return PredictResult(out, results, prep.skipped, run_json)


def _bar(cfg: PredictConfig, total: int, unit: str) -> Any:
    from geoseg.progress import tqdm

    return tqdm(total=total, unit=unit, desc="predict", disable=not cfg.progress, leave=False)


__all__ = ["PredictConfig", "PredictResult", "RowRangeTask", "SceneResult", "make_reader", "run", "run_row_range"]
