"""AOI -> sliding windows, per scene (pure: grid + geometry in, windows out).

Windows form a lattice ``row_starts x col_starts`` with stride ``tile - overlap`` anchored at the
AOI's bounding window; the last window of each axis is shifted back so it ends at the AOI edge
(and never past the scene edge when the scene is at least one tile). Only windows whose footprint
intersects the AOI are kept, so every pixel inside the AOI keeps *all* the windows covering it.
Windows are grouped in **strips** (one row of windows); strips are grouped in **row ranges**
(:class:`RowRange`: rows of the output that one task writes, for dask and resume; "band" is kept
for spectral bands).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from rasterio.features import rasterize
from shapely.geometry.base import BaseGeometry

from geoseg.errors import ConfigError
from geoseg.grid import Grid, Window
from geoseg.io.vectors import to_crs


def axis_starts(lo: int, hi: int, n: int, size: int, stride: int) -> list[int]:
    """Window starts along one axis so windows of ``size`` cover ``[lo, hi)`` of an axis of ``n`` pixels.

    Starts step by ``stride`` from ``lo``; the last one is moved back to end at ``hi`` (or at ``n``),
    so with ``n >= size`` every window lies inside ``[0, n)``. With ``n < size`` the single window
    starts at 0 and extends past the edge (read boundless). Empty when ``hi <= lo``.
    """
    if hi <= lo:
        return []
    if n <= size:
        return [0]
    s0 = min(lo, n - size)
    starts = [s0]
    while starts[-1] + size < hi:
        nxt = min(starts[-1] + stride, hi - size)  # last window ends exactly at ``hi`` (<= n)
        starts.append(nxt)
    return starts


@dataclass(frozen=True)
class Strip:
    """One row of windows: all start at scene row ``row``; ``cols`` are their column offsets."""

    row: int
    cols: tuple[int, ...]


@dataclass(frozen=True)
class RowRange:
    """Output rows ``[row_lo, row_hi)`` of a scene, written by one task.

    ``strips`` are the indices (into :attr:`ScenePlan.strips`) of every strip whose windows touch
    these rows, including strips owned by the previous range (their windows overlap this one).
    """

    index: int
    row_lo: int
    row_hi: int
    strips: tuple[int, ...]


@dataclass(frozen=True)
class ScenePlan:
    """The windows to predict on one scene's grid for an AOI.

    ``region`` is the AOI's bounding window clipped to the scene; ``cols`` the column range
    ``[col_lo, col_hi)`` (inside the scene) that windows cover: strips are read and accumulated
    over these columns only. ``aoi_wkb`` is the AOI in the scene CRS.
    """

    grid: Grid
    tile: int
    overlap: int
    region: Window
    col_lo: int
    col_hi: int
    strips: tuple[Strip, ...]
    aoi_wkb: bytes = field(repr=False)

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def n_windows(self) -> int:
        return sum(len(s.cols) for s in self.strips)

    @property
    def aoi(self) -> BaseGeometry:
        return shapely.from_wkb(self.aoi_wkb)

    def windows(self) -> Iterator[Window]:
        """All windows in row-major order (the order they are predicted and blended in)."""
        for s in self.strips:
            for c in s.cols:
                yield Window(c, s.row, self.tile, self.tile)

    def aoi_mask(self, rows: tuple[int, int], width: int | None = None) -> np.ndarray:
        """``(h, width)`` bool: pixel centre inside the AOI, for scene rows ``[r0, r1)`` and columns
        ``[col_lo, col_lo + width)`` (default: the plan's columns). Memory: O(h x width)."""
        r0, r1 = rows
        width = self.col_hi - self.col_lo if width is None else width
        if r1 <= r0 or width <= 0:
            return np.zeros((max(r1 - r0, 0), max(width, 0)), bool)
        sub = self.grid[Window(self.col_lo, r0, width, r1 - r0)]
        return rasterize(
            [(self.aoi, 1)], out_shape=(sub.height, sub.width), transform=sub.transform, fill=0, dtype="uint8"
        ).astype(bool)

    def row_ranges(self, n: int) -> list[RowRange]:
        """Split the output rows into ``n`` (or fewer) row ranges of about equal numbers of strips.

        Range boundaries are strip starts; the first range starts at row 0 and the last ends at the
        scene height, so the ranges tile the scene rows exactly.
        """
        ns = len(self.strips)
        n = max(1, min(n, ns))
        cuts = [round(i * ns / n) for i in range(n + 1)]
        out: list[RowRange] = []
        for b in range(n):
            first, last = cuts[b], cuts[b + 1]
            row_lo = 0 if b == 0 else self.strips[first].row
            row_hi = self.grid.height if b == n - 1 else self.strips[last].row
            touching = tuple(i for i, s in enumerate(self.strips) if s.row < row_hi and s.row + self.tile > row_lo)
            out.append(RowRange(b, row_lo, row_hi, touching))
        return out

    def fingerprint(self) -> str:
        """A short hash of everything that determines the windows (for resume checks)."""
        h = hashlib.sha256()
        h.update(repr((self.grid.to_dict(), self.tile, self.overlap, self.strips)).encode())
        h.update(self.aoi_wkb)
        return h.hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tile": self.tile,
            "overlap": self.overlap,
            "region": {
                "col_off": self.region.col_off,
                "row_off": self.region.row_off,
                "width": self.region.width,
                "height": self.region.height,
            },
            "strips": len(self.strips),
            "windows": self.n_windows,
        }


def aoi_geometry(aoi: gpd.GeoDataFrame, grid: Grid) -> BaseGeometry:
    """Union of the AOI polygons in ``grid``'s CRS (made valid), clipped near the scene first.

    The AOI is first clipped (in its own CRS) to the scene footprint's bounding box grown by 10 %,
    so huge AOIs (e.g. a world bbox) do not break when reprojected to a local CRS.
    """
    if aoi.crs is not None and not aoi.crs.equals(grid.crs.to_wkt()):
        fp = shapely.segmentize(grid.footprint, max(grid.res[0] * max(grid.shape) / 16, 1e-12))
        fp_aoi = gpd.GeoSeries([fp], crs=grid.crs.to_wkt()).to_crs(aoi.crs)
        minx, miny, maxx, maxy = fp_aoi.total_bounds
        if np.all(np.isfinite([minx, miny, maxx, maxy])):
            dx, dy = (maxx - minx) * 0.1, (maxy - miny) * 0.1
            clipped = aoi.clip_by_rect(minx - dx, miny - dy, maxx + dx, maxy + dy)
            aoi = gpd.GeoDataFrame(geometry=clipped[~clipped.is_empty], crs=aoi.crs)
            if len(aoi) == 0:
                return shapely.Polygon()
    geoms = to_crs(aoi, grid.crs).geometry.values
    return shapely.make_valid(shapely.union_all(geoms))


def plan_scene(grid: Grid, aoi: BaseGeometry, tile: int, overlap: int) -> ScenePlan | None:
    """Windows of ``tile`` px with ``overlap`` px on ``grid`` that intersect ``aoi`` (in the grid CRS).

    Returns ``None`` when the AOI misses the scene. Memory: O(number of windows).
    """
    if tile <= 0:
        raise ConfigError(f"tile size must be positive, got {tile}")
    if not 0 <= overlap < tile:
        raise ConfigError(f"--overlap must be in [0, {tile - 1}] for tile size {tile}, got {overlap}")
    inter = aoi.intersection(grid.footprint)
    if inter.is_empty or inter.area <= 0:
        return None
    region = grid.window(inter.bounds, clip=True)
    if region.width <= 0 or region.height <= 0:
        return None
    stride = tile - overlap
    r0, c0 = int(region.row_off), int(region.col_off)
    rows = axis_starts(r0, r0 + int(region.height), grid.height, tile, stride)
    cols = axis_starts(c0, c0 + int(region.width), grid.width, tile, stride)
    shapely.prepare(inter)
    strips: list[Strip] = []
    for r in rows:
        boxes = shapely.polygons([_corners(grid, Window(c, r, tile, tile)) for c in cols])
        keep = shapely.intersects(inter, boxes)
        kept = tuple(c for c, k in zip(cols, keep, strict=True) if k)
        if kept:
            strips.append(Strip(r, kept))
    if not strips:
        return None
    col_lo = min(min(s.cols) for s in strips)
    col_hi = min(max(max(s.cols) for s in strips) + tile, grid.width)
    return ScenePlan(grid, tile, overlap, region, col_lo, col_hi, tuple(strips), shapely.to_wkb(inter))


def _corners(grid: Grid, w: Window) -> list[tuple[float, float]]:
    """The four corners of ``w`` in the grid CRS (works for rotated grids too)."""
    c0, r0, c1, r1 = w.col_off, w.row_off, w.col_off + w.width, w.row_off + w.height
    t = grid.transform
    return [t @ (c0, r0), t @ (c1, r0), t @ (c1, r1), t @ (c0, r1)]
