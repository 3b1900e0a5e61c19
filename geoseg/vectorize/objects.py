"""Finished objects of the vectorizer and their post-processing, per object and pure: merging the
parts of an object found in several blocks, the pixel-space pre-filters, hole filling, canonical
rings, simplification or regularisation, georeferencing, true areas and the m² filter."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Geod, Transformer
from rasterio.crs import CRS

from geoseg.grid import geodesic_areas_m2, pixel_areas_m2, pixel_to_crs
from geoseg.polygonize import PixelPolygons, canonical_pixel_polygons

__all__ = ["Objects", "Post", "fill_small_holes", "finish_objects", "merge_parts", "pixel_area_m2"]

_GEOD = Geod(ellps="WGS84")
FLOAT_UNIT = 2.0**-24  # fixed-point unit of the score sums of float rasters
REGULARIZE_SHIFT_PX = 2.0  # the most a regularised outline may move (geoseg.regularize max_shift_px)
KEY_COLS = 8  # ymax, class, xmin, ymin, xmax, area, centroid x, centroid y (pixel space, raw outline)


def lonlat(crs: CRS, xy: tuple[float, float]) -> tuple[float, float]:
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


def order_keys(geoms_px: np.ndarray, cls: np.ndarray, area: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(n, 8) sort keys of canonical pixel-space objects (:func:`~geoseg.polygonize.canonical_pixel_polygons` gives
    ``area`` and ``centre``): bottom edge first (see :func:`vectorize_prediction`)."""
    b = shapely.bounds(geoms_px)
    return np.column_stack([b[:, 3], cls, b[:, 0], b[:, 1], b[:, 2], area, centre[:, 0], centre[:, 1]])


@dataclass
class Post:
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
    area_step_px: float = 0.5  # finite-difference step of the true areas (geoseg.grid.area_step_px)


@dataclass
class Objects:
    """Finished objects (one row each): geometry, class id, score, sort key (:func:`order_keys`)."""

    geoms: np.ndarray
    cls: np.ndarray
    score: np.ndarray
    key: np.ndarray
    area_m2: np.ndarray | None = None  # set once post-processed (geometry then in the raster CRS)

    @classmethod
    def empty(cls) -> Objects:
        return cls(np.zeros(0, dtype=object), np.zeros(0, np.int16), np.zeros(0), np.zeros((0, KEY_COLS)))

    def __len__(self) -> int:
        return len(self.geoms)

    def take(self, sel: np.ndarray) -> Objects:
        a = None if self.area_m2 is None else self.area_m2[sel]
        return Objects(self.geoms[sel], self.cls[sel], self.score[sel], self.key[sel], a)

    @staticmethod
    def concat(parts: list[Objects]) -> Objects:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Objects.empty()
        if len(parts) == 1:
            return parts[0]
        areas = [p.area_m2 for p in parts]
        return Objects(
            np.concatenate([p.geoms for p in parts]), np.concatenate([p.cls for p in parts]),
            np.concatenate([p.score for p in parts]), np.concatenate([p.key for p in parts]),
            None if any(a is None for a in areas) else np.concatenate(areas),  # type: ignore[arg-type]
        )  # fmt: skip

    def sorted(self) -> Objects:
        return self.take(np.lexsort(self.key.T[::-1]))


def union_parts(parts: np.ndarray) -> Any:
    """The union of the pixel-space parts of one object, each from the interior of a different block
    or disjoint within one block (so interior-disjoint).

    A part's holes lie strictly inside its block, where no other part reaches, so they are holes of
    the union: only the outer rings are unioned (much cheaper for objects with many holes) and the
    holes added back. Exact; checked by area (integer vertices, so exact), with
    :func:`shapely.union_all` of the parts where that fails (a part inside another's hole)."""
    n_holes = shapely.get_num_interior_rings(parts)
    if not n_holes.any():
        return shapely.union_all(parts)
    u = shapely.union_all(shapely.polygons(shapely.get_exterior_ring(parts)))
    if shapely.get_type_id(u) != shapely.GeometryType.POLYGON:
        return shapely.union_all(parts)
    rings, owner = shapely.get_rings(np.concatenate([[u], parts]), return_index=True)
    first = np.r_[True, owner[1:] != owner[:-1]]  # each polygon's exterior ring comes first
    out = shapely.polygons(shapely.get_exterior_ring(u), holes=rings[~first])
    if shapely.area(out) != float(np.sum(shapely.area(parts))):
        return shapely.union_all(parts)
    return out


def merge_parts(post: Post, parts: PixelPolygons, comp: np.ndarray, csum: np.ndarray, ccnt: np.ndarray,
                ccls: np.ndarray) -> Objects:  # fmt: skip
    """Union the parts of each finished object; split multi-part results; drop tiny ones; fill holes;
    canonical rings (:func:`canonical_pixel_polygons`) and sort keys (:func:`order_keys`).

    ``parts``: canonical pixel-space parts with their areas and centroids
    (:func:`geoseg.polygonize.pixel_polygons`), ``comp[i]``: the object of part ``i``;
    ``csum``/``ccnt``/``ccls``: score sum, pixel count and class per object id. Objects of one part
    keep its geometry and moments; only unions and hole-filled polygons are made canonical again."""
    if not len(comp):
        return Objects.empty()
    o = np.argsort(comp, kind="stable")
    geoms, comp, area, centre = parts.geoms[o], comp[o], parts.area[o], parts.centre[o]
    starts = np.flatnonzero(np.r_[True, comp[1:] != comp[:-1]])
    ends = np.r_[starts[1:], len(comp)]
    merged = geoms[starts].copy()
    multi = np.flatnonzero(ends - starts > 1)
    for i in multi.tolist():
        merged[i] = union_parts(geoms[starts[i] : ends[i]])
    redo = np.zeros(len(starts), bool)
    redo[multi] = True
    oc = comp[starts]
    pg, idx = shapely.get_parts(merged, return_index=True)  # multi-part only if the halo was too small
    pg = np.asarray(pg, dtype=object)
    oc, redo, area, centre = oc[idx], redo[idx], area[starts][idx], centre[starts][idx]
    if redo.any():
        pg[redo], area[redo], centre[redo] = canonical_pixel_polygons(pg[redo])
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(ccnt[oc] > 0, csum[oc] * post.score_unit / np.maximum(ccnt[oc], 1), np.nan)
    objs = Objects(pg, ccls[oc].astype(np.int16), score, np.zeros((len(pg), 0)))
    if post.min_area_px > 0:  # cheap pre-filter in pixel space (the exact one, in m², comes later)
        keep = area >= post.min_area_px
        objs, area, centre = objs.take(keep), area[keep], centre[keep]
    if len(objs) and post.fill_holes_px > 0:
        filled = fill_small_holes(objs.geoms, post.fill_holes_px)
        changed = np.fromiter((a is not b for a, b in zip(filled, objs.geoms, strict=True)), bool, len(filled))
        if changed.any():
            filled[changed], area[changed], centre[changed] = canonical_pixel_polygons(filled[changed])
        objs.geoms = filled
    objs.key = order_keys(objs.geoms, objs.cls, area, centre) if len(objs) else np.zeros((0, KEY_COLS))
    return objs


def finish_objects(post: Post, objs: Objects, *, regular: bool) -> Objects:
    """Simplification or regularisation, georeferencing, true areas, the m² filter (``objs`` from
    :func:`merge_parts`)."""
    if not len(objs):
        return objs
    g = objs.geoms  # canonical (merge_parts): independent of the seams
    if regular:
        g = regularize_pixels(g, post.transform, post.crs, post.centre)
    elif post.simplify_px > 0:
        g = shapely.simplify(g, post.simplify_px, preserve_topology=True)
    t = post.transform
    areas = pixel_areas_m2(g, objs.key[:, 6:8], t, post.crs, post.origin, post.area_step_px)
    g = shapely.orient_polygons(shapely.transform(g, lambda xy: pixel_to_crs(xy, t)))
    out = Objects(g, objs.cls, objs.score, objs.key, areas)
    return out.take(areas >= post.min_area_m2)


def regularize_pixels(
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
