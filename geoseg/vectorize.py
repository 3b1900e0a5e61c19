"""Instance polygons from a class-probability raster, block by block, merged across block seams.

Algorithm (per foreground class ``k``; not background 0, not the boundary class):

* object pixels ``O_k``: ``argmax == k`` and ``p_k >= threshold`` (nodata pixels never count);
* without a boundary class, instances are the 4-connected components of ``O_k``;
* with a boundary class ``b``, confident cores ``O_k & (p_b < core_boundary_max)`` are labelled by
  4-connected components and flooded over ``O_k | (argmax == b)`` by :func:`grow_markers`, a
  marker-controlled watershed on the geodesic distance to the cores, so touching objects
  separated by boundary pixels become separate instances and boundary pixels go to the nearest
  object. (A priority-queue watershed such as :func:`skimage.segmentation.watershed` breaks ties
  by queue age, which depends on pixels far away, so two haloed blocks could disagree at their
  seam; the geodesic flooding depends only on nearby markers and agrees exactly.) An object
  component without any core becomes its own marker (nothing is lost when the network is unsure).

Blocks: each ``block_size`` block is labelled on its window grown by a halo. Labels are made
global with a union-find over the overlaps of neighbouring haloed windows: two markers that share
a pixel in an overlap are the same connected core (cores are a per-pixel criterion, so this gives
exactly the global connected components of the cores), and a core-less (fallback) region is
joined with whatever region its pixels belong to in the neighbour. Each block polygonizes only
its own interior (``rasterio.features.shapes``, 4-connected, pixel-exact, holes kept) in *global
pixel coordinates* (integers, exact), and the parts of one global instance are unioned, so an
object crossing a seam comes out as one polygon whatever the block size.

Memory: O(C * (block_size + 2 * halo)^2) for one block, plus the overlap bands of one block row
(O(width * halo)), plus the output polygons.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import rasterio.features
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Geod
from rasterio.crs import CRS
from rasterio.windows import Window
from scipy import ndimage as ndi

from geoseg.errors import ConfigError, GeosegError, InputNotFoundError, RasterReadError
from geoseg.grid import geodesic_areas_m2
from geoseg.postprocess import PostProcess, resolve_postprocess
from geoseg.progress import tqdm

log = logging.getLogger(__name__)

__all__ = [
    "VectorizeConfig",
    "geodesic_areas_m2",
    "label_instances",
    "read_prediction_classes",
    "regularize_class_ids",
    "run",
    "vectorize_prediction",
]

LAYER = "instances"
# GeoPackage 1.2: read without warnings by older GDALs (QGIS 3.22 ships GDAL 3.6; GDAL 3.10 writes 1.4)
GPKG_OPTIONS = {"VERSION": "1.2"}
_STRUCT4 = ndi.generate_binary_structure(2, 1)
_GEOD = Geod(ellps="WGS84")
DEFAULT_COLORS = ["#000000", "#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#ffff33", "#a65628", "#f781bf"]


# ---------------------------------------------------------------------------------------------
# pure core
# ---------------------------------------------------------------------------------------------
@dataclass
class BlockLabels:
    """Instance labels of one (haloed) window.

    ``region``: (H, W) int32 instance id (0 = none); ``marker``: (H, W) int32 watershed marker id
    (the core, or the whole component for core-less objects); ``classes[i]`` / ``fallback[i]``:
    class id and core-less flag of id ``i + 1``.
    """

    region: np.ndarray
    marker: np.ndarray
    classes: np.ndarray
    fallback: np.ndarray

    @property
    def n(self) -> int:
        return len(self.classes)


def label_instances(
    probs: np.ndarray,
    valid: np.ndarray,
    *,
    fg_classes: list[int],
    boundary_class: int | None,
    threshold: float,
    core_boundary_max: float = 0.3,
) -> BlockLabels:
    """Label instances in one window.

    ``probs``: (C, H, W) probabilities in any monotonic unit (``threshold`` and
    ``core_boundary_max`` must be in the same unit, e.g. raw uint8 = p * 254); ``valid``: (H, W)
    bool. Pure function; memory O(C * H * W).
    """
    h, w = valid.shape
    region = np.zeros((h, w), np.int32)
    marker = np.zeros((h, w), np.int32)
    classes: list[np.ndarray] = []
    fallback: list[np.ndarray] = []
    if h == 0 or w == 0:
        return BlockLabels(region, marker, np.zeros(0, np.int16), np.zeros(0, bool))
    am = np.argmax(probs, axis=0).astype(np.int16)
    am[~valid] = -1
    bnd = (am == boundary_class) if boundary_class is not None else None
    next_id = 0
    for k in fg_classes:
        obj = (am == k) & (probs[k] >= threshold)
        if not obj.any():
            continue
        if bnd is None or boundary_class is None:
            lab, n = ndi.label(obj, structure=_STRUCT4)
            sel = lab > 0
            region[sel] = lab[sel] + next_id
            marker[sel] = lab[sel] + next_id
            classes.append(np.full(n, k, np.int16))
            fallback.append(np.zeros(n, bool))
            next_id += n
            continue
        core = obj & (probs[boundary_class] < core_boundary_max)
        cores, nc = ndi.label(core, structure=_STRUCT4)
        comps, no = ndi.label(obj, structure=_STRUCT4)
        has_core = np.zeros(no + 1, bool)
        has_core[comps[core]] = True
        has_core[0] = True
        # core-less object components become their own markers (ids nc+1 ...)
        orphan_ids = np.flatnonzero(~has_core)
        remap = np.zeros(no + 1, np.int32)
        remap[orphan_ids] = np.arange(nc + 1, nc + 1 + len(orphan_ids), dtype=np.int32)
        markers = cores.astype(np.int32)
        orphan = remap[comps]
        markers[orphan > 0] = orphan[orphan > 0]
        n = nc + len(orphan_ids)
        domain = obj | (bnd & (region == 0))
        ws = grow_markers(markers, domain)
        take = (ws > 0) & (region == 0)
        region[take] = ws[take] + next_id
        sel = markers > 0
        marker[sel] = markers[sel] + next_id
        classes.append(np.full(n, k, np.int16))
        fb = np.zeros(n, bool)
        fb[nc:] = True
        fallback.append(fb)
        next_id += n
    cls = np.concatenate(classes) if classes else np.zeros(0, np.int16)
    fbs = np.concatenate(fallback) if fallback else np.zeros(0, bool)
    return BlockLabels(region, marker, cls, fbs)


def fill_small_holes(geoms: np.ndarray, max_area: float) -> np.ndarray:
    """Polygons with interior rings of area < ``max_area`` (units of the coordinates) removed.

    Pure, vectorised over the array; polygons without such holes are returned unchanged.
    """
    out = np.asarray(geoms, dtype=object).copy()
    n_holes = shapely.get_num_interior_rings(out)
    for i in np.flatnonzero(n_holes > 0).tolist():
        g = out[i]
        keep = [r for r in g.interiors if shapely.area(shapely.Polygon(r)) >= max_area]
        if len(keep) < len(g.interiors):
            out[i] = shapely.Polygon(g.exterior, keep)
    return out


def pixel_area_m2(crs: Any, transform: Affine, width: int, height: int) -> float:
    """Mean true area of one pixel (m²) of a raster grid: the footprint's geodesic area / pixels."""
    if width <= 0 or height <= 0:
        return 0.0
    corners = [transform * xy for xy in ((0, 0), (width, 0), (width, height), (0, height))]
    return float(geodesic_areas_m2([shapely.Polygon(corners)], crs)[0]) / (width * height)


def grow_markers(markers: np.ndarray, domain: np.ndarray, max_iter: int = 100_000) -> np.ndarray:
    """Marker-controlled flooding by geodesic distance (a watershed on the distance to the cores).

    Each unlabelled ``domain`` pixel takes, one 4-neighbour layer at a time, the label of a
    labelled neighbour, preferring up, left, right, down. Unlike a priority-queue watershed
    (:func:`skimage.segmentation.watershed`, whose ties are broken by queue age and so by far-away
    pixels) the result at a pixel depends only on the markers within its geodesic distance, so
    haloed blocks agree exactly at their seams. Domain pixels not connected to a marker stay 0.
    """
    lab = markers.astype(np.int32, copy=True)
    h, w = lab.shape
    rows, cols = np.nonzero(domain & (lab == 0))
    for _ in range(max_iter):
        if rows.size == 0:
            break
        new = np.zeros(rows.size, np.int32)
        for dr, dc in ((-1, 0), (0, -1), (0, 1), (1, 0)):  # priority order
            rr, cc = rows + dr, cols + dc
            ok = (new == 0) & (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            new[ok] = lab[rr[ok], cc[ok]]
        got = new > 0
        if not got.any():
            break
        lab[rows[got], cols[got]] = new[got]  # all at once: one geodesic layer per iteration
        rows, cols = rows[~got], cols[~got]
    return lab


class _Buffer:
    """A growable 1-D numpy array (amortised O(1) appends)."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype)
        self._a = np.zeros(1024, self.dtype)
        self._n = 0

    def extend(self, values: np.ndarray) -> None:
        need = self._n + len(values)
        if need > len(self._a):
            grown = np.zeros(max(need, 2 * len(self._a)), self.dtype)
            grown[: self._n] = self._a[: self._n]
            self._a = grown
        self._a[self._n : need] = values
        self._n = need

    def view(self) -> np.ndarray:
        return self._a[: self._n]


class _UnionFind:
    """Union-find over integer nodes ``1..n`` (0 unused), grown as blocks add nodes."""

    def __init__(self) -> None:
        self.parent: list[int] = [0]

    def add(self, n: int) -> int:
        """Add ``n`` nodes; returns the offset to add to local ids ``1..n``."""
        off = len(self.parent) - 1
        self.parent.extend(range(off + 1, off + n + 1))
        return off

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                ra, rb = rb, ra
            self.parent[ra] = rb

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


def _intersect(a: Window, b: Window) -> Window | None:
    c0, r0 = max(a.col_off, b.col_off), max(a.row_off, b.row_off)
    c1 = min(a.col_off + a.width, b.col_off + b.width)
    r1 = min(a.row_off + a.height, b.row_off + b.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def _sub(arr: np.ndarray, outer: Window, inner: Window) -> np.ndarray:
    r, c = int(inner.row_off - outer.row_off), int(inner.col_off - outer.col_off)
    return arr[r : r + int(inner.height), c : c + int(inner.width)]


# ---------------------------------------------------------------------------------------------
# block-wise vectorization
# ---------------------------------------------------------------------------------------------
def _block_grid(width: int, height: int, bs: int) -> Iterator[tuple[int, int, Window]]:
    for r in range(math.ceil(height / bs)):
        for c in range(math.ceil(width / bs)):
            yield r, c, Window(c * bs, r * bs, min(bs, width - c * bs), min(bs, height - r * bs))


def _ext(win: Window, halo: int, width: int, height: int) -> Window:
    c0, r0 = max(int(win.col_off) - halo, 0), max(int(win.row_off) - halo, 0)
    c1 = min(int(win.col_off + win.width) + halo, width)
    r1 = min(int(win.row_off + win.height) + halo, height)
    return Window(c0, r0, c1 - c0, r1 - r0)


def _read_probs(ds: rasterio.DatasetReader, win: Window) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) raw probabilities and (H, W) validity of ``win``."""
    data = ds.read(window=win)
    nod = ds.nodata
    if np.issubdtype(data.dtype, np.floating):
        invalid = ~np.isfinite(data).all(axis=0)
        if nod is not None and np.isfinite(nod):
            invalid |= (data == nod).any(axis=0)
        data = np.where(np.isfinite(data), data, 0).astype(np.float32, copy=False)
    else:
        invalid = (data == (255 if nod is None else nod)).any(axis=0)
    return data, ~invalid


def _raw_scale(ds: rasterio.DatasetReader) -> float:
    """Probability per raw unit: GDAL scale if set, 1/254 for the integer contract, 1 for floats."""
    if np.issubdtype(np.dtype(ds.dtypes[0]), np.floating):
        return 1.0
    s = ds.scales[0] if ds.scales else 1.0
    return float(s) if s and s != 1.0 else 1.0 / 254.0


def vectorize_prediction(
    probabilities: Path,
    out_gpkg: Path,
    *,
    classes: list[dict],
    boundary_class: int | None,
    threshold: float = 0.5,
    min_area_m2: float = 0.0,
    simplify_px: float = 0.5,
    block_size: int = 1024,
    scene: str = "",
    scene_date: str | None = None,
    halo: int | None = None,
    core_boundary_max: float = 0.3,
    fill_holes_m2: float = 0.0,
    style: bool = True,
    regularize: tuple[str, ...] = (),
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
    unless ``style=False``. Returns the number of polygons. Memory: see module docstring.
    """
    probabilities, out_gpkg = Path(probabilities), Path(out_gpkg)
    if block_size < 8:
        raise ConfigError(f"block size {block_size} too small; use at least 8 (default 1024)")
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold {threshold} must be between 0 and 1")
    halo = int(halo if halo is not None else min(64, max(16, block_size // 8)))
    ids = {int(c["id"]) for c in classes}
    names = {int(c["id"]): str(c["name"]) for c in classes}
    fg = sorted(i for i in ids if i != 0 and i != boundary_class)
    if not fg:
        raise ConfigError(f"{probabilities}: no foreground class among {sorted(names.values())}")
    reg_ids = regularize_class_ids(regularize, classes, boundary_class, what=str(probabilities))
    if not probabilities.exists():
        raise InputNotFoundError(f"{probabilities}: probabilities raster not found")
    try:
        ds = rasterio.open(probabilities)
    except rasterio.errors.RasterioIOError as e:
        raise RasterReadError(f"{probabilities}: not a readable raster ({str(e).splitlines()[0]})") from None
    with ds:
        if ds.count < max(ids) + 1:
            raise ConfigError(f"{probabilities}: {ds.count} bands but class ids go up to {max(ids)}")
        scale = _raw_scale(ds)
        thr_raw = threshold / scale - 1e-6
        core_raw = core_boundary_max / scale
        crs, transform = ds.crs, ds.transform
        px_m2 = pixel_area_m2(ds.crs, ds.transform, ds.width, ds.height)
        uf = _UnionFind()
        node_class = _Buffer(np.int16)
        node_fb = _Buffer(bool)
        node_sum = _Buffer(np.float64)
        node_cnt = _Buffer(np.int64)
        for buf in (node_class, node_fb, node_sum, node_cnt):
            buf.extend(np.zeros(1, buf.dtype))  # node 0 = none
        parts: list[tuple[int, Any]] = []
        pending: dict[tuple[int, int], list[tuple[Window, np.ndarray, np.ndarray]]] = defaultdict(list)
        bs, width, height = int(block_size), ds.width, ds.height
        nbr, nbc = math.ceil(height / bs), math.ceil(width / bs)
        blocks = list(_block_grid(width, height, bs))
        for r, c, win in tqdm(blocks, desc="vectorize", unit="block", disable=len(blocks) < 4, leave=False):
            ext = _ext(win, halo, width, height)
            data, valid = _read_probs(ds, ext)
            lab = label_instances(
                data, valid, fg_classes=fg, boundary_class=boundary_class, threshold=thr_raw,
                core_boundary_max=core_raw,
            )  # fmt: skip
            off = uf.add(lab.n)
            region, marker = lab.region, lab.marker
            region[region > 0] += off
            marker[marker > 0] += off
            node_class.extend(lab.classes)
            node_fb.extend(lab.fallback)
            fb_all, cls_all = node_fb.view(), node_class.view()
            # unions with earlier neighbours over the shared part of both haloed windows
            for owin, oreg, omark in pending.pop((r, c), []):
                creg, cmark = _sub(region, ext, owin), _sub(marker, ext, owin)
                pairs = [np.stack([omark[(omark > 0) & (cmark > 0)], cmark[(omark > 0) & (cmark > 0)]])]
                both = (oreg > 0) & (creg > 0)
                a, b = oreg[both], creg[both]
                sel = (fb_all[a] | fb_all[b]) & (cls_all[a] == cls_all[b])
                pairs.append(np.stack([a[sel], b[sel]]))
                pp = np.concatenate(pairs, axis=1).astype(np.int64)
                if pp.size:
                    for key in np.unique((pp[0] << 32) | pp[1]).tolist():
                        uf.union(key >> 32, key & 0xFFFFFFFF)
            # keep the overlaps with later neighbours
            for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
                nr, nc = r + dr, c + dc
                if not (0 <= nr < nbr and 0 <= nc < nbc):
                    continue
                nwin = Window(nc * bs, nr * bs, min(bs, width - nc * bs), min(bs, height - nr * bs))
                ov = _intersect(ext, _ext(nwin, halo, width, height))
                if ov is not None:
                    pending[(nr, nc)].append((ov, _sub(region, ext, ov).copy(), _sub(marker, ext, ov).copy()))
            # interior: scores and polygons
            inner = _sub(region, ext, win)
            lid = np.where(inner > 0, inner - off, 0).astype(np.int32)
            sums: np.ndarray = np.zeros(lab.n + 1)
            cnts: np.ndarray = np.zeros(lab.n + 1, np.int64)
            if lab.n:
                pin = data[:, int(win.row_off - ext.row_off) : int(win.row_off - ext.row_off + win.height),
                           int(win.col_off - ext.col_off) : int(win.col_off - ext.col_off + win.width)]  # fmt: skip
                m = lid > 0
                pk = np.take_along_axis(pin[:, m], lab.classes[lid[m] - 1][None].astype(np.intp), axis=0)[0]
                sums = np.bincount(lid[m], weights=pk.astype(np.float64) * scale, minlength=lab.n + 1)
                cnts = np.bincount(lid[m], minlength=lab.n + 1)
                shift = Affine.translation(int(win.col_off), int(win.row_off))
                for geom, val in rasterio.features.shapes(lid, mask=m, connectivity=4, transform=shift):
                    parts.append((int(val) + off, shapely.geometry.shape(geom)))
            node_sum.extend(sums[1:])
            node_cnt.extend(cnts[1:])
            del data, valid, lab, region, marker
    return _assemble(
        parts, uf, node_class.view(), node_sum.view(), node_cnt.view(),
        names=names, crs=crs, transform=transform, min_area_m2=min_area_m2, simplify_px=simplify_px,
        fill_holes_px=fill_holes_m2 / px_m2 if px_m2 > 0 else 0.0,
        min_area_px=0.5 * min_area_m2 / px_m2 if px_m2 > 0 else 0.0, scene=scene, scene_date=scene_date,
        out_gpkg=out_gpkg, classes=classes, style=style, regularize=reg_ids,
    )  # fmt: skip


def _assemble(
    parts: list[tuple[int, Any]],
    uf: _UnionFind,
    node_class: np.ndarray,
    node_sum: np.ndarray,
    node_cnt: np.ndarray,
    *,
    names: dict[int, str],
    crs: CRS,
    transform: Affine,
    min_area_m2: float,
    simplify_px: float,
    fill_holes_px: float,
    min_area_px: float = 0.0,
    scene: str,
    scene_date: str | None,
    out_gpkg: Path,
    classes: list[dict],
    style: bool,
    regularize: frozenset[int] = frozenset(),
) -> int:
    """Merge parts per global instance, simplify (or regularise), georeference, measure, filter, write."""
    roots = uf.roots()
    sums = np.bincount(roots, weights=node_sum, minlength=len(roots))
    cnts = np.bincount(roots, weights=node_cnt, minlength=len(roots))
    groups: dict[int, list[Any]] = defaultdict(list)
    for node, g in parts:
        groups[int(roots[node])].append(g)
    geoms: list[Any] = []
    gclass: list[int] = []
    gscore: list[float] = []
    for root, gs in groups.items():
        g = gs[0] if len(gs) == 1 else shapely.union_all(gs)
        score = float(sums[root] / cnts[root]) if cnts[root] else float("nan")
        for p in getattr(g, "geoms", [g]):  # a multi-part result only if the halo was too small
            geoms.append(p)
            gclass.append(int(node_class[root]))
            gscore.append(score)
    arr = np.array(geoms, dtype=object)
    if len(arr) and min_area_px > 0:  # cheap pre-filter in pixel space (the exact one, in m², is below)
        big = shapely.area(arr) >= min_area_px
        arr = arr[big]
        gclass = [c for c, k in zip(gclass, big.tolist(), strict=True) if k]
        gscore = [v for v, k in zip(gscore, big.tolist(), strict=True) if k]
    if len(arr) and fill_holes_px > 0:
        arr = fill_small_holes(arr, fill_holes_px)
    if len(arr):
        # canonical rings (start at the min corner, no collinear seam vertices), so the result
        # does not depend on where the block seams were
        arr = shapely.simplify(shapely.normalize(arr), 0.0, preserve_topology=True)
    reg = np.isin(np.array(gclass, dtype=int), sorted(regularize)) if len(arr) else np.zeros(0, bool)
    if reg.any():
        arr[reg] = _regularize_pixels(arr[reg], transform, crs)
    if len(arr) and simplify_px > 0 and not reg.all():
        arr[~reg] = shapely.simplify(arr[~reg], simplify_px, preserve_topology=True)
    # deterministic order: class, then top-left corner (pixel space)
    if len(arr):
        b = shapely.bounds(arr)
        order = np.lexsort((b[:, 0], b[:, 1], np.array(gclass)))
        arr = arr[order]
        gclass = [gclass[i] for i in order]
        gscore = [gscore[i] for i in order]
        t = transform

        def _geo(xy: np.ndarray) -> np.ndarray:
            return np.column_stack([t.a * xy[:, 0] + t.b * xy[:, 1] + t.c, t.d * xy[:, 0] + t.e * xy[:, 1] + t.f])

        arr = shapely.orient_polygons(shapely.transform(arr, _geo))
    areas = geodesic_areas_m2(arr, crs)
    keep = areas >= min_area_m2 if len(arr) else np.zeros(0, bool)
    gdf = gpd.GeoDataFrame(
        {
            "class": pd.Series([names[c] for c in np.array(gclass, dtype=int)[keep]] if len(arr) else [], dtype=str),
            "class_id": pd.Series(np.array(gclass, dtype=np.int32)[keep] if len(arr) else [], dtype=np.int32),
            "score": pd.Series(np.array(gscore, dtype=np.float64)[keep] if len(arr) else [], dtype=np.float64),
            "area_m2": pd.Series(areas[keep], dtype=np.float64),
            "scene": pd.Series([scene] * int(keep.sum()), dtype=str),
            "scene_date": pd.Series([scene_date or ""] * int(keep.sum()), dtype=str),
        },
        geometry=gpd.GeoSeries(list(arr[keep]) if len(arr) else [], crs=crs.to_wkt()),
    )
    if scene_date is None:
        gdf["scene_date"] = pd.Series([None] * len(gdf), dtype=object)
    write_instances(gdf, out_gpkg, classes=classes, style=style)
    log.info("%s: %d instance polygons", out_gpkg, len(gdf))
    return len(gdf)


def regularize_class_ids(
    names: tuple[str, ...] | str, classes: list[dict], boundary_class: int | None, *, what: str
) -> frozenset[int]:
    """Ids of the object classes named in ``names`` (``--regularize``); unknown names -> ConfigError."""
    names = (names,) if isinstance(names, str) else tuple(names)
    objects = {str(c["name"]): int(c["id"]) for c in classes if int(c["id"]) not in (0, boundary_class)}
    bad = [n for n in names if n not in objects]
    if bad:
        raise ConfigError(f"{what}: --regularize {bad[0]!r} is not an object class; classes: {', '.join(objects)}")
    return frozenset(objects[n] for n in names)


def _regularize_pixels(geoms: np.ndarray, transform: Affine, crs: CRS) -> np.ndarray:
    """Regularise pixel-space polygons in a ground-isotropic frame (pixel axes scaled to metres)."""
    from geoseg.regularize import regularize_polygons

    b = shapely.bounds(geoms)
    col, row = float(np.mean(b[:, [0, 2]])), float(np.mean(b[:, [1, 3]]))
    sx, sy = math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e)
    if crs is not None and ProjCRS.from_user_input(crs.to_wkt()).is_geographic:  # degrees: metres here
        lon, lat = transform * (col, row)
        lon1, lat1 = transform * (col + 1, row)
        lon2, lat2 = transform * (col, row + 1)
        sx = float(_GEOD.inv(lon, lat, lon1, lat1)[2])
        sy = float(_GEOD.inv(lon, lat, lon2, lat2)[2])
    scale = np.array([sx, sy])
    ground = shapely.transform(geoms, lambda xy: xy * scale)
    out = regularize_polygons(ground, pixel_size=math.sqrt(sx * sy))
    return shapely.transform(out, lambda xy: xy / scale)


def write_instances(gdf: gpd.GeoDataFrame, out_gpkg: Path, *, classes: list[dict], style: bool = True) -> Path:
    """Write ``gdf`` as layer ``instances`` atomically (temp name + rename), styled for QGIS."""
    out_gpkg = Path(out_gpkg)
    out_gpkg.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_gpkg.with_name(f".{out_gpkg.stem}.tmp.gpkg")
    tmp.unlink(missing_ok=True)
    try:
        gdf.to_file(tmp, driver="GPKG", layer=LAYER, engine="pyogrio", geometry_type="Polygon",
                    dataset_options=GPKG_OPTIONS)  # fmt: skip
        if style:
            from geoseg.qgis import style_gpkg

            style_gpkg(tmp, LAYER, classes)
        os.replace(tmp, out_gpkg)
    finally:
        tmp.unlink(missing_ok=True)
    return out_gpkg


# ---------------------------------------------------------------------------------------------
# class metadata of an existing prediction
# ---------------------------------------------------------------------------------------------
def read_prediction_classes(raster: Path, model: Path | None = None) -> tuple[list[dict], int | None]:
    """``(classes, boundary_class)`` of a prediction raster.

    Looked up in order: ``model`` (a model or run directory), the raster's tags (``classes`` JSON
    list and ``boundary_class``), the sibling ``run.json``, the sibling ``instances.gpkg``
    (class names/ids), then band descriptions (a band named ``boundary`` is the boundary class).
    """
    import json

    raster = Path(raster)
    if model is not None:
        from geoseg.train.model import read_model_config

        cfg = read_model_config(model)
        return _norm_classes(cfg["classes"]), cfg.get("boundary_class")
    try:
        with rasterio.open(raster) as ds:
            tags = {**ds.tags(), **{k.lower(): v for k, v in ds.tags().items()}}
            desc = list(ds.descriptions)
            count = ds.count
            cmap = None
            if count == 1:
                try:
                    cmap = ds.colormap(1)
                except ValueError:
                    cmap = None
    except rasterio.errors.RasterioIOError as e:
        raise RasterReadError(f"{raster}: not a readable raster ({str(e).splitlines()[0]})") from None
    colors = _colormap_colors(raster)
    if "class_names" in tags:  # {id: name} written by geoseg predict on classes.tif
        try:
            cn = {int(k): str(v) for k, v in json.loads(tags["class_names"]).items()}
            cls = _norm_classes([{"id": i, "name": n, "color": colors.get(i)} for i, n in sorted(cn.items())])
            bc = tags.get("boundary_class")
            bci = int(bc) if bc not in (None, "", "None", "null") else None
            if bci is None:
                bci = next((c["id"] for c in cls if c["name"].lower() == "boundary"), None)
            return cls, bci
        except (ValueError, TypeError, AttributeError):
            pass
    for key in ("classes", "geoseg_classes"):
        if key in tags:
            try:
                cls = _norm_classes(json.loads(tags[key]))
                bc = tags.get("boundary_class")
                return cls, (int(bc) if bc not in (None, "", "None", "null") else None)
            except (ValueError, TypeError, KeyError):
                pass
    run_json = raster.parent / "run.json"
    if run_json.exists():
        try:
            data = json.loads(run_json.read_text())
            found = _find_classes(data)
            if found is not None:
                return found
        except (OSError, ValueError):
            pass
    gpkg = raster.parent / "instances.gpkg"
    if gpkg.exists() and count == 1:
        try:
            df = gpd.read_file(gpkg, layer=LAYER, engine="pyogrio", ignore_geometry=True)
            pairs = dict(zip(df["class_id"].astype(int), df["class"].astype(str), strict=True))
            if pairs:
                pairs.setdefault(0, "background")
                return _norm_classes([{"id": i, "name": n} for i, n in sorted(pairs.items())]), None
        except Exception:  # any failure means "not usable here"
            pass
    if count > 1:
        names = [d or ("background" if i == 0 else f"class{i}") for i, d in enumerate(desc)]
        bc = next((i for i, n in enumerate(names) if n.lower() == "boundary"), None)
        return _norm_classes([{"id": i, "name": n, "color": colors.get(i)} for i, n in enumerate(names)]), bc
    if cmap:
        ids = [i for i, rgba in cmap.items() if i < 255 and (i == 0 or any(rgba[:3]))]
        return _norm_classes([{"id": i, "name": "background" if i == 0 else f"class{i}"} for i in ids]), None
    raise ConfigError(f"{raster}: no class information found; pass --model RUN_OR_MODEL_DIR")


def _colormap_colors(raster: Path) -> dict[int, str]:
    """``{class id: "#rrggbb"}`` from the colour table of ``raster`` or of its sibling classes.tif."""
    for p in (raster, raster.parent / "classes.tif"):
        try:
            with rasterio.open(p) as ds:
                if ds.count != 1:
                    continue
                cmap = ds.colormap(1)
        except (rasterio.errors.RasterioIOError, ValueError):
            continue
        return {int(i): "#{:02x}{:02x}{:02x}".format(*rgba[:3]) for i, rgba in cmap.items() if i < 255}
    return {}


def _find_classes(data: Any) -> tuple[list[dict], int | None] | None:
    if isinstance(data, dict):
        if isinstance(data.get("classes"), list) and data["classes"] and isinstance(data["classes"][0], dict):
            return _norm_classes(data["classes"]), data.get("boundary_class")
        for v in data.values():
            found = _find_classes(v)
            if found is not None:
                return found
    return None


def _norm_classes(classes: list[Any]) -> list[dict]:
    out = []
    for i, c in enumerate(classes):
        if isinstance(c, str):
            c = {"id": i, "name": c}
        cid = int(c["id"])
        color = c.get("color") or DEFAULT_COLORS[cid % len(DEFAULT_COLORS)]
        out.append({"id": cid, "name": str(c.get("name", f"class{cid}")), "color": color})
    return out


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VectorizeConfig:
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
        raise RasterReadError(f"{raster}: not a readable raster ({str(e).splitlines()[0]})") from None
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
    from geoseg.train.model import read_model_config

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
    fg = [int(c["id"]) for c in classes if int(c["id"]) not in (0, boundary)]
    return resolve_postprocess(
        mcfg, fg_classes=fg, threshold=config.threshold, min_area_m2=config.min_area_m2,
        fill_holes_m2=config.fill_holes_m2, core_boundary_max=config.core_boundary_max, simplify_px=config.simplify_px,
    )  # fmt: skip
