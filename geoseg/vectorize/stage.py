"""The vectorize stage: ``vectorize_prediction`` (a probabilities raster -> ``instances.gpkg``, the
block driver) and ``geoseg vectorize`` (``VectorizeConfig`` / ``run``: the same on an existing
prediction, its classes and post-processing looked up from the raster and its model)."""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.windows import Window

from geoseg.classes import ClassesLike, ClassTable, as_class_dicts
from geoseg.config import StageConfig
from geoseg.errors import ConfigError, GeosegError, InputNotFoundError, RasterReadError, first_line
from geoseg.grid import area_step_px
from geoseg.io.output import atomic_path
from geoseg.io.rasters import open_raster, probability_scale
from geoseg.postprocess import PostProcess, resolve_postprocess
from geoseg.progress import tqdm
from geoseg.vectorize.blocks import BlockPlan, LabelledBlock, label_block, merge_block, read_block
from geoseg.vectorize.metadata import read_prediction_classes
from geoseg.vectorize.objects import FLOAT_UNIT, REGULARIZE_SHIFT_PX, Post, lonlat, pixel_area_m2
from geoseg.vectorize.stream import Pending, Stream
from geoseg.vectorize.writer import GPKG_TMP_SUFFIX, GpkgWriter

log = logging.getLogger(__name__)

__all__ = ["VectorizeConfig", "regularize_class_ids", "run", "vectorize_prediction"]


def vectorize_prediction(
    probabilities: Path,
    out_gpkg: Path,
    *,
    classes: ClassesLike,
    boundary_class: int | None,
    threshold: float = 0.5,
    min_area_m2: float = 0.0,
    simplify_px: float = 0.5,
    block_size: int = 1024,
    scene: str = "",
    scene_date: str | None = None,
    halo: int | None = None,
    core_boundary_max: float = 0.1,
    fill_holes_m2: float = 0.0,
    style: bool = True,
    regularize: tuple[str, ...] = (),
    workers: int | None = None,
) -> int:
    """Instances of ``probabilities.tif`` (band i+1 = class id i) -> ``out_gpkg`` layer ``instances``.

    Attributes: ``class`` (name), ``class_id``, ``score`` (mean class probability over the
    instance's pixels), ``area_m2`` (true m², any CRS), ``scene``, ``scene_date``. CRS = raster CRS.
    ``min_area_m2`` drops smaller instances; holes smaller than ``fill_holes_m2`` are filled;
    ``simplify_px`` is a topology-preserving simplification tolerance in pixels (0 = none); see
    :mod:`geoseg.postprocess` for how the defaults of these are chosen. Polygons of the classes named
    in ``regularize`` get regular footprints instead (:func:`geoseg.regularize.regularize_polygons`:
    straight edges at right angles, moved by at most 2 pixels, never overlapping; worked out in
    ground-scaled pixel space, so any CRS). Nodata pixels never produce polygons.
    Written atomically (temporary name, then rename), with the QGIS style stored in the file
    unless ``style=False``. Rows are ordered by their bottom pixel row (top of the scene first), then
    class id, left edge, ...: the same for every ``block_size`` (see the module docstring). Returns
    the number of polygons. Memory: independent of the number of polygons, see module docstring.
    ``workers``: threads labelling blocks (default :func:`default_workers`); the output does not
    depend on it.
    """
    probabilities, out_gpkg = Path(probabilities), Path(out_gpkg)
    if block_size < 8:
        raise ConfigError(f"block size {block_size} too small; use at least 8 (default 1024)")
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold {threshold} must be between 0 and 1")
    halo = int(halo if halo is not None else min(64, max(16, block_size // 8)))
    table = ClassTable.of(classes, boundary_class)
    classes, boundary_class = as_class_dicts(classes), table.boundary
    ids = {int(c["id"]) for c in classes}
    names = {int(c["id"]): str(c["name"]) for c in classes}
    fg = list(table.foreground)
    if not fg:
        raise ConfigError(f"{probabilities}: no foreground class among {sorted(names.values())}")
    reg_ids = regularize_class_ids(regularize, classes, boundary_class, what=str(probabilities))
    with open_raster(probabilities, what="probabilities raster") as ds:
        if ds.count < max(ids) + 1:
            raise ConfigError(f"{probabilities}: {ds.count} bands but class ids go up to {max(ids)}")
        scale = probability_scale(ds)
        plan = BlockPlan(width=ds.width, height=ds.height, block_size=int(block_size), halo=halo, fg=fg,
                         boundary_class=boundary_class, thr_raw=threshold / scale - 1e-6,
                         core_raw=core_boundary_max / scale)  # fmt: skip
        post = _post_for(ds, names, scale, min_area_m2=min_area_m2, fill_holes_m2=fill_holes_m2,
                         simplify_px=simplify_px, regularize=reg_ids, scene=scene, scene_date=scene_date)  # fmt: skip
        with atomic_path(out_gpkg, suffix=GPKG_TMP_SUFFIX) as tmp:
            writer = GpkgWriter(tmp, post, classes=classes, style=style)
            stream = Stream(post, writer)
            try:
                _drive(ds, plan, stream, default_workers() if workers is None else max(1, int(workers)))
                n = writer.commit()
            except BaseException:
                writer.abort()  # (no write to the temporary file once it is removed)
                raise
    log.info("%s: %d instance polygons (at most %d objects pending at a block-row end)", out_gpkg, n, stream.peak_state)
    return n


def _post_for(
    ds: rasterio.DatasetReader, names: dict[int, str], scale: float, *, min_area_m2: float, fill_holes_m2: float,
    simplify_px: float, regularize: frozenset[int], scene: str, scene_date: str | None,
) -> Post:  # fmt: skip
    """The per-object post-processing of ``ds``'s grid: m² limits in pixels, regulariser reach, origins."""
    crs: CRS = ds.crs
    transform = ds.transform
    px_m2 = pixel_area_m2(crs, transform, ds.width, ds.height)
    sx, sy = math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e)
    aniso = math.sqrt(max(sx, sy) / min(sx, sy)) if min(sx, sy) > 0 else 1.0
    return Post(
        names=names, crs=crs, transform=transform, min_area_m2=min_area_m2,
        min_area_px=0.5 * min_area_m2 / px_m2 if px_m2 > 0 else 0.0,
        fill_holes_px=fill_holes_m2 / px_m2 if px_m2 > 0 else 0.0, simplify_px=simplify_px,
        regularize=regularize, gap_px=2 * REGULARIZE_SHIFT_PX * aniso + 1.0, centre=(ds.width / 2, ds.height / 2),
        origin=lonlat(crs, transform * (ds.width / 2, ds.height / 2)),
        scene=scene, scene_date=scene_date,
        score_unit=scale if np.issubdtype(np.dtype(ds.dtypes[0]), np.integer) else FLOAT_UNIT,
        area_step_px=area_step_px(px_m2),
    )  # fmt: skip


def default_workers() -> int:
    """Threads for labelling blocks: the CPUs this process may use, at most 4 (each holds one
    haloed block, ~100 bytes per pixel; more rarely helps, since merging blocks is serial)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # (not on every platform)
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def _drive(ds: rasterio.DatasetReader, plan: BlockPlan, stream: Stream, workers: int) -> None:
    """Every block in row order; the stream finishes objects at the end of each block row.

    Blocks are read and labelled on ``workers`` threads (each with its own dataset handle), at
    most ``workers`` ahead of the merge, which takes them in row order on this thread: the result
    does not depend on ``workers``; memory grows by one haloed block per block in flight, never
    with the scene."""
    pending: dict[tuple[int, int], Pending] = defaultdict(list)
    nbr, nbc, bs = plan.rows, plan.cols, plan.block_size
    # GDAL's block cache holds the blocks in flight and the halo columns the next block re-reads, never
    # a block row (width-proportional; the halo rows shared with the next block row are decoded again)
    block_bytes = (bs + 2 * plan.halo) ** 2 * ds.count * np.dtype(ds.dtypes[0]).itemsize
    cache = max(32 * 2**20, (workers + 2) * block_bytes)
    blocks = plan.blocks()
    ahead = max(0, workers - 1)
    local = threading.local()
    opened: list[rasterio.DatasetReader] = []

    def task(r: int, c: int, win: Window) -> LabelledBlock:
        """Read (with this thread's own handle: datasets are not shared between threads) and label."""
        with rasterio.Env(GDAL_CACHEMAX=cache):  # (rasterio's environment is per thread)
            src = getattr(local, "ds", None)
            if src is None:
                src = local.ds = rasterio.open(ds.name)
                opened.append(src)
            ext, data, valid = read_block(src, plan, win)
        return label_block(plan, r, c, win, ext, data, valid)

    try:
        with (
            ThreadPoolExecutor(max(1, workers), thread_name_prefix="vectorize") as pool,
            tqdm(total=nbr * nbc, desc="vectorize", unit="block", disable=nbr * nbc < 4, leave=False) as bar,
        ):
            queue: deque[Future[LabelledBlock]] = deque()

            def submit() -> bool:
                nxt = next(blocks, None)
                if nxt is not None:
                    queue.append(pool.submit(task, *nxt))
                return nxt is not None

            while len(queue) <= ahead and submit():
                pass
            while queue:
                lb = queue.popleft().result()
                submit()
                merge_block(plan, lb, pending, stream)
                bar.update()
                if lb.c == nbc - 1:
                    stream.end_row(pending, min((lb.r + 1) * bs, plan.height), last=lb.r == nbr - 1)
    finally:
        for src in opened:
            src.close()


def regularize_class_ids(
    names: tuple[str, ...] | str, classes: ClassesLike, boundary_class: int | None, *, what: str
) -> frozenset[int]:
    """Ids of the object classes named in ``names`` (``--regularize``); unknown names -> ConfigError."""
    names = (names,) if isinstance(names, str) else tuple(names)
    table = ClassTable.of(classes, boundary_class)
    objects = {table.names[i]: i for i in table.foreground}
    bad = [n for n in names if n not in objects]
    if bad:
        raise ConfigError(f"{what}: --regularize {bad[0]!r} is not an object class; classes: {', '.join(objects)}")
    return frozenset(objects[n] for n in names)


@dataclass(frozen=True)
class VectorizeConfig(StageConfig):
    """Options of ``geoseg vectorize`` (written next to the output as ``<out>.json``).

    ``None`` post-processing values come from the model (calibrated, else derived from the label
    objects; see :mod:`geoseg.postprocess`); the model is ``model`` or the one recorded in the
    raster's ``MODEL`` tag.
    """

    raster: str
    out: str
    threshold: float | None = None
    min_area_m2: float | None = None
    fill_holes_m2: float | None = None
    core_boundary_max: float | None = None
    simplify_px: float | None = None
    block_size: int = 1024
    model: str | None = None
    scene: str | None = None
    scene_date: str | None = None
    regularize: tuple[str, ...] = ()

    def validate(self) -> None:
        """Range checks (ConfigError naming the command-line option) before any file is read."""
        for opt, val in (("--threshold", self.threshold), ("--core-boundary-max", self.core_boundary_max)):
            if val is not None and not 0.0 < val < 1.0:
                raise ConfigError(f"{opt} must be between 0 and 1, got {val!r}")
        for opt, val in (("--min-area", self.min_area_m2), ("--fill-holes", self.fill_holes_m2),
                         ("--simplify", self.simplify_px)):  # fmt: skip
            if val is not None and val < 0:
                raise ConfigError(f"{opt} must be >= 0, got {val!r}")
        if self.block_size < 8:
            raise ConfigError(f"--block-size {self.block_size} too small; use at least 8 (default 1024)")


def run(config: VectorizeConfig) -> dict[str, Any]:
    """Vectorize an existing ``probabilities.tif`` (or a prediction directory holding one)."""
    from geoseg.config import to_dict, write_json

    raster = Path(config.raster)
    if raster.is_dir():
        raster = raster / "probabilities.tif"
    if not raster.exists():
        raise InputNotFoundError(f"{raster}: probabilities raster not found")
    classes, boundary = read_prediction_classes(raster, Path(config.model) if config.model else None)
    scene, date = config.scene, config.scene_date
    try:
        with rasterio.open(raster) as ds:
            tags = {k.lower(): v for k, v in ds.tags().items()}
            if ds.count < 2:
                raise ConfigError(f"{raster}: needs the per-class probabilities raster (one band per class)")
    except rasterio.errors.RasterioIOError as e:
        raise RasterReadError(f"{raster}: not a readable raster ({first_line(e)})") from None
    scene = scene if scene is not None else tags.get("scene", "")
    date = date if date is not None else (tags.get("scene_date") or None)
    post = _resolve_post(config, raster, tags, classes, boundary)
    out = Path(config.out)
    n = vectorize_prediction(
        raster, out, classes=classes, boundary_class=boundary, threshold=post.threshold,
        min_area_m2=post.min_area_m2, fill_holes_m2=post.fill_holes_m2, core_boundary_max=post.core_boundary_max,
        simplify_px=post.simplify_px, block_size=config.block_size, scene=scene or "", scene_date=date,
        regularize=tuple(config.regularize),
    )  # fmt: skip
    result = {"config": to_dict(config), "raster": str(raster), "out": str(out), "polygons": n,
              "classes": classes, "boundary_class": boundary, "postprocess": post.to_dict()}  # fmt: skip
    write_json(out.with_suffix(".json"), result)
    return result


def _resolve_post(
    config: VectorizeConfig, raster: Path, tags: dict[str, str], classes: list[dict], boundary: int | None
) -> PostProcess:
    """Post-processing for an existing prediction: options > its model's config > the raster's grid."""
    from geoseg.modeldir import read_model_config

    mcfg: dict[str, Any] = {}
    for src in (config.model, tags.get("model")):
        if not src:
            continue
        try:
            mcfg = read_model_config(src)
            break
        except (GeosegError, OSError):
            if src == config.model:
                raise
            log.info("%s: model %s of the MODEL tag not readable; post-processing from the raster", raster, src)
    if mcfg.get("resolution_m") is None:
        with rasterio.open(raster) as ds:
            mcfg = {**mcfg, "resolution_m": math.sqrt(pixel_area_m2(ds.crs, ds.transform, ds.width, ds.height))}
    fg = list(ClassTable.of(classes, boundary).foreground)
    return resolve_postprocess(
        mcfg, fg_classes=fg, threshold=config.threshold, min_area_m2=config.min_area_m2,
        fill_holes_m2=config.fill_holes_m2, core_boundary_max=config.core_boundary_max, simplify_px=config.simplify_px,
    )  # fmt: skip
