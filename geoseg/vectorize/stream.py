"""The block driver's state between block rows (a union-find over the blocks' instance ids, kept as
graph edges) and the hand-over of finished objects, in output order, to the writer."""

from __future__ import annotations

import itertools
import math
from typing import Any, Protocol

import numpy as np
import shapely
from rasterio.windows import Window
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from geoseg.polygonize import PixelPolygons
from geoseg.vectorize.objects import Objects, Post, finish_objects, merge_parts

__all__ = ["Buffer", "Pending", "Stream", "components"]

#: overlaps of a haloed window kept for a later neighbour: (window, region ids, marker ids)
Pending = list[tuple[Window, np.ndarray, np.ndarray]]


class Sink(Protocol):
    """Where finished objects go (:class:`geoseg.vectorize.writer.GpkgWriter`)."""

    def add(self, objs: Objects) -> None: ...

    def end_row(self) -> None: ...


class Buffer:
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


def components(n: int, edges: list[np.ndarray]) -> tuple[int, np.ndarray]:
    """``(count, label per node)`` of the undirected graph on nodes ``0..n-1`` with (2, k) ``edges``."""
    e = np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), np.int64)
    if e.shape[1] == 0:
        return n, np.arange(n)
    g = coo_matrix((np.ones(e.shape[1], np.int8), (e[0], e[1])), shape=(n, n))
    count, lab = connected_components(g, directed=False)
    return int(count), lab


class Stream:
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

    CHUNK = 4096  # finished objects merged and post-processed at a time

    def __init__(self, post: Post, writer: Sink) -> None:
        self.post, self.writer = post, writer
        self.cls = Buffer(np.int16, np.zeros(1, np.int16))
        self.fb = Buffer(bool, np.zeros(1, bool))
        self.sum = Buffer(np.float64, np.zeros(1))
        self.cnt = Buffer(np.int64, np.zeros(1, np.int64))
        self.edges: list[np.ndarray] = []
        self.part_node: list[np.ndarray] = []
        self.parts: list[PixelPolygons] = []  # polygon parts (global pixel coordinates) of part_node
        self.held = Objects.empty()  # finished regularised-class objects waiting for their neighbours
        self.ready = Objects.empty()  # post-processed, waiting for their place in the output order
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

    def end_row(self, pending: dict[Any, Pending], row_stop: int, last: bool) -> None:
        """Finish, post-process and queue the objects no later block can touch; compact the rest.

        ``pending``: the overlaps kept for the next block row (their node ids are renumbered in place);
        ``row_stop``: the first pixel row of the next block row.
        """
        post = self.post
        ncomp, lab = components(self.n + 1, self.edges)
        csum = np.bincount(lab, weights=self.sum.view(), minlength=ncomp)
        ccnt = np.bincount(lab, weights=self.cnt.view(), minlength=ncomp)
        ccls = np.zeros(ncomp, np.int16)
        ccls[lab] = self.cls.view()
        arrays = [a for lst in pending.values() for _, reg, mark in lst for a in (reg, mark)]
        live_nodes = np.unique(np.concatenate([a[a > 0] for a in arrays])) if arrays and not last else np.zeros(0, int)
        live = np.zeros(ncomp, bool)
        live[lab[live_nodes]] = True
        pnode = np.concatenate(self.part_node) if self.part_node else np.zeros(0, np.int64)
        pparts = PixelPolygons.concat(self.parts)
        pc = lab[pnode]
        fin = ~live[pc]
        kept, kept_comp = pparts.take(~fin), pc[~fin]
        kept_geom = kept.geoms
        fparts, fcomp = pparts.take(fin), pc[fin]
        del pparts, pc
        o = np.argsort(fcomp, kind="stable")
        fparts, fcomp = fparts.take(o), fcomp[o]
        # finished objects in chunks of CHUNK objects: the transient memory of merging and
        # post-processing stays bounded however many objects a block row finishes
        firsts = np.flatnonzero(np.r_[True, fcomp[1:] != fcomp[:-1]]) if len(fcomp) else np.zeros(0, np.int64)
        cuts = [*firsts[:: self.CHUNK].tolist(), len(fcomp)]
        done = []
        for a, b in itertools.pairwise(cuts):
            objs = merge_parts(post, fparts.take(slice(a, b)), fcomp[a:b], csum, ccnt, ccls)
            # regularised classes wait until no unfinished or later object is within reach
            is_reg = np.isin(objs.cls, sorted(post.regularize)) if post.regularize else np.zeros(len(objs), bool)
            done.append(finish_objects(post, objs.take(~is_reg), regular=False))
            self.held = Objects.concat([self.held, objs.take(is_reg)])
        del fparts, fcomp
        self._compact(lab, live_nodes, csum, ccnt, kept, kept_comp, arrays)
        self.ready = Objects.concat([self.ready, *done])
        if len(self.held):
            go = self._reg_clusters_done(kept_geom[np.isin(ccls[kept_comp], sorted(post.regularize))], row_stop, last)
            self.ready = Objects.concat([self.ready, finish_objects(post, self.held.take(go).sorted(), regular=True)])
            self.held = self.held.take(~go)
        self._release(ncomp, kept_geom, kept_comp, row_stop, last)
        self.peak_state = max(self.peak_state, self.n + len(kept_geom) + len(self.held) + len(self.ready))

    def _compact(
        self, lab: np.ndarray, live_nodes: np.ndarray, csum: np.ndarray, ccnt: np.ndarray, kept: PixelPolygons,
        kept_comp: np.ndarray, arrays: list[np.ndarray],
    ) -> None:  # fmt: skip
        """Keep only the nodes of the overlaps (``live_nodes``, renumbered ``1..m`` in ``arrays`` too);
        the first node of each unfinished object carries its totals and parts."""
        ncomp = len(csum)
        lc = lab[live_nodes]
        uc, first = np.unique(lc, return_index=True)
        rep = np.zeros(ncomp, np.int64)
        rep[uc] = first + 1
        s, c = np.zeros(len(live_nodes) + 1), np.zeros(len(live_nodes) + 1, np.int64)
        s[rep[uc]], c[rep[uc]] = csum[uc], ccnt[uc]
        self.cls = Buffer(np.int16, np.r_[np.int16(0), self.cls.view()[live_nodes]])
        self.fb = Buffer(bool, np.r_[False, self.fb.view()[live_nodes]])
        self.sum, self.cnt = Buffer(np.float64, s), Buffer(np.int64, c)
        nid = np.arange(1, len(live_nodes) + 1)
        to = rep[lc]
        self.edges = [np.stack([nid[nid != to], to[nid != to]]).astype(np.int64)]
        self.part_node, self.parts = [rep[kept_comp]], [kept]
        for a in arrays:
            nz = a > 0
            a[nz] = np.searchsorted(live_nodes, a[nz]) + 1

    def _release(self, ncomp: int, kept_geom: np.ndarray, kept_comp: np.ndarray, row_stop: int, last: bool) -> None:
        """Hand the ready objects that no unfinished or later object can sort before to the writer."""
        limit = math.inf  # every object not yet ready ends at pixel row >= limit
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

    def _reg_clusters_done(self, live_parts: np.ndarray, row_stop: int, last: bool) -> np.ndarray:
        """Which held objects can be regularised now: their whole cluster (objects within ``gap_px``
        of each other, transitively) is finished and no later block can add an object within reach."""
        held = self.held
        if last:
            return np.ones(len(held), bool)
        hull = shapely.polygons(shapely.get_exterior_ring(np.concatenate([held.geoms, live_parts])))
        tree = shapely.STRtree(hull)
        a, b = tree.query(hull, predicate="dwithin", distance=self.post.gap_px)
        _, cl = components(len(hull), [np.stack([a, b]).astype(np.int64)])
        blocked = np.zeros(len(hull), bool)
        blocked[cl[len(held) :]] = True  # a cluster with an unfinished object
        blocked[cl[: len(held)][held.key[:, 0] >= row_stop - self.post.gap_px]] = True  # later objects in reach
        return ~blocked[cl[: len(held)]]
