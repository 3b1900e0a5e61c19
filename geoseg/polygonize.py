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

Values whose region is not a single component with simple rings (several components, or a diagonal
pinch, where two pixels of the value meet only at a corner) are rare; they are polygonized by
``rasterio.features.shapes`` on their bounding box, so the result is always GDAL's.
"""

from __future__ import annotations

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["label_polygons"]

# directions of travel; an edge (d, p) is a side of the (padded, flat) pixel p:
# E: top side (left to right), S: right side, W: bottom side, N: left side
E, S, W, N = 0, 1, 2, 3


def label_polygons(lab: np.ndarray, col_off: int = 0, row_off: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(values, polygons)`` of the 4-connected regions of equal non-zero value of the integer image
    ``lab`` (0 = nothing), in pixel coordinates shifted by ``(col_off, row_off)`` (x = column,
    y = row, integer vertices at pixel corners). One polygon per region, holes kept; the same point
    sets as GDAL's polygonize (``rasterio.features.shapes``, 4-connected); vertex order and ring
    start may differ (normalize before comparing). Order of the regions: unspecified.

    Memory: O(pixels) int64 scratch (about 40 bytes per pixel of ``lab``)."""
    lab = np.asarray(lab)
    if lab.ndim != 2:
        raise ValueError(f"label image must be 2-D, got shape {lab.shape}")
    h, w = lab.shape
    empty = (np.zeros(0, np.int64), np.zeros(0, dtype=object))
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
    root = first.astype(it)[ring]
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

    # values with one outer ring and no corner contact: their rings are one polygon
    vals_u, inv = np.unique(ring_val, return_inverse=True)
    n_outer = np.bincount(inv, weights=outer, minlength=len(vals_u))
    bad_val = np.zeros(len(vals_u), bool)
    bad_val[n_outer != 1] = True
    simple = ~bad_val[inv]
    # ragged arrays: rings of simple values grouped by value, outer ring first, each closed
    rsel = np.flatnonzero(simple)
    rsel = rsel[np.lexsort((~outer[rsel], inv[rsel]))]
    vals_out: list[np.ndarray] = []
    geoms_out: list[np.ndarray] = []
    if len(rsel):
        k = n_corner[rsel]
        cs = c_start[rsel]
        idx = np.repeat(cs - np.cumsum(np.r_[0, k[:-1]]), k) + np.arange(int(k.sum()))
        # append each ring's first corner to close it
        closed_len = k + 1
        off = np.concatenate([[0], np.cumsum(closed_len)])
        cidx = np.empty(int(off[-1]), np.int64)
        body = np.ones(int(off[-1]), bool)
        body[off[1:] - 1] = False
        cidx[body] = idx
        cidx[off[1:] - 1] = cs
        xy = np.column_stack([x[cidx] + col_off, y[cidx] + row_off]).astype(np.float64)
        is_outer = outer[rsel]
        poly_off = np.concatenate([np.flatnonzero(is_outer), [len(rsel)]])
        vals_out.append(ring_val[rsel][is_outer])
        geoms_out.append(shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, (off, poly_off)))
    if bad_val.any():  # bounding boxes (pixel corners) of the other values, from their rings' corners
        b = [np.minimum.reduceat(x, c_start[:-1]), np.minimum.reduceat(y, c_start[:-1]),
             np.maximum.reduceat(x, c_start[:-1]), np.maximum.reduceat(y, c_start[:-1])]  # fmt: skip
        for j in np.flatnonzero(bad_val).tolist():
            rs = inv == j
            x0, y0 = int(b[0][rs].min()), int(b[1][rs].min())
            x1, y1 = int(b[2][rs].max()), int(b[3][rs].max())
            vals, geoms = _gdal_polygons(lab[y0:y1, x0:x1], int(vals_u[j]), col_off + x0, row_off + y0)
            vals_out.append(vals)
            geoms_out.append(geoms)
    if not vals_out:
        return empty
    return np.concatenate(vals_out).astype(np.int64), np.concatenate(geoms_out)


def _cycles(succ: np.ndarray) -> np.ndarray:
    """Cycle id of every node of the permutation ``succ`` (the weak components of its graph)."""
    n = len(succ)
    g = csr_matrix((np.ones(n, np.int8), (np.arange(n), succ)), shape=(n, n))
    return connected_components(g, directed=True, connection="weak")[1]


def _gdal_polygons(lab: np.ndarray, v: int, col_off: int, row_off: int) -> tuple[np.ndarray, np.ndarray]:
    """The regions of value ``v`` in ``lab`` (its bounding box) by ``rasterio.features.shapes``."""
    m = lab == v
    shift = Affine.translation(col_off, row_off)
    found = rasterio.features.shapes(m.astype(np.uint8), mask=m, connectivity=4, transform=shift)
    geoms = [shapely.geometry.shape(g) for g, _ in found]
    return np.full(len(geoms), v, np.int64), np.asarray(geoms, dtype=object)
