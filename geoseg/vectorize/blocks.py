"""Block geometry and the per-block step of the vectorizer: label a haloed block, score its interior,
polygonize it in global pixel coordinates, record unions with earlier neighbours and keep the
overlaps later neighbours need (see :mod:`geoseg.vectorize`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.windows import Window

from geoseg.instances import BlockLabels, label_instances
from geoseg.io.rasters import read_probabilities
from geoseg.polygonize import PixelPolygons, pixel_polygons
from geoseg.vectorize.objects import FLOAT_UNIT
from geoseg.vectorize.stream import Pending, Stream

__all__ = ["BlockPlan", "LabelledBlock", "label_block", "merge_block", "read_block"]


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


def _unions(stream: Stream, current: Pending, earlier: Pending) -> None:
    """Record as graph edges the unions of this block's (global) ids with an earlier neighbour's over
    the shared part of both haloed windows (``current[i]`` and ``earlier[i]``: the same window):
    shared markers, and core-less regions of the same class."""
    fb_all, cls_all = stream.fb.view(), stream.cls.view()
    for (_, creg, cmark), (_, oreg, omark) in zip(current, earlier, strict=True):
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


@dataclass
class LabelledBlock:
    """One block labelled and polygonized (ids local to the block, ``1..lab.n``): the part of the
    block step that needs no other block, so blocks can be labelled in parallel."""

    r: int
    c: int
    win: Window
    ext: Window
    lab: BlockLabels
    sums: np.ndarray  # (lab.n,) exact score sums of the interior (see _scores)
    cnts: np.ndarray  # (lab.n,) interior pixel counts
    parts: PixelPolygons  # interior polygons (global pixel coordinates), values = local ids


def label_block(
    plan: BlockPlan, r: int, c: int, win: Window, ext: Window, data: np.ndarray, valid: np.ndarray
) -> LabelledBlock:
    """Label the haloed block ``ext`` (``data``: its (C, h, w) probabilities, ``valid``: its mask),
    score its interior ``win`` and polygonize it. Pure: numpy, scipy and shapely only, most of it
    outside the GIL, so several blocks can run on threads."""
    lab = label_instances(data, valid, fg_classes=plan.fg, boundary_class=plan.boundary_class,
                          threshold=plan.thr_raw, core_boundary_max=plan.core_raw)  # fmt: skip
    inner = _sub(lab.region, ext, win)
    m = inner > 0
    r0, c0 = int(win.row_off - ext.row_off), int(win.col_off - ext.col_off)
    sums, cnts = _scores(lab, inner, m, data[:, r0 : r0 + int(win.height), c0 : c0 + int(win.width)])
    # polygons of the interior, in global pixel coordinates
    parts = pixel_polygons(inner, int(win.col_off), int(win.row_off)) if lab.n else PixelPolygons.empty()
    return LabelledBlock(r, c, win, ext, lab, sums[1:], cnts[1:], parts)


def read_block(ds: rasterio.DatasetReader, plan: BlockPlan, win: Window) -> tuple[Window, np.ndarray, np.ndarray]:
    """``(haloed window, probabilities, valid mask)`` of block ``win`` (one windowed read)."""
    ext = plan.haloed(win)
    data, valid = read_probabilities(ds, ext)
    return ext, data, valid


def merge_block(plan: BlockPlan, lb: LabelledBlock, pending: dict[tuple[int, int], Pending], stream: Stream) -> None:
    """Add a labelled block to ``stream`` (blocks in row order): its nodes, polygons and scores, its
    unions with earlier neighbours, and its overlaps with later ones (kept in ``pending``)."""
    lab, ext, r, c = lb.lab, lb.ext, lb.r, lb.c
    off = stream.add_block(lab.classes, lab.fallback, lb.sums, lb.cnts)
    if len(lb.parts.values):
        stream.part_node.append(lb.parts.values + off)
        stream.parts.append(lb.parts)
    region, marker = lab.region, lab.marker

    def glob(a: np.ndarray, win: Window) -> np.ndarray:
        """The ids of ``a`` in the overlap ``win``, made global (only overlaps are ever compared)."""
        out = _sub(a, ext, win).copy()
        out[out > 0] += off
        return out

    earlier = pending.pop((r, c), [])
    _unions(stream, [(w, glob(region, w), glob(marker, w)) for w, _, _ in earlier], earlier)
    for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):  # keep the overlaps with later neighbours
        nr, nc = r + dr, c + dc
        if not (0 <= nr < plan.rows and 0 <= nc < plan.cols):
            continue
        ov = _intersect(ext, plan.haloed(plan.window(nr, nc)))
        if ov is not None:
            pending[(nr, nc)].append((ov, glob(region, ov), glob(marker, ov)))
