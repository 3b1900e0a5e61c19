"""``geoseg tile``: scenes + dated labels -> ``tiles.zarr`` + ``tiles.gpkg`` + ``dataset.json``.

Flow: validate everything (scenes, labels, dates, layers) before writing anything; scan every
tile of every scene in chunks (one full-resolution windowed read per chunk, labels rasterized once
per chunk, every tile's mask and every positive's image stashed encoded in one file per chunk);
select positives / hard / easy negatives and the spatially blocked split on the candidate table
(pure, seeded); write one zarr chunk per selected tile (stashed bytes copied, the negatives' images
read again); write the index and dataset.json. Everything goes to a staging directory moved into
``--out`` at the end (the stash is removed before).

Memory: bounded by the chunk size (``~32 MB`` of pixels) times the number of workers plus the
label polygons and a small per-tile table, never by scene size. Tiles of multiple scenes with
different CRSs are indexed in the first scene's CRS (``tiles_crs`` in dataset.json); their exact
source pixels are ``scene`` + ``row_off``/``col_off``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import logging
import math
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely

from geoseg.config import StageConfig, to_dict, write_json
from geoseg.errors import ConfigError, EmptyResultError, InputError, NoOverlapError
from geoseg.io.lock import output_lock
from geoseg.io.output import check_writable_dir, staged_output, warn_if_low_space
from geoseg.io.rasters import SceneInfo, open_raster, scene_info
from geoseg.io.vectors import to_crs
from geoseg.parallel import Executor
from geoseg.progress import tqdm
from geoseg.tile import sampling, store
from geoseg.tile.hardneg import read_hard_negatives
from geoseg.tile.labels import IGNORE, Labels, SceneLabels, class_table, read_polygons, read_scene_labels
from geoseg.tile.objects import BOUNDARY_RULE, auto_boundary_width, label_object_summary
from geoseg.tile.work import (
    STASH_COLUMNS,
    ExtractResult,
    ExtractTask,
    ScanResult,
    ScanTask,
    extract_chunk,
    gdal_cache_mb,
    scan_chunk,
)

log = logging.getLogger(__name__)

CHUNK_BYTES = 32 * 2**20  # pixels read per task (scan and extract), per worker
STASH_DIR = ".tile-stash"  # in the staging directory: the scan's encoded tiles (tile.work), removed after extract


@dataclass(frozen=True)
class TileConfig(StageConfig):
    """Options of ``geoseg tile`` (CLI names in brackets). Paths are strings for JSON round-trips."""

    scenes: tuple[str, ...]
    labels: str
    out: str
    tile_size: int = 256
    stride: int | None = None  # [--stride] pixels between tile origins; None = tile_size (no overlap)
    class_field: str | None = None  # [--class-field] None: "class" if present, else one class
    classes: tuple[str, ...] | None = None  # [--classes a,b,c] id order
    date_field: str = "date"
    valid_from_field: str = "valid_from"
    valid_to_field: str = "valid_to"
    labels_layer: str | None = None
    scene_dates: tuple[str, ...] = ()  # [--scene-date] one for all scenes, or one per scene
    asset: str | None = None  # [--asset] STAC Item asset (default: the first image asset)
    max_label_age: int | None = None  # days
    undated: str = "keep"  # keep | drop
    coverage: str | None = None
    hard_negatives: tuple[str, ...] = ()  # [--hard-negatives, repeatable] look-alike and geoseg-mined layers
    negative_ratio: float = 1.0
    hard_negative_share: float = 0.5
    min_positive_fraction: float = 0.01
    max_unusable_fraction: float = 0.5  # nodata or ignore
    val_fraction: float = 0.2
    val_block_tiles: int | str = "auto"  # [--val-block-tiles] block edge in tiles, or "auto" (see sampling)
    val_gap: int | None = None  # [--val-gap] strides between train and val tiles; None = no shared pixel
    val_area: str | None = None  # [--val-area] polygons: tiles intersecting them are val, no blocks
    boundary_width: int | None = None  # None: auto from the label object sizes (tile.objects)
    seed: int = 0
    workers: int = 1
    scheduler: str | None = None
    processes: bool = False  # LocalCluster workers as processes (default threads: faster start, less memory)
    progress: bool = True

    def normalize(self) -> None:
        hn: object = self.hard_negatives
        if hn is None or isinstance(hn, (str, Path)):  # one layer (older pipelines, Python callers)
            self._set("hard_negatives", () if hn is None else (str(hn),))
        elif isinstance(hn, list):
            self._set("hard_negatives", tuple(str(h) for h in hn))
        vbt = self.val_block_tiles
        if isinstance(vbt, str) and vbt.strip().isdigit():  # "8" from a command line or --set
            self._set("val_block_tiles", int(vbt))

    def validate(self) -> None:
        """Raise :class:`ConfigError` for out-of-range options (one line, naming the option)."""
        vbt = self.val_block_tiles
        checks = [
            (len(self.scenes) > 0, "give at least one SCENE"),
            (self.tile_size >= 8, "--tile-size must be at least 8"),
            (self.stride is None or 1 <= self.stride <= self.tile_size, "--stride must be in [1, --tile-size]"),
            (self.undated in ("keep", "drop"), "--undated must be keep or drop"),
            (self.negative_ratio >= 0, "--negative-ratio must be >= 0"),
            (0 <= self.hard_negative_share <= 1, "--hard-negative-share must be in [0, 1]"),
            (0 <= self.min_positive_fraction <= 1, "--min-positive-fraction must be in [0, 1]"),
            (0 <= self.max_unusable_fraction <= 1, "--max-unusable-fraction must be in [0, 1]"),
            (0 <= self.val_fraction < 1, "--val-fraction must be in [0, 1)"),
            (
                vbt == "auto" or (isinstance(vbt, int) and not isinstance(vbt, bool) and vbt >= 1),
                f"--val-block-tiles must be auto or an integer >= 1, got {vbt!r}",
            ),
            (self.val_gap is None or self.val_gap >= 0, "--val-gap must be >= 0"),
            (self.boundary_width is None or self.boundary_width >= 0, "--boundary-width must be >= 0"),
            (self.max_label_age is None or self.max_label_age >= 0, "--max-label-age must be >= 0 days"),
            (self.workers >= 1, "--workers must be >= 1"),
            (len(self.scene_dates) in (0, 1, len(self.scenes)), "give one --scene-date, or one per scene"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        if len(set(map(str, self.scenes))) != len(self.scenes):
            raise ConfigError("the same SCENE is given twice")


@dataclass(frozen=True)
class TileResult:
    out: Path
    n_tiles: int
    counts: dict[str, Any]
    dataset: dict[str, Any] = field(repr=False)


def run(config: TileConfig) -> TileResult:
    """Build the tile dataset described by ``config`` (see module docstring); one run per ``--out`` at a time."""
    config.validate()
    check_writable_dir(config.out)
    with output_lock(config.out):
        return _run(config)


def _run(config: TileConfig) -> TileResult:
    """Phases: inputs (all validation) -> plan -> scan -> select -> extract -> index (into a staging dir)."""
    timer = _Timer()
    scenes, dtype = _read_scenes(config)
    plan = _plan(config, scenes, dtype)
    pool = _local_pool()
    early = config.workers > 1 and config.scheduler is None and not config.processes and pool == "threads"
    inp = None if early else _read_inputs(config, scenes, dtype)
    timer.lap("scenes + plan" if early else "inputs + plan")
    with (
        _gc_frozen(),
        staged_output(config.out) as stage,
        Executor(config.workers, config.scheduler, processes=config.processes, local=pool) as ex,
    ):
        timer.lap("start-up")
        stash = stage / STASH_DIR
        stash.mkdir()
        if inp is None:  # local threads: the scan decodes its first chunks while the labels are read
            scan, inp = _scan_early(ex, plan, config, stash, lambda: _read_inputs(config, scenes, dtype))
            timer.lap(f"inputs + scan ({plan.n_candidates} tiles)")
        else:
            if not ex.parallel or ex.local == "threads":  # tasks in this process share the inputs built once
                for sl in inp.burn:
                    sl.prepare()
            _preload("scipy.spatial")  # the select phase's KD-tree: imported while the scan runs (~0.5 s)
            scan = _scan(ex, plan, config, stash, inp)
            timer.lap(f"scan ({plan.n_candidates} tiles)")
        chosen = _select(config, inp, scan)
        timer.lap("select")
        ordered = _extract(ex, plan, inp, chosen.tiles, stage, config.progress, scan)
        shutil.rmtree(stash)
        timer.lap(f"extract ({len(chosen.tiles)} tiles)")
        dataset = _index(stage, config, inp, chosen, ordered)
        timer.lap("index + dataset.json")
    log.info("geoseg tile timings: %s", timer.summary())
    _log_split(config, inp, chosen, dataset)
    _log_counts(chosen.sel.requested, chosen.sel.realised, dataset["counts"]["by_split"])
    return TileResult(out=Path(config.out), n_tiles=len(chosen.tiles), counts=dataset["counts"], dataset=dataset)


@dataclass(frozen=True)
class _Inputs:
    """Everything read and validated before any output is written."""

    scenes: list[SceneInfo]
    dtype: str  # common dtype of all scenes
    labels: Labels
    per_scene: list[SceneLabels]  # the labels of each scene, in its CRS
    # what the scan rasterizes: per_scene, with the boundary class also the labels just outside each scene
    # (within pad_px), which shape its edge pixels' rim and contact gaps (the scene edge is not an outline)
    burn: list[SceneLabels]
    trees: list[Any]  # shapely.STRtree over each ``burn`` entry's label polygons
    lookalikes: Any  # GeoDataFrame or None
    mined: Any  # GeoDataFrame of geoseg-mined false positives, or None
    hard_sources: list[dict[str, object]]  # per --hard-negatives layer: path, kind, polygons (dataset.json)
    val_area: Any  # GeoDataFrame or None
    objects: dict[str, Any]  # label object summary (tile.objects)
    boundary_width: int
    boundary_source: str  # auto | option
    boundary_class: int | None

    @property
    def pad_px(self) -> int:
        """Label context read around a chunk (boundary width + 2)."""
        return self.boundary_width + 2


@dataclass(frozen=True)
class _ScenePlan:
    """One scene's chunks: tiles of one chunk are read with one windowed read."""

    scene: SceneInfo
    chunk_px: int  # chunk edge in pixels: a multiple of the tile size (and of the block size where it can be)
    cache_mb: int  # GDAL block cache for its tasks (tile.work.gdal_cache_mb)
    # (row phase, col phase, chunk row, chunk col) -> tile offsets (row, col)
    chunks: dict[tuple[int, int, int, int], list[tuple[int, int]]]


@dataclass(frozen=True)
class _Plan:
    scenes: list[_ScenePlan]
    tile_size: int
    dtype: str  # common dtype of all scenes
    n_candidates: int


@dataclass(frozen=True)
class _Chosen:
    """The select phase's result: the tiles to write (``index`` column = zarr row) and the split."""

    tiles: pd.DataFrame
    sel: sampling.Selection
    split_info: dict[str, Any]
    gap: int  # --val-gap in strides, resolved
    block_tiles: Any  # resolved split block edge in tiles (None with --val-area)


def _read_scenes(config: TileConfig) -> tuple[list[SceneInfo], str]:
    """Open the scenes and check they fit together: the scenes and their common dtype."""
    dates = config.scene_dates * len(config.scenes) if len(config.scene_dates) == 1 else config.scene_dates
    scenes = [scene_info(p, dates[i] if dates else None, asset=config.asset) for i, p in enumerate(config.scenes)]
    counts = {s.count for s in scenes}
    if len(counts) > 1:
        desc = ", ".join(f"{s.name}: {s.count}" for s in scenes)
        raise InputError(f"scenes have different band counts ({desc}); tile them into separate datasets")
    return scenes, str(np.result_type(*[np.dtype(s.dtype) for s in scenes]))


def _read_inputs(config: TileConfig, scenes: list[SceneInfo], dtype: str) -> _Inputs:
    """Read the labels and optional layers; check they fit the scenes (raises before any tile is written)."""
    labels = read_scene_labels(config, scenes, classes=config.classes)
    coverage = read_polygons(config.coverage, what="coverage") if config.coverage else None
    hard_layers = read_hard_negatives(config.hard_negatives)
    lookalikes, mined = hard_layers.lookalikes, hard_layers.mined
    val_area = read_polygons(config.val_area, what="val-area layer") if config.val_area else None

    per_scene = []
    valids = []
    for s in scenes:
        valids.append(labels.validity(s.date, max_age_days=config.max_label_age, undated=config.undated))
        per_scene.append(SceneLabels.build(labels, s.grid, valids[-1], coverage, s.grid.bounds))
    if all(len(sl.geoms) == 0 for sl in per_scene):
        raise NoOverlapError(_no_overlap_message(config.labels, labels, scenes))
    _warn_label_dates(config, labels, per_scene)

    objects = label_object_summary(per_scene, [s.grid.crs for s in scenes], scenes[0].grid.resolution_m())
    if config.boundary_width is None:
        boundary_width, boundary_source = auto_boundary_width(objects), "auto"
    else:
        boundary_width, boundary_source = int(config.boundary_width), "option"
    boundary_class = len(labels.class_names) + 1 if boundary_width > 0 else None
    burn = per_scene
    if boundary_width > 0:
        burn = [
            SceneLabels.build(labels, s.grid, v, coverage, _padded_bounds(s, s.grid.full_window, boundary_width + 2))
            for s, v in zip(scenes, valids, strict=True)
        ]
    return _Inputs(
        scenes,
        dtype,
        labels,
        per_scene,
        burn,
        [shapely.STRtree(sl.geoms) for sl in burn],
        lookalikes,
        mined,
        hard_layers.sources,
        val_area,
        objects,
        boundary_width,
        boundary_source,
        boundary_class,
    )


def _warn_label_dates(config: TileConfig, labels: Labels, per_scene: list[SceneLabels]) -> None:
    if labels.undated:
        if config.undated == "keep":
            log.warning(
                "%s: %d of %d labels are undated; kept as valid for every scene (--undated drop to ignore them)",
                config.labels,
                labels.undated,
                len(labels.gdf),
            )
        else:
            log.warning("%s: %d undated labels dropped (their pixels are ignore)", config.labels, labels.undated)
    if all(sl.n_valid == 0 for sl in per_scene):
        log.warning("%s: no label is valid for any scene date; every labelled pixel is ignore", config.labels)


def _plan(config: TileConfig, scenes: list[SceneInfo], dtype: str) -> _Plan:
    """Every candidate tile of every scene, grouped into chunks of about :data:`CHUNK_BYTES` pixels."""
    t_size = config.tile_size
    itemsize = np.dtype(dtype).itemsize
    k = max(1, int(math.sqrt(CHUNK_BYTES / (scenes[0].count * itemsize)) // t_size))
    plans = []
    for s in scenes:
        with open_raster(s.path) as ds:
            block = ds.block_shapes[0]
        chunk_px = _aligned_chunk(k * t_size, t_size, block)
        cache = gdal_cache_mb(s.grid.width, block, s.count, itemsize, chunk_px)
        chunks: dict[tuple[int, int, int, int], list[tuple[int, int]]] = {}
        for w in s.grid.tiles(t_size, config.stride or t_size, pad=True):
            r, c = int(w.row_off), int(w.col_off)
            # tiles of one chunk share a lattice of pitch t_size (the scan cuts tiles by reshaping),
            # so overlapping tiles (stride < tile size) go to one chunk per lattice phase
            chunks.setdefault((r % t_size, c % t_size, r // chunk_px, c // chunk_px), []).append((r, c))
        plans.append(_ScenePlan(s, chunk_px, cache, chunks))
    n_candidates = sum(len(t) for p in plans for t in p.chunks.values())
    itemsize_all = scenes[0].count * itemsize + 1  # image bands + the uint8 mask
    warn_if_low_space(config.out, n_candidates * t_size * t_size * itemsize_all)  # uncompressed, every candidate
    if n_candidates == 0:
        raise EmptyResultError(f"scenes are smaller than --tile-size {t_size}; use a smaller tile size")
    return _Plan(plans, t_size, dtype, n_candidates)


def _aligned_chunk(target: int, t: int, block: tuple[int, int]) -> int:
    """Chunk edge: the largest multiple of the tile size ``t`` and of the ``block`` (rows, cols) shape not above
    ``target`` (no block is decoded by two chunks), else of ``t`` and the block rows, else ``target`` itself."""
    for step in (math.lcm(t, *block), math.lcm(t, block[0])):
        if step <= target:
            return target // step * step
    return target


def _chunk_window(plan: _Plan, tiles: Sequence[tuple[int, int]]) -> Any:
    """The window covering tiles at ``(row, col)`` offsets."""
    t_size = plan.tile_size
    r0 = min(r for r, _ in tiles)
    c0 = min(c for _, c in tiles)
    return _window(c0, r0, max(c for _, c in tiles) + t_size - c0, max(r for r, _ in tiles) + t_size - r0)


def _scan(
    ex: Executor, plan: _Plan, config: TileConfig, stash: Path, inp: _Inputs | None, later: _Later | None = None
) -> dict[Any, ScanResult]:
    """Fractions and features of every candidate tile, keyed by ``(scene, chunk key)``; each chunk's
    encoded tiles go to one file in ``stash`` (see :func:`geoseg.tile.work.scan_chunk`). Without ``inp``
    the tasks take their labels from ``later`` once they are read (local threads only)."""
    scan_items = []
    positive = (config.min_positive_fraction, config.max_unusable_fraction)
    for si, sp in enumerate(plan.scenes):
        s = sp.scene
        for key, tiles in sorted(sp.chunks.items()):
            win = _chunk_window(plan, tiles)
            task = ScanTask(
                _abs(s.path), s.grid, win, tuple(tiles), plan.tile_size, None, sp.cache_mb,
                stash=str(stash.absolute() / ("_".join(map(str, (si, *key))) + ".bin")), dtype=plan.dtype,
                positive=positive,
            )  # fmt: skip
            if inp is not None:
                task = _with_labels(task, si, inp)
            elif later is not None:
                task = dataclasses.replace(task, labels=functools.partial(later.complete, si))
            scan_items.append(((si, *key), task))
    scan: dict[Any, ScanResult] = {}
    with _bar(plan.n_candidates, "scan", config.progress) as bar:
        for key, sres in ex.map(scan_chunk, scan_items):
            scan[key] = sres
            bar.update(len(sres.rows))
    return scan


def _with_labels(task: ScanTask, si: int, inp: _Inputs) -> ScanTask:
    """``task`` with the labels near its window (boundary-width padded) and the boundary class."""
    sub = inp.burn[si].subset(_padded_bounds(inp.scenes[si], task.window, inp.pad_px), inp.trees[si])
    return dataclasses.replace(task, labels=sub, boundary_class=inp.boundary_class, boundary_width=inp.boundary_width)


class _Later:
    """The inputs for scan tasks started before they are read: a task decodes its chunk, then waits here."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._inp: _Inputs | None = None

    def set(self, inp: _Inputs | None) -> None:
        """Release the waiting tasks (``None``: reading the inputs failed; they stop)."""
        self._inp = inp
        self._ready.set()

    def complete(self, si: int, task: ScanTask) -> ScanTask:
        self._ready.wait()
        if self._inp is None:
            raise _Abandoned("inputs failed")
        return _with_labels(task, si, self._inp)


class _Abandoned(Exception):
    """A scan task stopped because reading the inputs failed (that error is the one raised)."""


def _scan_early(
    ex: Executor, plan: _Plan, config: TileConfig, stash: Path, read: Callable[[], _Inputs]
) -> tuple[dict[Any, ScanResult], _Inputs]:
    """:func:`_scan` on a local thread pool, started before the labels are read: the pool decodes the first
    chunks while this thread runs ``read`` (its errors are raised unchanged). Memory: the in-flight tasks'
    chunks (2 x workers, :meth:`Executor.map`), as in the scan itself."""
    later = _Later()
    box: dict[str, Any] = {}

    def drive() -> None:
        try:
            box["scan"] = _scan(ex, plan, config, stash, None, later)
        except BaseException as e:  # re-raised by the caller's thread below
            box["error"] = e

    th = threading.Thread(target=drive, name="geoseg-tile-scan", daemon=True)
    th.start()
    try:
        inp = read()  # (not prepared here: each task builds the rasterization inputs of its own subset)
    except BaseException:
        later.set(None)
        th.join()
        raise
    _preload("scipy.spatial")  # the select phase's KD-tree: imported while the scan runs (~0.5 s)
    later.set(inp)
    th.join()
    if "error" in box:
        raise box["error"]
    return box["scan"], inp


def _select(config: TileConfig, inp: _Inputs, scan: dict[Any, ScanResult]) -> _Chosen:
    """The candidate table, the kinds, the spatially blocked split and the sampled tiles (pure, seeded)."""
    t_size, scenes, lookalikes, val_area = config.tile_size, inp.scenes, inp.lookalikes, inp.val_area
    cand = _candidate_table(scan, scenes, inp.per_scene, lookalikes, t_size, val_area, inp.mined)
    _check_valid_pixels(cand, scenes)
    kind = sampling.candidate_kind(cand, config.min_positive_fraction, config.max_unusable_fraction)
    first = scenes[0].grid
    left, _, _, top = first.bounds
    split, split_info = sampling.split_tiles(
        cand,
        kind,
        tile_size=t_size,
        stride=config.stride or t_size,
        res=first.res[0],
        origin=(left, top),
        val_fraction=config.val_fraction,
        val_block_tiles=config.val_block_tiles,
        val_gap=config.val_gap,
        seed=config.seed,
        val_area=cand["val_area"].to_numpy(bool) if val_area is not None else None,
    )
    gap = sampling.default_gap(t_size, config.stride or t_size) if config.val_gap is None else config.val_gap
    block_tiles = split_info["val_block_tiles"]
    sel = sampling.select(
        cand,
        kind,
        split,
        negative_ratio=config.negative_ratio,
        hard_negative_share=config.hard_negative_share,
        use_lookalikes=lookalikes is not None,
        seed=config.seed,
        use_mined=inp.mined is not None,
    )
    tiles = sel.tiles
    if len(tiles) == 0:
        n_pos = int((kind == "positive").sum())
        if n_pos:  # positives existed, so the split dropped them all
            raise EmptyResultError(
                f"{config.labels}: all {n_pos} positive tiles lie within --val-gap {gap} of a validation tile "
                "and were dropped; lower --val-gap or --val-fraction, or give a smaller --val-area"
            )
        raise EmptyResultError(
            f"{config.labels}: no tile passed the filters ({n_pos} positive candidates of {len(cand)} tiles); "
            "lower --min-positive-fraction, raise --max-unusable-fraction or check dates/coverage"
        )
    tiles["index"] = np.arange(len(tiles))
    return _Chosen(tiles, sel, split_info, gap, block_tiles)


def _check_valid_pixels(cand: pd.DataFrame, scenes: list[SceneInfo]) -> None:
    """A scene without one valid pixel (all nodata, NaN or masked: every candidate tile's ``nodata_fraction``
    is 1) is an :class:`InputError` naming it when no scene has one, else a warning (its tiles are unusable)."""
    empty = cand.groupby("scene")["nodata_fraction"].min() >= 1.0
    bad = [scenes[int(i)] for i in empty.index[empty.to_numpy()]]
    if not bad:
        return
    what = f"nodata ({bad[0].nodata})" if bad[0].nodata is not None else "nodata"
    if len(bad) == len(scenes):
        more = f" (nor has any of the other {len(bad) - 1} scenes)" if len(bad) > 1 else ""
        raise InputError(
            f"{bad[0].path}: the scene has no valid pixels (every pixel is {what}, NaN or masked){more}; "
            "nothing to tile"
        )
    for s in bad:
        log.warning("%s: the scene has no valid pixels (all nodata, NaN or masked); none of its tiles is used", s.path)


def _extract(
    ex: Executor,
    plan: _Plan,
    inp: _Inputs,
    tiles: pd.DataFrame,
    stage: Path,
    progress: bool,
    scan: dict[Any, ScanResult],
) -> list[ExtractResult]:
    """Write the selected tiles (image + mask) into ``stage/tiles.zarr``; results in task-key order.

    The exact fractions of the written tiles replace the scan's in ``tiles`` (in place)."""
    scenes, t_size = inp.scenes, plan.tile_size
    zarr_path = stage.absolute() / "tiles.zarr"
    fill = scenes[0].nodata if scenes[0].nodata is not None and np.isfinite(scenes[0].nodata) else 0
    store.create_arrays(zarr_path, len(tiles), scenes[0].count, t_size, inp.dtype, fill=fill)
    paths, refs = _stash_refs(scan, tiles)
    chunk_px = np.array([sp.chunk_px for sp in plan.scenes])[tiles["scene"].to_numpy(int)]
    ex_items = []
    for (si, cr, cc), grp in tiles.groupby(
        [tiles["scene"], tiles["row_off"] // chunk_px, tiles["col_off"] // chunk_px], sort=True
    ):
        sp = plan.scenes[si]
        trip = tuple((int(i), int(r), int(c)) for i, r, c in grp[["index", "row_off", "col_off"]].to_numpy())
        task_refs = refs[grp["index"].to_numpy(int)]
        used = np.unique(task_refs[:, 0])
        task_refs[:, 0] = np.searchsorted(used, task_refs[:, 0])  # file indices into this task's own list
        files = tuple(paths[i] for i in used.tolist())
        task = ExtractTask(_abs(sp.scene.path), sp.scene.grid, trip, t_size, str(zarr_path), inp.dtype, files,
                           task_refs, sp.cache_mb)  # fmt: skip
        ex_items.append(((int(si), int(cr), int(cc)), task))
    ex_items.sort(key=lambda kt: -len(kt[1].tiles))  # largest first: less idle time at the end (results are keyed)
    results: dict[Any, ExtractResult] = {}
    with _bar(len(tiles), "tiles", progress) as bar:
        for key, eres in ex.map(extract_chunk, ex_items):
            results[key] = eres
            bar.update(len(eres.index))
    ordered = [results[k] for k in sorted(results)]
    exact = {
        name: np.concatenate([getattr(r, name) for r in ordered])
        for name in ("index", "label_fraction", "nodata_fraction", "unusable_fraction")
    }
    order = np.argsort(exact["index"])
    for name in ("label_fraction", "nodata_fraction", "unusable_fraction"):
        tiles[name] = exact[name][order]
    return ordered


def _stash_refs(scan: dict[Any, ScanResult], tiles: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """The stash files and, per row of ``tiles`` (by its ``index``), ``(file index, *STASH_COLUMNS)``."""
    keys = sorted(scan)
    paths = [scan[k].stash_path or "" for k in keys]
    parts = []
    for i, k in enumerate(keys):
        r = scan[k]
        if r.stash is None:
            raise RuntimeError("scan result without a stash")  # (every scan task is given one)
        parts.append(
            pd.DataFrame({"scene": k[0], "row_off": r.rows, "col_off": r.cols, "_file": i}).join(
                pd.DataFrame(r.stash, columns=list(STASH_COLUMNS))
            )
        )
    table = pd.concat(parts, ignore_index=True)
    cols = ["_file", *STASH_COLUMNS]
    merged = tiles[["index", "scene", "row_off", "col_off"]].merge(
        table, on=["scene", "row_off", "col_off"], how="left"
    )
    if merged[cols].isna().any().any() or len(merged) != len(tiles):
        raise RuntimeError("a selected tile is missing from the scan")
    refs = np.zeros((len(tiles), len(cols)), np.int64)
    refs[merged["index"].to_numpy(int)] = merged[cols].to_numpy(np.int64)
    return paths, refs


def _index(
    stage: Path, config: TileConfig, inp: _Inputs, chosen: _Chosen, ordered: list[ExtractResult]
) -> dict[str, Any]:
    """Write ``tiles.gpkg`` and ``dataset.json`` into ``stage``; returns the dataset.json payload."""
    scenes, tiles = inp.scenes, chosen.tiles
    tiles["scene_path"] = [scenes[i].path for i in tiles["scene"]]
    tiles["scene_date"] = [scenes[i].date.isoformat() if scenes[i].date else None for i in tiles["scene"]]
    geoms = _index_geometries(tiles, scenes, config.tile_size)
    tiles["scene"] = [scenes[i].name for i in tiles["scene"]]
    store.write_index(stage / "tiles.gpkg", tiles, geoms, scenes[0].grid.crs)
    dataset = _dataset_json(config, inp, chosen, ordered)
    write_json(stage / "dataset.json", dataset)
    return dataset


def _dataset_json(config: TileConfig, inp: _Inputs, chosen: _Chosen, ordered: list[ExtractResult]) -> dict[str, Any]:
    """The ``dataset.json`` payload (the tile dataset contract read by train, predict and baseline)."""
    scenes, labels, per_scene, tiles, sel = inp.scenes, inp.labels, inp.per_scene, chosen.tiles, chosen.sel
    lookalikes, val_area, boundary_class, first = inp.lookalikes, inp.val_area, inp.boundary_class, scenes[0].grid
    names = list(scenes[0].band_names)
    class_px = sum((r.class_pixels for r in ordered), np.zeros(256, np.int64))
    classes = class_table(labels.class_names, boundary_class is not None)
    realised_split = {sp: int((tiles["split"] == sp).sum()) for sp in ("train", "val")}
    pos_split = tiles["split"][tiles["kind"] == "positive"]
    val_share = {
        "requested": None if val_area is not None else config.val_fraction,
        "realised": round(float((pos_split == "val").mean()), 4) if len(pos_split) else None,
    }
    return {
        "config": to_dict(config),
        "classes": classes,
        "boundary_class": boundary_class,
        "ignore_index": IGNORE,
        "in_channels": scenes[0].count,
        "dtype": inp.dtype,
        "tile_size": config.tile_size,
        "bands": store.band_stats(ordered, inp.dtype, names),
        "resolution_m": first.resolution_m(),
        "objects": inp.objects,
        "boundary": {"width_px": inp.boundary_width, "source": inp.boundary_source, "rule": BOUNDARY_RULE},
        "scenes": [s.to_dict() for s in scenes],
        "date_range": _date_range(scenes),
        "tiles_crs": first.crs.to_wkt(),
        "tiles_crs_note": "tiles.gpkg geometries are in the first scene's CRS; row_off/col_off are in the "
        "tile's own scene grid",
        "counts": {
            "requested": sel.requested,
            "realised": sel.realised,
            "by_split": realised_split,
            "val_share_of_positives": val_share,
        },
        "pixel_counts": {str(c["id"]): int(class_px[c["id"]]) for c in classes} | {"255": int(class_px[255])},
        "split": {
            **chosen.split_info,
            "val_block_tiles_option": config.val_block_tiles,
            "val_area": str(config.val_area) if config.val_area else None,
            "rule": sampling.SPLIT_RULE,
        },
        "hard_negatives": {
            "source": "look-alike layer" if lookalikes is not None else "spectral similarity",
            "statistic": None if lookalikes is not None else sampling.HARD_NEGATIVE_STATISTIC,
            "layers": inp.hard_sources,
            "mined": inp.mined is not None,
            "quota": sampling.HARD_NEGATIVE_QUOTA,
        },
        "labels": {
            "path": str(config.labels),
            "features": labels.features,
            "polygons": len(labels.gdf),
            "repaired": labels.repaired,
            "undated": labels.undated,
            "undated_policy": config.undated,
            "max_label_age_days": config.max_label_age,
            "per_scene": [
                {
                    "scene": s.name,
                    "in_scene": len(sl.geoms),
                    "burned": sl.n_valid,
                    "ignored": len(sl.geoms) - sl.n_valid,
                }
                for s, sl in zip(scenes, per_scene, strict=False)
            ],
        },
    }


def _log_split(config: TileConfig, inp: _Inputs, chosen: _Chosen, dataset: dict[str, Any]) -> None:
    """Say how the split came out (and warn when it has no validation tiles)."""
    gap, block_tiles, split_info = chosen.gap, chosen.block_tiles, chosen.split_info
    realised_split = dataset["counts"]["by_split"]
    val_share = dataset["counts"]["val_share_of_positives"]
    if inp.val_area is not None:
        log.info(
            "split: val = tiles intersecting %s, gap %d strides; val share of positives %s",
            config.val_area,
            gap,
            val_share["realised"],
        )
        if realised_split["val"] == 0:
            log.warning("no validation tiles: no usable tile intersects --val-area %s", config.val_area)
    elif config.val_fraction > 0:
        log.info(
            "split: %s-tile blocks (%s), %s of %s blocks val, gap %d strides; val share of positives %s "
            "(requested %.3g)",
            block_tiles,
            "auto" if config.val_block_tiles == "auto" else "--val-block-tiles",
            split_info.get("val_blocks"),
            split_info.get("blocks"),
            gap,
            val_share["realised"],
            config.val_fraction,
        )
        if realised_split["val"] == 0:
            log.warning(
                "no validation tiles: the usable tiles span too few %s-tile split blocks; lower --val-block-tiles "
                "or give --val-area",
                block_tiles,
            )


# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _gc_frozen() -> Iterator[None]:
    """Fewer cyclic GC passes during the run, and none over the objects alive at its start.

    Tasks allocate many short-lived containers (GeoJSON rings, dask bookkeeping), which triggered
    ~12 full collections a run, each walking the label tables' object arrays (~50-130 ms each;
    measured 0.8-1 s of a 2-worker 20000^2 run, ~0.3 s with this). Reference counting still frees
    everything at once; the thresholds and the frozen set are restored at the end.
    """
    if gc.get_freeze_count():  # someone else froze objects: leave their GC state alone
        yield
        return
    gc.freeze()
    old = gc.get_threshold()
    gc.set_threshold(50_000, 20, 20)  # default (700, 10, 10): ~1800 young collections a run
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


def _local_pool() -> str:
    """How ``--workers N`` runs locally without ``--processes``: ``GEOSEG_TILE_POOL`` = threads (default) or fork."""
    import os

    v = os.environ.get("GEOSEG_TILE_POOL", "threads")
    if v not in ("threads", "fork"):
        raise ConfigError(f"GEOSEG_TILE_POOL={v!r}: give threads or fork")
    return v


def _preload(module: str) -> None:
    """Import ``module`` in a background thread (imports are serial time otherwise); best effort."""
    import importlib
    import threading

    def load() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module(module)

    threading.Thread(target=load, name=f"preload-{module}", daemon=True).start()


class _Timer:
    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps.append((name, now - self.t))
        self.t = now

    def summary(self) -> str:
        return ", ".join(f"{n} {s:.2f}s" for n, s in self.laps)


def _abs(path: str) -> str:
    """Absolute path for tasks that may run in other processes or on other machines (shared FS)."""
    return path if path.startswith("/vsi") or "://" in path else str(Path(path).absolute())


def _window(c: int, r: int, w: int, h: int) -> Any:
    from rasterio.windows import Window

    return Window(c, r, w, h)


def _padded_bounds(s: SceneInfo, win: Any, pad_px: int) -> tuple[float, float, float, float]:
    """Bounding box of ``win`` grown by ``pad_px`` pixels on each side, in the scene CRS: the box of the padded
    window's corners, so it holds every pixel within ``pad_px`` (Chebyshev) of ``win`` also on rotated grids
    (padding the window's box by ``pad_px`` pixel sizes misses the corners there, by up to ``sqrt(2)``)."""
    c, r, w, h = int(win.col_off), int(win.row_off), int(win.width), int(win.height)
    return s.grid.window_bounds(_window(c - pad_px, r - pad_px, w + 2 * pad_px, h + 2 * pad_px))


def _bar(total: int, desc: str, enabled: bool) -> Any:
    return tqdm(
        total=total,
        desc=f"geoseg tile: {desc}",
        unit="tile",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
    )


def _candidate_table(
    scan: dict[Any, ScanResult],
    scenes: list[SceneInfo],
    per_scene: list[SceneLabels],
    lookalikes: Any,
    t: int,
    val_area: Any = None,
    mined: Any = None,
) -> pd.DataFrame:
    """One row per tile: fractions, features, look-alike and val-area flags, bounds in scene and common CRS.

    Footprints are the tiles' true quadrilaterals (:meth:`Grid.tile_footprints`; rotated or sheared
    scenes too), bounds their bounding boxes. Both layers are reprojected to each scene's CRS.
    ``lookalike``: the tile footprint intersects (or
    touches) a look-alike polygon. ``val_area``: the footprint shares area with a val-area polygon
    (touching along an edge only does not count), so no pixel inside the layer is in a train tile.
    """
    parts = []
    for key in sorted(scan):
        r = scan[key]
        d = pd.DataFrame(
            {
                "scene": key[0],
                "row_off": r.rows,
                "col_off": r.cols,
                "label_fraction": r.label_fraction,
                "nodata_fraction": r.nodata_fraction,
                "unusable_fraction": r.unusable_fraction,
            }
        )
        for j in range(r.features.shape[1]):
            d[f"f{j}"] = r.features[:, j]
        parts.append(d)
    df = pd.concat(parts, ignore_index=True).sort_values(["scene", "row_off", "col_off"], ignore_index=True)
    df["lookalike"] = False
    df["mined"] = False
    df["val_area"] = False
    bounds = np.zeros((len(df), 4))
    for si, s in enumerate(scenes):
        sel = (df["scene"] == si).to_numpy()
        if sel.any():
            tboxes = s.grid.tile_footprints(df.loc[sel, "row_off"].to_numpy(), df.loc[sel, "col_off"].to_numpy(), t)
            bounds[sel] = shapely.bounds(tboxes)
            if lookalikes is not None:
                df.loc[sel, "lookalike"] = _hits(tboxes, to_crs(lookalikes, s.grid.crs).geometry.values, False)
            if mined is not None:
                df.loc[sel, "mined"] = _hits(tboxes, to_crs(mined, s.grid.crs).geometry.values, False)
            if val_area is not None:
                df.loc[sel, "val_area"] = _hits(tboxes, to_crs(val_area, s.grid.crs).geometry.values, True)
    for j, k in enumerate(("sx0", "sy0", "sx1", "sy1")):
        df[k] = bounds[:, j]
    common = np.array(bounds)
    first_crs = scenes[0].grid.crs
    for si, s in enumerate(scenes):
        if s.grid.crs == first_crs:
            continue
        sel = (df["scene"] == si).to_numpy()
        quads = s.grid.tile_footprints(df.loc[sel, "row_off"].to_numpy(), df.loc[sel, "col_off"].to_numpy(), t)
        common[sel] = shapely.bounds(store.tile_polygons(quads, _transformer(s.grid.crs, first_crs)))
    for j, k in enumerate(("x0", "y0", "x1", "y1")):
        df[k] = common[:, j]
    return df


def _hits(boxes: np.ndarray, polys: np.ndarray, area: bool) -> np.ndarray:
    """Bool per box: intersects one of ``polys`` (``area``: shares area, not just an edge or a corner)."""
    ib, ip = shapely.STRtree(polys).query(boxes, predicate="intersects")
    if area and len(ib):
        inner = ~shapely.touches(boxes[ib], polys[ip])
        ib = ib[inner]
    flags = np.zeros(len(boxes), bool)
    flags[np.unique(ib)] = True
    return flags


def _transformer(src: Any, dst: Any) -> Any:
    from pyproj import CRS as PCRS
    from pyproj import Transformer

    return Transformer.from_crs(PCRS.from_wkt(src.to_wkt()), PCRS.from_wkt(dst.to_wkt()), always_xy=True)


def _index_geometries(tiles: pd.DataFrame, scenes: list[SceneInfo], t: int) -> np.ndarray:
    """Tile footprints (true quadrilaterals) in the first scene's CRS (``tiles["scene"]`` holds scene indices)."""
    first_crs = scenes[0].grid.crs
    out = np.empty(len(tiles), dtype=object)
    sidx = tiles["scene"].to_numpy(int)
    rows, cols = tiles["row_off"].to_numpy(), tiles["col_off"].to_numpy()
    for si, s in enumerate(scenes):
        sel = sidx == si
        if not sel.any():
            continue
        tr = None if s.grid.crs == first_crs else _transformer(s.grid.crs, first_crs)
        out[sel] = store.tile_polygons(s.grid.tile_footprints(rows[sel], cols[sel], t), tr)
    return out


def _date_range(scenes: list[SceneInfo]) -> list[str] | None:
    ds = sorted(s.date for s in scenes if s.date is not None)
    return [ds[0].isoformat(), ds[-1].isoformat()] if ds else None


def _no_overlap_message(path: str, labels: Labels, scenes: list[SceneInfo]) -> str:
    lb = labels.gdf.total_bounds
    crs = labels.gdf.crs.to_string() if labels.gdf.crs else "?"
    parts = []
    for s in scenes[:3]:
        try:
            lbs = to_crs(labels.gdf, s.grid.crs).total_bounds
            in_scene = f"labels there {_fmt(lbs)}" if np.isfinite(lbs).all() else "labels not reprojectable there"
        except Exception:  # reprojection may fail far outside a CRS's area of use
            in_scene = "labels not reprojectable"
        parts.append(f"{s.name} extent {_fmt(s.grid.bounds)} in {_crs_name(s.grid.crs)} ({in_scene})")
    more = f" and {len(scenes) - 3} more" if len(scenes) > 3 else ""
    return f"{path}: labels do not overlap any scene; labels extent {_fmt(lb)} in {crs}; " + "; ".join(parts) + more


def _fmt(b: Any) -> str:
    from geoseg.errors import format_bounds

    return format_bounds(b)


def _crs_name(crs: Any) -> str:
    epsg = crs.to_epsg() if crs else None
    return f"EPSG:{epsg}" if epsg else "scene CRS"


def _log_counts(requested: dict[str, int], realised: dict[str, int], by_split: dict[str, int]) -> None:
    for k in requested:
        if realised[k] < requested[k]:
            log.warning("%s: requested %d, realised %d (not enough candidates)", k, requested[k], realised[k])
