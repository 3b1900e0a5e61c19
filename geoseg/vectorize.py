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

Streaming: unions are graph edges; at the end of each block row the connected components of the
nodes so far are the objects. An object none of whose nodes occurs in the overlaps kept for the
next block row can no longer change: it is merged, post-processed (hole filling, the pixel-space
min-area pre-filter, canonical rings, simplification or regularisation, georeferencing, true area,
the m² filter, all per object) and appended to a temporary GeoPackage (one append per block row,
then the style and an atomic rename). Only the nodes in those overlaps are kept, renumbered, with
the score totals and polygon parts of their unfinished objects. Objects of ``regularize`` classes
wait until every object within reach of the regulariser (``2 x 2 px`` of movement + 1 px) is
finished too, since neighbours are regularised together (so they never overlap).

Output order (documented, the same for every block size): by the bottom edge of the object's raw
pixel outline (the pixel row its last pixel is on; top of the scene first), then class id, left,
top and right edge, pixel area and centroid. An object is written once no unfinished or later
object can sort before it.

Memory: O(C * (block_size + 2 * halo)^2) for one block, plus O(width * (block_size + halo)) for
the objects and overlap bands of one block row, plus the objects crossing the next seam, plus
(only with ``regularize``) clusters of regularised objects closer than ~5 px to each other.
Independent of the number of objects and of the scene height. GDAL's block cache is limited to
two haloed block rows of the raster while vectorizing.
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
from pyproj import Geod, Transformer
from rasterio.crs import CRS
from rasterio.windows import Window
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from geoseg.classes import ClassesLike, ClassTable, as_class_dicts
from geoseg.config import StageConfig
from geoseg.errors import ConfigError, GeosegError, InputNotFoundError, RasterReadError, first_line
from geoseg.grid import geodesic_areas_m2, local_areas_m2
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
_FLOAT_UNIT = 2.0**-24  # fixed-point unit of the score sums of float rasters
REGULARIZE_SHIFT_PX = 2.0  # the most a regularised outline may move (geoseg.regularize max_shift_px)


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
    core_boundary_max: float = 0.1,
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
    am = _argmax0(probs)
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


def _argmax0(probs: np.ndarray) -> np.ndarray:
    """``np.argmax(probs, axis=0)`` as int16 (first maximum wins), one contiguous pass per class."""
    best = probs[0].copy()
    am = np.zeros(best.shape, np.int16)
    for k in range(1, probs.shape[0]):
        gt = probs[k] > best
        am[gt] = k
        np.maximum(best, probs[k], out=best)
    return am


def _lonlat(crs: CRS, xy: tuple[float, float]) -> tuple[float, float]:
    """(lon, lat) of the point ``xy`` given in ``crs``."""
    t = Transformer.from_crs(ProjCRS.from_user_input(crs.to_wkt()), ProjCRS.from_epsg(4326), always_xy=True)
    lon, lat = t.transform(*xy)
    return float(lon), float(lat)


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


class _Buffer:
    """A growable 1-D numpy array (amortised O(1) appends)."""

    def __init__(self, dtype: Any, values: np.ndarray | None = None) -> None:
        self.dtype = np.dtype(dtype)
        self._a = np.zeros(max(1024, 0 if values is None else len(values)), self.dtype)
        self._n = 0
        if values is not None:
            self.extend(values)

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


def _components(n: int, edges: list[np.ndarray]) -> tuple[int, np.ndarray]:
    """``(count, label per node)`` of the undirected graph on nodes ``0..n-1`` with (2, k) ``edges``."""
    e = np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), np.int64)
    if e.shape[1] == 0:
        return n, np.arange(n)
    g = coo_matrix((np.ones(e.shape[1], np.int8), (e[0], e[1])), shape=(n, n))
    count, lab = connected_components(g, directed=False)
    return int(count), lab


def _polygons_px(lid: np.ndarray, mask: np.ndarray, col_off: int, row_off: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values, polygons)`` of the 4-connected regions of ``lid`` under ``mask`` (GDAL polygonize),
    in global pixel coordinates (integers), built into shapely in one vectorised call."""
    vals: list[int] = []
    coords: list[Any] = []
    ring_off, poly_off = [0], [0]
    shift = Affine.translation(col_off, row_off)
    for geom, val in rasterio.features.shapes(lid, mask=mask, connectivity=4, transform=shift):
        vals.append(int(val))
        for ring in geom["coordinates"]:
            coords.extend(ring)
            ring_off.append(len(coords))
        poly_off.append(len(ring_off) - 1)
    if not vals:
        return np.zeros(0, np.int64), np.zeros(0, dtype=object)
    geoms = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, np.asarray(coords, np.float64),
        (np.asarray(ring_off, np.int64), np.asarray(poly_off, np.int64)),
    )  # fmt: skip
    return np.asarray(vals, np.int64), geoms


_KEY_COLS = 8  # ymax, class, xmin, ymin, xmax, area, centroid x, centroid y (pixel space, raw outline)


def _order_keys(geoms_px: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """(n, 8) sort keys of raw pixel-space objects: bottom edge first (see :func:`vectorize_prediction`)."""
    b = shapely.bounds(geoms_px)
    c = shapely.get_coordinates(shapely.centroid(geoms_px))
    return np.column_stack([b[:, 3], cls, b[:, 0], b[:, 1], b[:, 2], shapely.area(geoms_px), c[:, 0], c[:, 1]])


@dataclass
class _Post:
    """Per-object post-processing (pixel units unless named ``_m2``) and the output attributes."""

    names: dict[int, str]
    crs: CRS
    transform: Affine
    min_area_m2: float
    min_area_px: float
    fill_holes_px: float
    simplify_px: float
    regularize: frozenset[int]
    gap_px: float  # regularised objects closer than this are regularised together
    centre: tuple[float, float]  # (col, row) where a geographic CRS's ground scale is taken
    origin: tuple[float, float]  # (lon, lat) of the scene centre: origin of the equal-area projection
    scene: str
    scene_date: str | None
    score_unit: float  # probability per unit of the (integer) score sums


@dataclass
class _Objects:
    """Finished objects (one row each): geometry, class id, score, sort key (``_order_keys``)."""

    geoms: np.ndarray
    cls: np.ndarray
    score: np.ndarray
    key: np.ndarray
    area_m2: np.ndarray | None = None  # set once post-processed (geometry then in the raster CRS)

    @classmethod
    def empty(cls) -> _Objects:
        return cls(np.zeros(0, dtype=object), np.zeros(0, np.int16), np.zeros(0), np.zeros((0, _KEY_COLS)))

    def __len__(self) -> int:
        return len(self.geoms)

    def take(self, sel: np.ndarray) -> _Objects:
        a = None if self.area_m2 is None else self.area_m2[sel]
        return _Objects(self.geoms[sel], self.cls[sel], self.score[sel], self.key[sel], a)

    @staticmethod
    def concat(parts: list[_Objects]) -> _Objects:
        parts = [p for p in parts if len(p)]
        if not parts:
            return _Objects.empty()
        if len(parts) == 1:
            return parts[0]
        areas = [p.area_m2 for p in parts]
        return _Objects(
            np.concatenate([p.geoms for p in parts]), np.concatenate([p.cls for p in parts]),
            np.concatenate([p.score for p in parts]), np.concatenate([p.key for p in parts]),
            None if any(a is None for a in areas) else np.concatenate(areas),  # type: ignore[arg-type]
        )  # fmt: skip

    def sorted(self) -> _Objects:
        return self.take(np.lexsort(self.key.T[::-1]))


class _Stream:
    """The block driver's state between block rows, and the hand-over of finished objects to the writer.

    Nodes are the instance ids of the blocks' labellings (``1..n``; 0 = none), with class, core-less
    flag, score sum and pixel count. Within a block row, unions found in the window overlaps are
    collected as graph edges; at the end of the row the connected components of the graph are the
    objects so far. An object is *finished* when none of its nodes occurs in the overlaps kept for
    the next block row (no later block can add to it): it is merged, post-processed and queued for
    writing. Everything else is compacted: only the nodes that occur in those overlaps are kept
    (renumbered ``1..m``; one per object holds its score totals and accumulated polygon parts), so
    the state never grows with the number of finished objects or the scene height.
    """

    def __init__(self, post: _Post, writer: _Writer) -> None:
        self.post, self.writer = post, writer
        self.cls = _Buffer(np.int16, np.zeros(1, np.int16))
        self.fb = _Buffer(bool, np.zeros(1, bool))
        self.sum = _Buffer(np.float64, np.zeros(1))
        self.cnt = _Buffer(np.int64, np.zeros(1, np.int64))
        self.edges: list[np.ndarray] = []
        self.part_node: list[np.ndarray] = []
        self.part_geom: list[np.ndarray] = []
        self.held = _Objects.empty()  # finished regularised-class objects waiting for their neighbours
        self.ready = _Objects.empty()  # post-processed, waiting for their place in the output order
        self.peak_state = 0  # most nodes + parts + held + ready at any row end (for tests / logging)

    @property
    def n(self) -> int:
        """Number of nodes (ids ``1..n``)."""
        return len(self.cls.view()) - 1

    def add_block(self, classes: np.ndarray, fallback: np.ndarray, sums: np.ndarray, cnts: np.ndarray) -> int:
        """Add a block's nodes; returns the offset of its local ids ``1..k``."""
        off = self.n
        self.cls.extend(classes)
        self.fb.extend(fallback)
        self.sum.extend(sums)
        self.cnt.extend(cnts)
        return off

    def end_row(
        self, pending: dict[Any, list[tuple[Window, np.ndarray, np.ndarray]]], row_stop: int, last: bool
    ) -> None:
        """Finish, post-process and queue the objects no later block can touch; compact the rest.

        ``pending``: the overlaps kept for the next block row (their node ids are renumbered in place);
        ``row_stop``: the first pixel row of the next block row.
        """
        post = self.post
        ncomp, lab = _components(self.n + 1, self.edges)
        csum = np.bincount(lab, weights=self.sum.view(), minlength=ncomp)
        ccnt = np.bincount(lab, weights=self.cnt.view(), minlength=ncomp)
        ccls = np.zeros(ncomp, np.int16)
        ccls[lab] = self.cls.view()
        arrays = [a for lst in pending.values() for _, reg, mark in lst for a in (reg, mark)]
        live_nodes = np.unique(np.concatenate([a[a > 0] for a in arrays])) if arrays and not last else np.zeros(0, int)
        live = np.zeros(ncomp, bool)
        live[lab[live_nodes]] = True
        pnode = np.concatenate(self.part_node) if self.part_node else np.zeros(0, np.int64)
        pgeom = np.concatenate(self.part_geom) if self.part_geom else np.zeros(0, dtype=object)
        pc = lab[pnode]
        fin = ~live[pc]
        objs = self._merge(pgeom[fin], pc[fin], csum, ccnt, ccls)
        # compaction: keep the nodes of the overlaps; the first of each object carries its totals and parts
        keep = ~fin
        lc = lab[live_nodes]
        uc, first = np.unique(lc, return_index=True)
        rep = np.zeros(ncomp, np.int64)
        rep[uc] = first + 1
        s, c = np.zeros(len(live_nodes) + 1), np.zeros(len(live_nodes) + 1, np.int64)
        s[rep[uc]], c[rep[uc]] = csum[uc], ccnt[uc]
        self.cls = _Buffer(np.int16, np.r_[np.int16(0), self.cls.view()[live_nodes]])
        self.fb = _Buffer(bool, np.r_[False, self.fb.view()[live_nodes]])
        self.sum, self.cnt = _Buffer(np.float64, s), _Buffer(np.int64, c)
        nid = np.arange(1, len(live_nodes) + 1)
        to = rep[lc]
        self.edges = [np.stack([nid[nid != to], to[nid != to]]).astype(np.int64)]
        kept_geom, kept_comp = pgeom[keep], pc[keep]
        self.part_node, self.part_geom = [rep[kept_comp]], [kept_geom]
        for a in arrays:
            nz = a > 0
            a[nz] = np.searchsorted(live_nodes, a[nz]) + 1
        # regularised classes wait until no unfinished or later object is within reach
        is_reg = np.isin(objs.cls, sorted(post.regularize)) if post.regularize else np.zeros(len(objs), bool)
        self.ready = _Objects.concat([self.ready, self._finish(objs.take(~is_reg), regular=False)])
        self.held = _Objects.concat([self.held, objs.take(is_reg)])
        if len(self.held):
            go = self._reg_clusters_done(kept_geom[np.isin(ccls[kept_comp], sorted(post.regularize))], row_stop, last)
            self.ready = _Objects.concat([self.ready, self._finish(self.held.take(go).sorted(), regular=True)])
            self.held = self.held.take(~go)
        # output order: every object not yet ready ends at pixel row >= limit
        limit = math.inf
        if not last:
            limit = row_stop + 1
            if len(kept_geom):
                cmax = np.full(ncomp, -np.inf)
                np.maximum.at(cmax, kept_comp, shapely.bounds(kept_geom)[:, 3])
                limit = min(limit, float(cmax[np.isfinite(cmax)].min()))
            if len(self.held):
                limit = min(limit, float(self.held.key[:, 0].min()))
        out = self.ready.key[:, 0] < limit
        if out.any():
            self.writer.add(self.ready.take(out).sorted())
            self.ready = self.ready.take(~out)
        self.writer.end_row()
        self.peak_state = max(self.peak_state, self.n + len(kept_geom) + len(self.held) + len(self.ready))

    def _merge(
        self, geoms: np.ndarray, comp: np.ndarray, csum: np.ndarray, ccnt: np.ndarray, ccls: np.ndarray
    ) -> _Objects:
        """Union the parts of each finished object; split multi-part results; drop tiny ones; fill holes."""
        if not len(geoms):
            return _Objects.empty()
        o = np.argsort(comp, kind="stable")
        geoms, comp = geoms[o], comp[o]
        starts = np.flatnonzero(np.r_[True, comp[1:] != comp[:-1]])
        ends = np.r_[starts[1:], len(comp)]
        merged = geoms[starts].copy()
        for i in np.flatnonzero(ends - starts > 1).tolist():
            merged[i] = shapely.union_all(geoms[starts[i] : ends[i]])
        oc = comp[starts]
        parts, idx = shapely.get_parts(merged, return_index=True)  # multi-part only if the halo was too small
        oc = oc[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            score = np.where(ccnt[oc] > 0, csum[oc] * self.post.score_unit / np.maximum(ccnt[oc], 1), np.nan)
        objs = _Objects(np.asarray(parts, dtype=object), ccls[oc].astype(np.int16), score, np.zeros((len(parts), 0)))
        if self.post.min_area_px > 0:  # cheap pre-filter in pixel space (the exact one, in m², comes later)
            objs = objs.take(shapely.area(objs.geoms) >= self.post.min_area_px)
        if len(objs) and self.post.fill_holes_px > 0:
            objs.geoms = fill_small_holes(objs.geoms, self.post.fill_holes_px)
        objs.key = _order_keys(objs.geoms, objs.cls) if len(objs) else np.zeros((0, _KEY_COLS))
        return objs

    def _reg_clusters_done(self, live_parts: np.ndarray, row_stop: int, last: bool) -> np.ndarray:
        """Which held objects can be regularised now: their whole cluster (objects within ``gap_px``
        of each other, transitively) is finished and no later block can add an object within reach."""
        held = self.held
        if last:
            return np.ones(len(held), bool)
        hull = shapely.polygons(shapely.get_exterior_ring(np.concatenate([held.geoms, live_parts])))
        tree = shapely.STRtree(hull)
        a, b = tree.query(hull, predicate="dwithin", distance=self.post.gap_px)
        _, cl = _components(len(hull), [np.stack([a, b]).astype(np.int64)])
        blocked = np.zeros(len(hull), bool)
        blocked[cl[len(held) :]] = True  # a cluster with an unfinished object
        blocked[cl[: len(held)][held.key[:, 0] >= row_stop - self.post.gap_px]] = True  # later objects in reach
        return ~blocked[cl[: len(held)]]

    def _finish(self, objs: _Objects, *, regular: bool) -> _Objects:
        """Canonical rings, simplification or regularisation, georeferencing, true areas, the m² filter."""
        if not len(objs):
            return objs
        post = self.post
        # canonical rings (start at the min corner, no collinear seam vertices): independent of the seams
        g = shapely.simplify(shapely.normalize(objs.geoms), 0.0, preserve_topology=True)
        if regular:
            g = _regularize_pixels(g, post.transform, post.crs, post.centre)
        elif post.simplify_px > 0:
            g = shapely.simplify(g, post.simplify_px, preserve_topology=True)
        t = post.transform

        def _geo(xy: np.ndarray) -> np.ndarray:
            return np.column_stack([t.a * xy[:, 0] + t.b * xy[:, 1] + t.c, t.d * xy[:, 0] + t.e * xy[:, 1] + t.f])

        g = shapely.orient_polygons(shapely.transform(g, _geo))
        areas = local_areas_m2(g, post.crs, post.origin)
        out = _Objects(g, objs.cls, objs.score, objs.key, areas)
        return out.take(areas >= post.min_area_m2)


class _Writer:
    """Appends batches of finished objects to a temporary GeoPackage; ``commit`` styles and renames it.

    Rows are written through pyogrio, one append (one open of the file) per block row or per
    ``batch_rows`` rows, whichever comes first."""

    def __init__(self, out_gpkg: Path, post: _Post, *, classes: list[dict], style: bool, batch_rows: int = 20_000):
        self.out = Path(out_gpkg)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.with_name(f".{self.out.stem}.tmp.gpkg")
        self.tmp.unlink(missing_ok=True)
        self.post, self.classes, self.style, self.batch_rows = post, classes, style, batch_rows
        self.buf: list[_Objects] = []
        self.n_buf = 0
        self.written = 0
        self.created = False

    def add(self, objs: _Objects) -> None:
        """Queue ``objs`` (already in output order); written once ``batch_rows`` are queued or at ``end_row``."""
        self.buf.append(objs)
        self.n_buf += len(objs)
        if self.n_buf >= self.batch_rows:
            self.flush()

    def end_row(self) -> None:
        """Write what is queued (one append per block row keeps memory O(objects of a block row))."""
        if self.n_buf:
            self.flush()

    def flush(self) -> None:
        objs = _Objects.concat(self.buf)
        self.buf, self.n_buf = [], 0
        if self.created and not len(objs):
            return
        gdf = self._frame(objs)
        gdf.to_file(self.tmp, driver="GPKG", layer=LAYER, engine="pyogrio", geometry_type="Polygon",
                    dataset_options=GPKG_OPTIONS, append=self.created)  # fmt: skip
        self.created = True
        self.written += len(gdf)

    def _frame(self, objs: _Objects) -> gpd.GeoDataFrame:
        post, n = self.post, len(objs)
        areas = objs.area_m2 if objs.area_m2 is not None else np.zeros(n)
        gdf = gpd.GeoDataFrame(
            {
                "class": pd.Series([post.names[int(c)] for c in objs.cls], dtype=str),
                "class_id": pd.Series(objs.cls.astype(np.int32), dtype=np.int32),
                "score": pd.Series(objs.score, dtype=np.float64),
                "area_m2": pd.Series(areas, dtype=np.float64),
                "scene": pd.Series([post.scene] * n, dtype=str),
                "scene_date": pd.Series([post.scene_date or ""] * n, dtype=str),
            },
            geometry=gpd.GeoSeries(list(objs.geoms), crs=post.crs.to_wkt() if post.crs else None),
        )
        if post.scene_date is None:
            gdf["scene_date"] = pd.Series([None] * n, dtype=object)
        return gdf

    def commit(self) -> int:
        """Write what is buffered, style, rename into place; returns the number of polygons written."""
        self.flush()
        if self.style:
            from geoseg.qgis import style_gpkg

            style_gpkg(self.tmp, LAYER, self.classes)
        os.replace(self.tmp, self.out)
        return self.written

    def abort(self) -> None:
        self.tmp.unlink(missing_ok=True)


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
    if not probabilities.exists():
        raise InputNotFoundError(f"{probabilities}: probabilities raster not found")
    try:
        ds = rasterio.open(probabilities)
    except rasterio.errors.RasterioIOError as e:
        raise RasterReadError(f"{probabilities}: not a readable raster ({first_line(e)})") from None
    with ds:
        if ds.count < max(ids) + 1:
            raise ConfigError(f"{probabilities}: {ds.count} bands but class ids go up to {max(ids)}")
        scale = _raw_scale(ds)
        thr_raw = threshold / scale - 1e-6
        core_raw = core_boundary_max / scale
        crs, transform = ds.crs, ds.transform
        px_m2 = pixel_area_m2(ds.crs, ds.transform, ds.width, ds.height)
        sx, sy = math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e)
        aniso = math.sqrt(max(sx, sy) / min(sx, sy)) if min(sx, sy) > 0 else 1.0
        post = _Post(
            names=names, crs=crs, transform=transform, min_area_m2=min_area_m2,
            min_area_px=0.5 * min_area_m2 / px_m2 if px_m2 > 0 else 0.0,
            fill_holes_px=fill_holes_m2 / px_m2 if px_m2 > 0 else 0.0, simplify_px=simplify_px,
            regularize=reg_ids, gap_px=2 * REGULARIZE_SHIFT_PX * aniso + 1.0, centre=(ds.width / 2, ds.height / 2),
            origin=_lonlat(crs, transform * (ds.width / 2, ds.height / 2)),
            scene=scene, scene_date=scene_date,
            score_unit=scale if np.issubdtype(np.dtype(ds.dtypes[0]), np.integer) else _FLOAT_UNIT,
        )  # fmt: skip
        writer = _Writer(out_gpkg, post, classes=classes, style=style)
        stream = _Stream(post, writer)
        pending: dict[tuple[int, int], list[tuple[Window, np.ndarray, np.ndarray]]] = defaultdict(list)
        bs, width, height = int(block_size), ds.width, ds.height
        nbr, nbc = math.ceil(height / bs), math.ceil(width / bs)
        # GDAL's block cache need only hold one haloed block row of the raster (it grows to its limit otherwise)
        row_bytes = width * (bs + 2 * halo) * ds.count * np.dtype(ds.dtypes[0]).itemsize
        cache = max(64 * 2**20, 2 * row_bytes)
        try:
            with (
                rasterio.Env(GDAL_CACHEMAX=cache),
                tqdm(total=nbr * nbc, desc="vectorize", unit="block", disable=nbr * nbc < 4, leave=False) as bar,
            ):
                for r, c, win in _block_grid(width, height, bs):
                    _vectorize_block(ds, r, c, win, halo, bs, nbr, nbc, pending, stream, fg=fg,
                                     boundary_class=boundary_class, thr_raw=thr_raw, core_raw=core_raw)  # fmt: skip
                    bar.update()
                    if c == nbc - 1:
                        stream.end_row(pending, min((r + 1) * bs, height), last=r == nbr - 1)
            n = writer.commit()
        finally:
            writer.abort()
    log.info("%s: %d instance polygons (at most %d objects pending at a block-row end)", out_gpkg, n, stream.peak_state)
    return n


def _vectorize_block(
    ds: rasterio.DatasetReader,
    r: int,
    c: int,
    win: Window,
    halo: int,
    bs: int,
    nbr: int,
    nbc: int,
    pending: dict[tuple[int, int], list[tuple[Window, np.ndarray, np.ndarray]]],
    stream: _Stream,
    *,
    fg: list[int],
    boundary_class: int | None,
    thr_raw: float,
    core_raw: float,
) -> None:
    """Label one haloed block, record its unions with earlier neighbours and its overlaps with later
    ones (in ``pending``), and add its interior polygons and scores to ``stream``."""
    width, height = ds.width, ds.height
    ext = _ext(win, halo, width, height)
    data, valid = _read_probs(ds, ext)
    lab = label_instances(data, valid, fg_classes=fg, boundary_class=boundary_class, threshold=thr_raw,
                          core_boundary_max=core_raw)  # fmt: skip
    region, marker = lab.region, lab.marker
    # interior: scores
    inner = _sub(region, ext, win)
    m = inner > 0
    sums: np.ndarray = np.zeros(lab.n + 1)
    cnts: np.ndarray = np.zeros(lab.n + 1, np.int64)
    if lab.n:
        pin = _sub(data.transpose(1, 2, 0), ext, win)  # (h, w, C) view
        lid = inner[m]
        pk = np.take_along_axis(pin[m], lab.classes[lid - 1][:, None].astype(np.intp), axis=1)[:, 0]
        # exact sums (integers, so the block layout cannot change their rounding): raw units for integer
        # rasters, fixed point for float ones; score = sum * score_unit / count
        fixed = pk.astype(np.float64) if np.issubdtype(pk.dtype, np.integer) else np.round(pk * (1 / _FLOAT_UNIT))
        sums = np.bincount(lid, weights=fixed, minlength=lab.n + 1)
        cnts = np.bincount(lid, minlength=lab.n + 1)
    off = stream.add_block(lab.classes, lab.fallback, sums[1:], cnts[1:])
    if lab.n:  # polygons of the interior, in global pixel coordinates
        vals, geoms = _polygons_px(inner, m, int(win.col_off), int(win.row_off))
        stream.part_node.append(vals + off)
        stream.part_geom.append(geoms)
    region[region > 0] += off
    marker[marker > 0] += off
    fb_all, cls_all = stream.fb.view(), stream.cls.view()
    # unions with earlier neighbours over the shared part of both haloed windows
    for owin, oreg, omark in pending.pop((r, c), []):
        creg, cmark = _sub(region, ext, owin), _sub(marker, ext, owin)
        both_m = (omark > 0) & (cmark > 0)
        pairs = [np.stack([omark[both_m], cmark[both_m]])]
        both = (oreg > 0) & (creg > 0)
        a, b = oreg[both], creg[both]
        sel = (fb_all[a] | fb_all[b]) & (cls_all[a] == cls_all[b])
        pairs.append(np.stack([a[sel], b[sel]]))
        pp = np.concatenate(pairs, axis=1).astype(np.int64)
        if pp.size:
            key = np.unique((pp[0] << 32) | pp[1])
            stream.edges.append(np.stack([key >> 32, key & 0xFFFFFFFF]))
    # keep the overlaps with later neighbours
    for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
        nr, nc = r + dr, c + dc
        if not (0 <= nr < nbr and 0 <= nc < nbc):
            continue
        nwin = Window(nc * bs, nr * bs, min(bs, width - nc * bs), min(bs, height - nr * bs))
        ov = _intersect(ext, _ext(nwin, halo, width, height))
        if ov is not None:
            pending[(nr, nc)].append((ov, _sub(region, ext, ov).copy(), _sub(marker, ext, ov).copy()))


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


def _regularize_pixels(
    geoms: np.ndarray, transform: Affine, crs: CRS, centre: tuple[float, float] | None = None
) -> np.ndarray:
    """Regularise pixel-space polygons in a ground-isotropic frame (pixel axes scaled to metres).

    For a geographic CRS the ground scale is taken at pixel ``centre`` (col, row; default: the
    polygons' mean), so the result of a polygon does not depend on which others are in the batch.
    """
    from geoseg.regularize import regularize_polygons

    if centre is None:
        b = shapely.bounds(geoms)
        centre = (float(np.mean(b[:, [0, 2]])), float(np.mean(b[:, [1, 3]])))
    col, row = centre
    sx, sy = math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e)
    if crs is not None and ProjCRS.from_user_input(crs.to_wkt()).is_geographic:  # degrees: metres here
        lon, lat = transform * (col, row)
        lon1, lat1 = transform * (col + 1, row)
        lon2, lat2 = transform * (col, row + 1)
        sx = float(_GEOD.inv(lon, lat, lon1, lat1)[2])
        sy = float(_GEOD.inv(lon, lat, lon2, lat2)[2])
    scale = np.array([sx, sy])
    ground = shapely.transform(geoms, lambda xy: xy * scale)
    out = regularize_polygons(ground, pixel_size=math.sqrt(sx * sy), max_shift_px=REGULARIZE_SHIFT_PX)
    return shapely.transform(out, lambda xy: xy / scale)


def write_instances(gdf: gpd.GeoDataFrame, out_gpkg: Path, *, classes: ClassesLike, style: bool = True) -> Path:
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
        from geoseg.modeldir import read_model_config

        cfg = read_model_config(model)
        table = ClassTable.from_model_config(cfg)
        return table.to_json(), table.boundary
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
        raise RasterReadError(f"{raster}: not a readable raster ({first_line(e)})") from None
    colors = _colormap_colors(raster)
    tagged = ClassTable.from_tags(tags, colors)  # CLASS_NAMES, written by geoseg predict on classes.tif
    if tagged is not None:
        return tagged.to_json(), tagged.boundary
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
        banded = ClassTable.of([{"id": i, "name": n, "color": colors.get(i)} for i, n in enumerate(names)],
                               infer_boundary=True)  # fmt: skip
        return banded.to_json(), banded.boundary
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
    return ClassTable.of(classes).to_json()


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------
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
