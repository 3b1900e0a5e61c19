"""Pixel-exact polygons of a label image, vectorised in numpy: the 4-connected regions of equal value,
as ``rasterio.features.shapes(lab, mask=lab > 0, connectivity=4)`` gives them, without building one
Python object per vertex.

Method (crack following): every pixel side between a labelled pixel and a pixel of another value is
a directed unit edge with its pixel on the right (clockwise on screen, rows growing downwards). At
each edge's end the successor is the first of: turn right around the same pixel, go straight on the
next pixel of the same value, turn left onto the pixel diagonally ahead; that choice is exactly
4-connectivity, so every edge has one successor and one predecessor, the edges fall into cycles
(rings), and every ring bounds one 4-connected region. Rings are ordered by pointer doubling
(O(E log L) for E edges and the longest ring L), reduced to their corners, classified by signed area
(outer rings clockwise, holes counter-clockwise) and built into shapely in one
:func:`shapely.from_ragged_array` call.

Where a region meets itself only at a corner (a pinch) its ring would touch itself: the two edges
meeting there turn left instead, which splits it into the two rings GDAL gives (outer ring and a
hole touching it). A value with several regions (an object clipped by a block edge) has several outer rings; each of
its holes goes to the smallest one containing a pixel of the hole (an STRtree query).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["PixelPolygons", "canonical_pixel_polygons", "label_polygons", "pixel_polygons", "ring_moments"]

# directions of travel; an edge (d, p) is a side of the (padded, flat) pixel p:
# E: top side (left to right), S: right side, W: bottom side, N: left side
E, S, W, N = 0, 1, 2, 3


@dataclass
class PixelPolygons:
    """Polygons in pixel coordinates with their value, area (px) and (n, 2) centroid (col, row)."""

    values: np.ndarray
    geoms: np.ndarray
    area: np.ndarray
    centre: np.ndarray

    @classmethod
    def empty(cls) -> PixelPolygons:
        return cls(np.zeros(0, np.int64), np.zeros(0, dtype=object), np.zeros(0), np.zeros((0, 2)))

    def take(self, sel: np.ndarray | slice) -> PixelPolygons:
        return PixelPolygons(self.values[sel], self.geoms[sel], self.area[sel], self.centre[sel])

    @staticmethod
    def concat(parts: list[PixelPolygons]) -> PixelPolygons:
        parts = [p for p in parts if len(p.values)] or [PixelPolygons.empty()]
        fields = ("values", "geoms", "area", "centre")
        return PixelPolygons(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


def label_polygons(lab: np.ndarray, col_off: int = 0, row_off: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(values, polygons)`` of :func:`pixel_polygons`."""
    p = pixel_polygons(lab, col_off, row_off)
    return p.values, p.geoms


def pixel_polygons(lab: np.ndarray, col_off: int = 0, row_off: int = 0) -> PixelPolygons:
    """The 4-connected regions of equal non-zero value of the integer image
    ``lab`` (0 = nothing), in pixel coordinates shifted by ``(col_off, row_off)`` (x = column,
    y = row, integer vertices at pixel corners). One polygon per region, holes kept; the same point
    sets as GDAL's polygonize (``rasterio.features.shapes``, 4-connected), corners only, in
    :func:`shapely.normalize`'s canonical form; with their areas and centroids
    (:func:`ring_moments`). Order of the regions: unspecified.

    Memory: O(pixels) scratch (about 30 bytes per pixel of ``lab``)."""
    lab = np.asarray(lab)
    if lab.ndim != 2:
        raise ValueError(f"label image must be 2-D, got shape {lab.shape}")
    h, w = lab.shape
    empty = PixelPolygons.empty()
    if h == 0 or w == 0:
        return empty
    L = np.zeros((h + 2, w + 2), lab.dtype if np.issubdtype(lab.dtype, np.integer) else np.int64)
    L[1:-1, 1:-1] = lab
    ww = w + 2
    flat = L.reshape(-1)
    n_px = flat.size
    up, dn, lf, rt = -ww, ww, -1, 1
    # which pixel sides are edges, as padded-shape masks (one vectorised compare per axis)
    fg = L != 0
    hz = L[:-1, 1:-1] != L[1:, 1:-1]  # between padded rows i and i+1
    vt = L[1:-1, :-1] != L[1:-1, 1:]  # between padded columns j and j+1
    m = np.zeros((4, h + 2, w + 2), bool)
    np.logical_and(hz, fg[1:, 1:-1], out=m[E, 1:, 1:-1])  # top sides
    np.logical_and(vt, fg[1:-1, :-1], out=m[S, 1:-1, :-1])  # right sides
    np.logical_and(hz, fg[:-1, 1:-1], out=m[W, :-1, 1:-1])  # bottom sides
    np.logical_and(vt, fg[1:-1, 1:], out=m[N, 1:-1, 1:])  # left sides
    dense = np.flatnonzero(m)  # edge ids d * n_px + p, ascending
    del m, hz, vt, fg
    n = len(dense)
    if n == 0:
        return empty
    it = np.int32 if 4 * n_px < 2**31 else np.int64  # index dtype: halves the scratch of a block
    e_dir = (dense // n_px).astype(np.int8)
    e_px = (dense - e_dir.astype(np.int64) * n_px).astype(it)
    start = np.searchsorted(e_dir, np.arange(5))
    ep = [e_px[start[d] : start[d + 1]] for d in range(4)]
    e_val = flat[e_px]
    lookup = np.empty(4 * n_px, it)
    lookup[dense] = np.arange(n, dtype=it)
    del dense

    def index(d: int, p: np.ndarray) -> np.ndarray:
        """Compact index of the (existing) edge (d, p)."""
        return lookup[d * n_px + p]

    succ = np.empty(n, lookup.dtype)
    pinch = np.zeros(n, bool)  # a right turn with the value also diagonally ahead-left: a corner contact
    # (direction, right-turn side test offset, straight test offset / next pixel, left pixel offset)
    # for an edge of pixel p heading d: right turn = side d+1 of p (exists iff the pixel on the
    # turn side differs), else straight = side d of the next pixel (exists iff the pixel ahead-left
    # differs), else left = side d-1 of the pixel ahead-left.
    rules = (
        (E, rt, rt + up),  # top side heading east: turn side = right pixel, ahead-left = up-right
        (S, dn, dn + rt),  # right side heading south: turn side = down, ahead-left = down-right
        (W, lf, lf + dn),  # bottom side heading west: turn side = left, ahead-left = down-left
        (N, up, up + lf),  # left side heading north: turn side = up, ahead-left = up-left
    )
    for d, turn, diag in rules:
        p = ep[d]
        if not len(p):
            continue
        v = flat[p]
        sl = slice(start[d], start[d + 1])
        right = flat[p + turn] != v
        diag_same = flat[p + diag] == v
        straight = ~right & ~diag_same
        left = ~right & diag_same
        out = np.empty(len(p), lookup.dtype)
        out[right] = index((d + 1) % 4, p[right])
        out[straight] = index(d, p[straight] + turn)
        out[left] = index((d + 3) % 4, p[left] + diag)
        succ[sl] = out
        pinch[sl] = right & diag_same

    # rings: the cycles of succ (each edge has one successor and one predecessor). A corner contact of
    # one region with itself makes its ring touch itself there: turn left instead at those (swap the
    # successors of the two edges meeting there), which splits it into the two rings GDAL gives
    ring = _cycles(succ)
    pe = np.flatnonzero(pinch & (e_dir <= S))  # E and S pinch edges; partners: W and N edges
    if len(pe):
        d_pe = e_dir[pe]
        diag_off = np.where(d_pe == E, rt + up, dn + rt)
        partner = np.where(d_pe == E, index(W, e_px[pe] + diag_off), index(N, e_px[pe] + diag_off))
        same = ring[pe] == ring[partner]
        if same.any():
            a1, a2 = pe[same], partner[same]
            succ[a1], succ[a2] = succ[a2], succ[a1].copy()
            ring = _cycles(succ)
    n_ring = int(ring.max()) + 1
    first = np.empty(n_ring, it)  # an edge of each ring (its start: any edge will do)
    first[ring] = np.arange(n, dtype=it)
    length = np.bincount(ring, minlength=n_ring)
    del pinch
    root = first[ring]
    dist = (np.arange(n, dtype=it) != root).astype(it)  # steps to the ring's root along succ
    del root
    nxt = succ.copy()
    nxt[first] = first
    for _ in range(int(np.ceil(np.log2(max(int(length.max()), 2))))):
        dist += dist[nxt]
        nxt = nxt[nxt]
    del nxt
    pos = (length[ring] - dist) % length[ring]
    del dist
    ring_start = np.concatenate([[0], np.cumsum(length)])
    order = np.empty(n, it)
    order[ring_start[ring] + pos] = np.arange(n, dtype=it)
    del pos
    pred = np.empty(n, it)
    pred[succ] = np.arange(n, dtype=it)
    corner = e_dir[pred] != e_dir  # the edge starts at a corner of its ring
    o = order[corner[order]]  # corner edges, ring by ring, in ring order
    o_ring = ring[o]
    r, c = np.divmod(e_px[o], ww)
    d = e_dir[o]
    x = c - 1 + (d == S) + (d == W)  # start vertex of the edge, in unpadded pixel-corner coordinates
    y = r - 1 + (d == W) + (d == N)
    n_corner = np.bincount(o_ring, minlength=n_ring)
    c_start = np.concatenate([[0], np.cumsum(n_corner)])
    # signed area (shoelace over the corners; > 0 = clockwise on screen = outer ring)
    nx_i = np.arange(len(o)) + 1
    nx_i[c_start[1:] - 1] = c_start[:-1]
    area2 = np.bincount(o_ring, weights=x * y[nx_i] - x[nx_i] * y, minlength=n_ring)
    outer = area2 > 0
    ring_val = e_val[first]

    # polygons: one per outer ring; a hole belongs to the outer ring of its value that contains it
    # (the only one, for a value with one region; else the smallest containing the pixel across the hole)
    poly = np.cumsum(outer) - 1
    vals_u, inv = np.unique(ring_val, return_inverse=True)
    n_outer = np.bincount(inv, weights=outer, minlength=len(vals_u))
    outer_of = np.full(len(vals_u), -1)
    one = n_outer[inv[outer]] == 1
    outer_of[inv[outer][one]] = poly[outer][one]
    holes = np.flatnonzero(~outer)
    poly[holes] = outer_of[inv[holes]]
    multi = holes[poly[holes] < 0]
    if len(multi):
        poly[multi] = _containing_outer(multi, outer, inv, poly, first, e_px, e_dir, ww, x, y, c_start, area2)
    # canonical rings (shapely.normalize's form, so nothing downstream depends on the block layout):
    # each ring reversed (outer rings clockwise, holes counter-clockwise with y up) and started at
    # its lowest (x, y) corner; per polygon the outer ring first, then the holes by decreasing
    # (vertex count, coordinates): GEOS's order. Closed, as ragged arrays.
    key = (x - x.min()) * (int(y.max() - y.min()) + 1) + (y - y.min())
    first_c = np.flatnonzero(key == np.repeat(np.minimum.reduceat(key, c_start[:-1]), n_corner))
    s0 = first_c - c_start[:-1]  # position of each ring's lowest corner (one per ring: rings are simple)
    nxt_c = c_start[:-1] + (s0 - 1) % n_corner  # the corner after it, once reversed
    rsel = np.lexsort((-y[nxt_c], -x[nxt_c], -y[first_c], -x[first_c], np.where(outer, 0, -n_corner), ~outer, poly))
    parts = [PixelPolygons.empty()]
    if len(rsel):
        cidx, off = _closed_rings(c_start[rsel], n_corner[rsel], s0[rsel], step=-1)
        xy = np.column_stack([x[cidx] + col_off, y[cidx] + row_off]).astype(np.float64)
        is_outer = outer[rsel]
        poly_off = np.concatenate([np.flatnonzero(is_outer), [len(rsel)]])
        area, centre = ring_moments(xy, off, poly_off)
        geoms = shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, (off, poly_off))
        parts.append(PixelPolygons(ring_val[rsel][is_outer].astype(np.int64), geoms, area, centre))
    return PixelPolygons.concat(parts)


def canonical_pixel_polygons(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(polygons, areas, centroids)``: pixel-space polygons (axis-parallel edges, integer vertices)
    in the canonical form of :func:`pixel_polygons`, whatever seams they were merged across, their
    areas and (n, 2) centroids (:func:`ring_moments`: identical polygons, identical values).

    Canonical: :func:`shapely.normalize` (rings start at their minimum corner, fixed orientation)
    without collinear vertices (``shapely.simplify(g, 0.0, preserve_topology=True)`` of such
    polygons, whose every kept vertex is a corner), in one vectorised pass over the coordinates."""
    if not len(geoms):
        return geoms, np.zeros(0), np.zeros((0, 2))
    _, xy, (ring_off, poly_off) = shapely.to_ragged_array(shapely.normalize(geoms))
    x, y = xy[:, 0], xy[:, 1]
    keep = np.ones(len(xy), bool)
    keep[1:-1] = ~(((x[:-2] == x[1:-1]) & (x[1:-1] == x[2:])) | ((y[:-2] == y[1:-1]) & (y[1:-1] == y[2:])))
    starts = ring_off[:-1]
    keep[starts] = True
    keep[ring_off[1:] - 1] = True  # closing vertices
    ring_len = np.add.reduceat(keep.astype(np.int64), starts)
    new_off = np.concatenate([[0], np.cumsum(ring_len)])
    xy = xy[keep]
    area, centre = ring_moments(xy, new_off, poly_off)
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, (new_off, poly_off)), area, centre


def ring_moments(xy: np.ndarray, ring_off: np.ndarray, poly_off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(areas, centroids)`` of polygons given as closed ragged rings (shapely's ragged layout):
    shoelace sums over every ring, holes included. Computed relative to each polygon's first vertex,
    so for integer pixel coordinates the sums are exact integers (for objects up to ~10^4 px across)
    and the same polygon always gets bit-identical values."""
    n = len(poly_off) - 1
    if n == 0 or len(xy) < 2:
        return np.zeros(n), np.zeros((n, 2))
    ring_len = np.diff(ring_off)
    ring_poly = np.repeat(np.arange(n), np.diff(poly_off))
    owner_v = np.repeat(ring_poly, ring_len)
    o = xy[ring_off[poly_off[:-1]]]  # first vertex of each polygon
    x, y = xy[:, 0] - o[owner_v, 0], xy[:, 1] - o[owner_v, 1]
    cross = x[:-1] * y[1:] - x[1:] * y[:-1]
    cross[ring_off[1:-1] - 1] = 0.0  # (from one ring's closing vertex to the next ring's start)
    owner = owner_v[:-1]
    a2 = np.bincount(owner, weights=cross, minlength=n)
    mx = np.bincount(owner, weights=(x[:-1] + x[1:]) * cross, minlength=n)
    my = np.bincount(owner, weights=(y[:-1] + y[1:]) * cross, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = np.column_stack([mx / (3 * a2) + o[:, 0], my / (3 * a2) + o[:, 1]])
    return np.abs(a2) / 2, centre


def _closed_rings(starts: np.ndarray, k: np.ndarray, first: np.ndarray, *, step: int) -> tuple[np.ndarray, np.ndarray]:
    """``(index, ring offsets)``: for rings of ``k`` corners stored from ``starts`` on, the indices of
    their corners from corner ``first`` (relative) on, walking ``step`` (1 forward, -1 reversed),
    each closed by repeating its first corner; the offsets are shapely's ragged ring offsets."""
    off = np.concatenate([[0], np.cumsum(k + 1)])
    j = np.arange(int(off[-1])) - np.repeat(off[:-1], k + 1)  # 0..k within each ring
    return np.repeat(starts, k + 1) + (np.repeat(first, k + 1) + step * j) % np.repeat(k, k + 1), off


def _cycles(succ: np.ndarray) -> np.ndarray:
    """Cycle id of every node of the permutation ``succ`` (the weak components of its graph)."""
    n = len(succ)
    g = csr_matrix((np.ones(n, np.int8), (np.arange(n), succ)), shape=(n, n))
    return connected_components(g, directed=True, connection="weak")[1]


def _containing_outer(
    holes: np.ndarray, outer: np.ndarray, inv: np.ndarray, poly: np.ndarray, first: np.ndarray, e_px: np.ndarray,
    e_dir: np.ndarray, ww: int, x: np.ndarray, y: np.ndarray, c_start: np.ndarray, area2: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """Polygon id of each hole ring in ``holes`` (rings of values with several regions): the smallest
    outer ring of the same value containing the centre of the pixel across one of its edges (a pixel
    of the hole, so strictly inside the region's outer ring and outside every other region's)."""
    e = first[holes]
    across = np.array([-ww, 1, ww, -1])[e_dir[e]]  # the pixel on the other side of an E/S/W/N side
    r, c = np.divmod(e_px[e] + across, ww)
    pts = shapely.points(c - 0.5, r - 0.5)  # its centre, unpadded pixel coordinates
    cand = np.flatnonzero(outer & np.isin(inv, np.unique(inv[holes])))
    idx, ring_off = _closed_rings(c_start[cand], c_start[cand + 1] - c_start[cand], np.zeros(len(cand), int), step=1)
    shells = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, np.column_stack([x[idx], y[idx]]).astype(np.float64),
        (ring_off, np.arange(len(cand) + 1)),
    )  # fmt: skip
    pi, si = shapely.STRtree(shells).query(pts, predicate="within")
    same = inv[holes[pi]] == inv[cand[si]]
    pi, si = pi[same], si[same]
    best = np.full(len(holes), -1)
    o = np.lexsort((area2[cand[si]], pi))  # per hole, the smallest containing shell first
    pi, si = pi[o], si[o]
    firsts = np.r_[True, pi[1:] != pi[:-1]] if len(pi) else np.zeros(0, bool)
    best[pi[firsts]] = poly[cand[si[firsts]]]
    if (best < 0).any():  # pragma: no cover - every hole lies inside a region of its value
        raise AssertionError("label_polygons: a hole outside every region of its value")
    return best
