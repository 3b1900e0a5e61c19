"""Block geometry and the per-block step of the vectorizer: label a haloed block, score its interior,
polygonize it in global pixel coordinates, record unions with earlier neighbours and keep the
overlaps later neighbours need (see :mod:`geoseg.vectorize`)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from rasterio.windows import Window

from geoseg.instances import BlockLabels, label_instances
from geoseg.io.rasters import read_probabilities
from geoseg.vectorize.objects import FLOAT_UNIT
from geoseg.vectorize.stream import Pending, Stream

__all__ = ["BlockPlan", "polygons_px", "vectorize_block"]


@dataclass(frozen=True)
class BlockPlan:
    """The block layout of one raster and the labelling rule in raw raster units."""

    width: int
    height: int
    block_size: int
    halo: int
    fg: list[int]
    boundary_class: int | None
    thr_raw: float
    core_raw: float

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.block_size)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.block_size)

    def window(self, r: int, c: int) -> Window:
        """Block ``(r, c)`` (no halo)."""
        bs, width, height = self.block_size, self.width, self.height
        return Window(c * bs, r * bs, min(bs, width - c * bs), min(bs, height - r * bs))

    def blocks(self) -> Iterator[tuple[int, int, Window]]:
        """``(row, col, window)`` of every block, row by row."""
        for r in range(self.rows):
            for c in range(self.cols):
                yield r, c, self.window(r, c)

    def haloed(self, win: Window) -> Window:
        """``win`` grown by the halo, clipped to the raster."""
        halo, width, height = self.halo, self.width, self.height
        c0, r0 = max(int(win.col_off) - halo, 0), max(int(win.row_off) - halo, 0)
        c1 = min(int(win.col_off + win.width) + halo, width)
        r1 = min(int(win.row_off + win.height) + halo, height)
        return Window(c0, r0, c1 - c0, r1 - r0)


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


def polygons_px(lid: np.ndarray, mask: np.ndarray, col_off: int, row_off: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values, polygons)`` of the 4-connected regions of ``lid`` under ``mask`` (GDAL polygonize),
    in global pixel coordinates (integers), built into shapely in one vectorised call."""
    vals: list[int] = []
    coords: list[tuple[float, float]] = []
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
    xy = np.fromiter(itertools.chain.from_iterable(coords), np.float64, count=2 * len(coords)).reshape(-1, 2)
    geoms = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, xy,
        (np.asarray(ring_off, np.int64), np.asarray(poly_off, np.int64)),
    )  # fmt: skip
    return np.asarray(vals, np.int64), geoms


def _scores(lab: BlockLabels, inner: np.ndarray, m: np.ndarray, pin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sums, counts)`` per local id ``0..n`` of the instance's class probability over ``inner``
    (``pin``: the (C, h, w) probabilities of the block interior, ``m``: ``inner > 0``).

    Exact sums (integers, so the block layout cannot change their rounding): raw units for integer
    rasters, fixed point (:data:`FLOAT_UNIT`) for float ones; score = sum * score_unit / count."""
    if not lab.n:
        return np.zeros(1), np.zeros(1, np.int64)
    lid = inner[m]
    pcls = lab.classes[lid - 1]
    pk = np.zeros(len(lid), pin.dtype)
    for k in np.unique(lab.classes).tolist():  # one contiguous gather per class, not C values per pixel
        sel = pcls == k
        pk[sel] = pin[k][m][sel]
    fixed = pk.astype(np.float64) if np.issubdtype(pk.dtype, np.integer) else np.round(pk * (1 / FLOAT_UNIT))
    return np.bincount(lid, weights=fixed, minlength=lab.n + 1), np.bincount(lid, minlength=lab.n + 1)


def _unions(stream: Stream, region: np.ndarray, marker: np.ndarray, ext: Window, earlier: Pending) -> None:
    """Record as graph edges the unions of this block's ids with an earlier neighbour's over the
    shared part of both haloed windows: shared markers, and core-less regions of the same class."""
    fb_all, cls_all = stream.fb.view(), stream.cls.view()
    for owin, oreg, omark in earlier:
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


def vectorize_block(
    ds: rasterio.DatasetReader, plan: BlockPlan, r: int, c: int, win: Window, pending: dict[tuple[int, int], Pending],
    stream: Stream,
) -> None:  # fmt: skip
    """Label one haloed block, record its unions with earlier neighbours and its overlaps with later
    ones (in ``pending``), and add its interior polygons and scores to ``stream``."""
    ext = plan.haloed(win)
    data, valid = read_probabilities(ds, ext)
    lab = label_instances(data, valid, fg_classes=plan.fg, boundary_class=plan.boundary_class,
                          threshold=plan.thr_raw, core_boundary_max=plan.core_raw)  # fmt: skip
    region, marker = lab.region, lab.marker
    inner = _sub(region, ext, win)
    m = inner > 0
    r0, c0 = int(win.row_off - ext.row_off), int(win.col_off - ext.col_off)
    sums, cnts = _scores(lab, inner, m, data[:, r0 : r0 + int(win.height), c0 : c0 + int(win.width)])
    off = stream.add_block(lab.classes, lab.fallback, sums[1:], cnts[1:])
    if lab.n:  # polygons of the interior, in global pixel coordinates
        vals, geoms = polygons_px(inner, m, int(win.col_off), int(win.row_off))
        stream.part_node.append(vals + off)
        stream.part_geom.append(geoms)
    region[region > 0] += off
    marker[marker > 0] += off
    _unions(stream, region, marker, ext, pending.pop((r, c), []))
    for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):  # keep the overlaps with later neighbours
        nr, nc = r + dr, c + dc
        if not (0 <= nr < plan.rows and 0 <= nc < plan.cols):
            continue
        ov = _intersect(ext, plan.haloed(plan.window(nr, nc)))
        if ov is not None:
            pending[(nr, nc)].append((ov, _sub(region, ext, ov).copy(), _sub(marker, ext, ov).copy()))
