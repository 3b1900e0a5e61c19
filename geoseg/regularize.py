"""Regular footprints: ragged raster outlines -> straight edges at right angles to each polygon's own axes.

Per polygon (pure shapely/numpy, no extra dependency):

1. the outline (exterior and holes) is simplified by Douglas-Peucker with ``simplify_px`` pixels;
2. the dominant orientation ``θ`` (mod 90°) is the length-weighted circular mean of the simplified
   edges' directions on the 4θ circle;
3. each simplified edge within ``snap_deg`` of ``θ`` or ``θ + 90°`` is snapped to it; consecutive
   edges snapped to the same direction are merged; other edges keep their own direction;
4. ``θ`` is refined by a joint total-least-squares fit of all snapped edges to the raw outline
   vertices they cover, and each edge's offset is the area-preserving mean of the raw outline under
   it (so the edge halves the pixel staircase, it does not hug its outer or inner corners);
5. consecutive lines are intersected to give the corners.

The regular polygon replaces the input only if it is a valid polygon, its IoU with the input is
at least ``min_iou`` and its Hausdorff distance to the input is at most ``max_shift_px`` pixels;
otherwise the input is returned unchanged (irregular blobs, round shapes, tiny fragments).

Neighbours: after regularising, a polygon that overlaps another loses the overlap to the one of
higher ``priority`` (default: the larger input), so no two outputs overlap (a shared wall stays
shared, as a line).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import shapely
import shapely.errors
from shapely.geometry import LinearRing, Polygon

__all__ = ["regularize_polygons"]

_PARALLEL_SIN = math.sin(math.radians(8.0))  # lines closer to parallel than this are not intersected


def regularize_polygons(
    geoms: np.ndarray,
    *,
    pixel_size: float,
    snap_deg: float = 20.0,
    simplify_px: float = 1.0,
    max_shift_px: float = 2.0,
    min_iou: float = 0.8,
    priority: np.ndarray | None = None,
) -> np.ndarray:
    """Regularise building outlines; returns an object array of the same length and order.

    ``geoms``: shapely Polygons in a projected (isotropic, linear-unit) CRS or in pixel space;
    ``pixel_size`` is the raster's pixel size in those units, and every ``*_px`` option is in
    pixels. Each output is the regular polygon or, where that fails the checks (invalid, IoU with
    the input < ``min_iou``, or any point of the outline moved by more than ``max_shift_px``
    pixels, Hausdorff distance), the input itself. Non-polygons and empty geometries pass through.
    Outputs never overlap (by more than rounding): an overlap is taken from the polygon of lower
    ``priority`` (default: smaller input area), which keeps its largest remaining part; inputs
    that overlap each other to begin with are not repaired. Memory and time: O(total vertices).
    """
    arr = np.asarray(geoms, dtype=object)
    out = arr.copy()
    if arr.size == 0:
        return out
    if not pixel_size > 0:
        raise ValueError(f"pixel_size must be > 0, got {pixel_size}")
    tol = simplify_px * pixel_size
    is_poly = np.array([isinstance(g, Polygon) and not g.is_empty for g in arr])
    idx = np.flatnonzero(is_poly)
    cand = np.array(
        [_regular_polygon(arr[i], tol, snap_deg, pixel_size, max_shift_px * pixel_size) for i in idx], dtype=object
    )
    ok = np.array([c is not None for c in cand], bool)
    if ok.any():
        c, g = cand[ok], arr[idx[ok]]
        # (overlay operations on an invalid geometry raise a TopologyException: only valid pairs are compared)
        good = shapely.is_valid(c) & (shapely.get_type_id(c) == 3) & shapely.is_valid(g)
        inter, union, shift = np.zeros(len(c)), np.zeros(len(c)), np.full(len(c), np.inf)
        if good.any():
            inter[good] = shapely.area(shapely.intersection(c[good], g[good]))
            union[good] = shapely.area(shapely.union(c[good], g[good]))
            shift[good] = shapely.hausdorff_distance(c[good], g[good])
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        good &= (iou >= min_iou) & (shift <= max_shift_px * pixel_size)
        sel = idx[ok][good]
        out[sel] = c[good]
    changed = np.zeros(len(arr), bool)
    changed[idx] = [out[i] is not arr[i] for i in idx]
    if changed.any():
        prio = shapely.area(arr[is_poly]) if priority is None else np.asarray(priority, float)[is_poly]
        full = np.full(len(arr), -np.inf)
        full[is_poly] = prio
        _remove_overlaps(out, arr, full, changed, pixel_size)
    return out


# ---------------------------------------------------------------------------------------------
# one polygon
# ---------------------------------------------------------------------------------------------
def _regular_polygon(poly: Polygon, tol: float, snap_deg: float, step: float, max_shift: float) -> Polygon | None:
    """The regular version of ``poly`` (unchecked), or None when it cannot be built."""
    rings = [_midpoints(np.asarray(r.coords), step) for r in (poly.exterior, *poly.interiors)]
    splits = [_split_ring(r, tol) for r in rings]
    if splits[0] is None:
        return None
    # dominant orientation (mod 90°) from the exterior's simplified edges, weighted by length
    d = np.diff(np.vstack([splits[0][1], splits[0][1][:1]]), axis=0)
    lengths = np.hypot(d[:, 0], d[:, 1])
    ang = np.arctan2(d[:, 1], d[:, 0])
    theta = math.atan2(float(np.sum(lengths * np.sin(4 * ang))), float(np.sum(lengths * np.cos(4 * ang)))) / 4
    snap = math.radians(snap_deg)
    edges_all = []
    for ring, sp in zip(rings, splits, strict=True):
        if sp is None:  # a hole too small to simplify: dropped from the regular shape (checked by IoU)
            continue
        edges_all.append(_drop_chamfers(_snap_edges(ring, sp[0], theta, snap, 1.5 * step), theta, 3 * step, max_shift))
    theta = _refine_theta(theta, [e for edges in edges_all for e in edges])
    new_rings = []
    for edges in edges_all:
        corners = _corners(edges, theta)
        if corners is None:
            return None
        new_rings.append(corners)
    if len(new_rings[0]) < 3:
        return None
    try:
        shell = LinearRing(new_rings[0])
        holes = [LinearRing(r) for r in new_rings[1:] if len(r) >= 3]
    except (ValueError, shapely.errors.GEOSException):
        return None
    return Polygon(shell, holes)


def _midpoints(closed: np.ndarray, step: float) -> np.ndarray:
    """The open ring through the midpoints of ``closed`` cut into pieces of at most ``step``.

    On a pixel outline this halves the staircase (its corners are within ~0.35 px of the true
    edge instead of ~0.7 px), so Douglas-Peucker at one pixel straightens every edge.
    """
    d = np.diff(closed, axis=0)
    k = np.maximum(np.ceil(np.hypot(d[:, 0], d[:, 1]) / step - 1e-9), 1).astype(np.int64)
    seg = np.repeat(np.arange(len(d)), k)
    frac = (np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k) + 0.5) / np.repeat(k, k)
    return closed[seg] + d[seg] * frac[:, None]


def _split_ring(ring: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Indexes into ``ring`` (open, N x 2) of its Douglas-Peucker vertices, and those vertices."""
    if len(ring) < 3:
        return None
    simp = shapely.simplify(LinearRing(ring), tol, preserve_topology=False)
    if simp.is_empty:
        return None
    sc = np.asarray(simp.coords)[:-1]
    if len(sc) < 3:
        return None
    eq = (ring[None, :, 0] == sc[:, None, 0]) & (ring[None, :, 1] == sc[:, None, 1])
    if not eq.any(axis=1).all():  # simplification moved a vertex (not expected from Douglas-Peucker)
        return None
    ix = eq.argmax(axis=1)
    order = np.argsort(ix)  # ring order (the simplified ring may start elsewhere)
    return ix[order], ring[ix[order]]


class _Edge:
    """A run of raw outline vertices ``pts`` (in order) fitted by one line of class ``kind``.

    ``kind`` 0: direction θ; 1: θ + 90°; -1: free (own direction, from its end points).
    ``core``: the points more than ``trim`` from both ends (the fit ignores the rounded corners).
    """

    __slots__ = ("kind", "pts", "trim")

    def __init__(self, kind: int, pts: np.ndarray, trim: float) -> None:
        self.kind = kind
        self.pts = pts
        self.trim = trim

    @property
    def core(self) -> np.ndarray:
        p = self.pts
        far = (np.hypot(*(p - p[0]).T) > self.trim) & (np.hypot(*(p - p[-1]).T) > self.trim)
        return p[far] if far.sum() >= 2 else p


def _snap_edges(ring: np.ndarray, ix: np.ndarray, theta: float, snap: float, trim: float) -> list[_Edge]:
    n = len(ring)
    edges: list[_Edge] = []
    for k in range(len(ix)):
        a, b = int(ix[k]), int(ix[(k + 1) % len(ix)])
        span = np.arange(a, b + 1) if b > a else np.r_[np.arange(a, n), np.arange(0, b + 1)]
        pts = ring[span % n]
        v = pts[-1] - pts[0]
        rel = (math.atan2(float(v[1]), float(v[0])) - theta) % math.pi  # in [0, π)
        if min(rel, math.pi - rel) <= snap:
            kind = 0
        elif abs(rel - math.pi / 2) <= snap:
            kind = 1
        else:
            kind = -1
        if edges and kind >= 0 and edges[-1].kind == kind:
            edges[-1].pts = np.vstack([edges[-1].pts, pts[1:]])
        else:
            edges.append(_Edge(kind, pts, trim))
    if len(edges) > 1 and edges[0].kind >= 0 and edges[0].kind == edges[-1].kind:
        edges[0].pts = np.vstack([edges[-1].pts, edges[0].pts[1:]])
        edges.pop()
    return edges


def _drop_chamfers(edges: list[_Edge], theta: float, short: float, max_shift: float) -> list[_Edge]:
    """Drop free edges between snapped ones that only cut a corner or make a jog.

    A free edge between perpendicular runs goes when the corner of the two runs lies within
    ``max_shift`` of it (a rasterised corner is cut off); between parallel runs (a jog) when it is
    shorter than ``short``, and the two runs become one line.
    """
    k = 0
    while len(edges) > 3 and k < len(edges):
        e, prev, nxt = edges[k], edges[k - 1], edges[(k + 1) % len(edges)]
        drop = False
        if e.kind < 0 and prev.kind >= 0 and nxt.kind >= 0:
            if prev.kind == nxt.kind:
                drop = bool(np.hypot(*(e.pts[-1] - e.pts[0])) < short) and len(edges) > 4
            else:
                corner = _meet(_line(prev, theta), _line(nxt, theta))
                drop = corner is not None and _seg_dist(corner, e.pts[0], e.pts[-1]) <= max_shift
        if drop:
            edges.pop(k)
            if prev.kind == nxt.kind:  # one line
                j = k % len(edges)
                prev.pts = np.vstack([prev.pts, edges[j].pts])
                edges.pop(j)
            k = max(k - 1, 0)
            continue
        k += 1
    return edges


def _seg_dist(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / (np.dot(ab, ab) or 1.0), 0.0, 1.0))
    return float(np.hypot(*(a + t * ab - p)))


def _meet(l1: tuple[np.ndarray, float], l2: tuple[np.ndarray, float]) -> np.ndarray | None:
    """Intersection of the lines n·p = c, or None when they are (nearly) parallel."""
    (n1, c1), (n2, c2) = l1, l2
    det = n1[0] * n2[1] - n1[1] * n2[0]
    if abs(det) < _PARALLEL_SIN:
        return None
    return np.array([(c1 * n2[1] - c2 * n1[1]) / det, (n1[0] * c2 - n2[0] * c1) / det])


def _refine_theta(theta: float, edges: list[_Edge]) -> float:
    """θ minimising the squared distances of all snapped edges' vertices to their own lines."""
    cov = np.zeros((2, 2))
    for e in edges:
        if e.kind < 0 or len(e.pts) < 2:
            continue
        p = e.core
        c = p - p.mean(axis=0)
        m = c.T @ c
        cov += m if e.kind == 0 else -m
    if not np.any(cov):
        return theta
    _, v = np.linalg.eigh(cov)
    nx, ny = v[:, 0]  # normal of the θ direction: smallest eigenvalue of C0 - C1
    t = math.atan2(nx, -ny)  # direction perpendicular to the normal
    # keep θ's meaning (mod 90°) close to the first estimate
    delta = (t - theta + math.pi / 4) % (math.pi / 2) - math.pi / 4
    return theta + delta if abs(delta) < math.radians(10) else theta


def _line(e: _Edge, theta: float) -> tuple[np.ndarray, float]:
    """(unit normal n, offset c) of the line n·p = c fitted to ``e``."""
    if e.kind == 0:
        t = np.array([math.cos(theta), math.sin(theta)])
    elif e.kind == 1:
        t = np.array([-math.sin(theta), math.cos(theta)])
    else:
        v = e.pts[-1] - e.pts[0]
        t = v / (np.hypot(*v) or 1.0)
    n = np.array([-t[1], t[0]])
    p = e.core
    s, h = p @ t, p @ n
    ds = np.diff(s)
    span = float(np.sum(ds))
    if abs(span) > 1e-9 and np.all(ds * np.sign(span) >= -1e-9):
        c = float(np.sum((h[:-1] + h[1:]) / 2 * ds) / span)  # area-preserving mean height
    else:
        c = float(h.mean())
    return n, c


def _corners(edges: list[_Edge], theta: float) -> np.ndarray | None:
    if len(edges) < 3:
        return None
    lines = [_line(e, theta) for e in edges]
    pts = []
    for k in range(len(edges)):
        p = _meet(lines[k - 1], lines[k])
        pts.append(edges[k].pts[0] if p is None else p)  # nearly parallel: the vertex where the runs meet
    return np.asarray(pts, float)


# ---------------------------------------------------------------------------------------------
# neighbours
# ---------------------------------------------------------------------------------------------
def _remove_overlaps(out: np.ndarray, orig: np.ndarray, prio: np.ndarray, changed: np.ndarray, px: float) -> None:
    """In place: every overlapping pair (one of them regularised) loses the overlap from its lower-priority one."""
    tree = shapely.STRtree(out)
    a, b = tree.query(out[changed], predicate="intersects")
    a = np.flatnonzero(changed)[a]
    pairs = {(min(i, j), max(i, j)) for i, j in zip(a.tolist(), b.tolist(), strict=True) if i != j}
    eps = 1e-6 * px * px
    for i, j in sorted(pairs):
        win, lose = (i, j) if prio[i] >= prio[j] else (j, i)
        try:
            if shapely.area(shapely.intersection(out[i], out[j])) <= eps:
                continue
            rest = _largest(shapely.difference(out[lose], out[win]))
            if rest is None:  # swallowed: keep the input outline, the neighbour gives way
                out[lose] = orig[lose]
                rest_w = _largest(shapely.difference(out[win], out[lose]))
                out[win] = rest_w if rest_w is not None else orig[win]
            else:
                out[lose] = rest
        except shapely.errors.GEOSException:  # a degenerate overlay: both keep their input outlines
            out[i], out[j] = orig[i], orig[j]


def _largest(g: Any) -> Polygon | None:
    parts = [p for p in getattr(g, "geoms", [g]) if isinstance(p, Polygon) and not p.is_empty]
    return max(parts, key=lambda p: p.area) if parts else None
