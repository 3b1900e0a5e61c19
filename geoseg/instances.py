"""The instance rule, pure numpy: which pixels are objects, which are confident cores, and how cores
grow into whole instances. Shared by :mod:`geoseg.vectorize` (block by block, on probability
rasters) and :mod:`geoseg.train.calibrate` (tile by tile, on validation predictions).

Object pixels of foreground class ``k``: ``argmax == k`` and ``p_k >= threshold`` (invalid pixels
never count). Without a boundary class the instances are their 4-connected components; with a
boundary class ``b`` the cores ``objects & (p_b < core_boundary_max)`` are flooded over
``objects | (argmax == b)`` by :func:`grow_markers` (see :mod:`geoseg.vectorize` for why this and
not a priority-queue watershed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["BlockLabels", "argmax_first", "grow_markers", "label_instances"]

_STRUCT4 = ndi.generate_binary_structure(2, 1)


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
    am = argmax_first(probs)
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


def argmax_first(probs: np.ndarray) -> np.ndarray:
    """``np.argmax(probs, axis=0)`` as int16 (first maximum wins), one contiguous pass per class."""
    best = probs[0].copy()
    am = np.zeros(best.shape, np.int16)
    for k in range(1, probs.shape[0]):
        gt = probs[k] > best
        am[gt] = k
        np.maximum(best, probs[k], out=best)
    return am


def grow_markers(markers: np.ndarray, domain: np.ndarray, max_iter: int = 100_000) -> np.ndarray:
    """Marker-controlled flooding by geodesic distance (a watershed on the distance to the cores).

    Each unlabelled ``domain`` pixel takes, one 4-neighbour layer at a time, the label of a
    labelled neighbour, preferring up, left, right, down. Unlike a priority-queue watershed
    (:func:`skimage.segmentation.watershed`, whose ties are broken by queue age and so by far-away
    pixels) the result at a pixel depends only on the markers within its geodesic distance, so
    haloed blocks agree exactly at their seams. Domain pixels not connected to a marker stay 0.

    Each layer only looks at the unlabelled neighbours of the previous layer (a frontier), so the
    cost is O(pixels flooded), not O(layers x unlabelled pixels) (thin boundary ribbons far from
    any core used to make that quadratic); the result is the same as checking every pixel.
    """
    h, w = markers.shape
    ww = w + 2  # a zero border: every pixel has four neighbours, none outside the domain
    pad = np.zeros((h + 2, ww), np.int32)
    pad[1:-1, 1:-1] = markers
    flat = pad.reshape(-1)  # a view: writes go to pad
    todo = np.zeros((h + 2, ww), bool)
    np.logical_and(domain, markers == 0, out=todo[1:-1, 1:-1])
    # the first layer: unlabelled domain pixels with a labelled 4-neighbour (the others get nothing yet)
    has = pad > 0
    near = np.zeros_like(todo)
    near[1:-1, 1:-1] = has[:-2, 1:-1] | has[1:-1, :-2] | has[1:-1, 2:] | has[2:, 1:-1]
    todo = todo.reshape(-1)
    cand = np.flatnonzero(todo & near.reshape(-1))
    del has, near
    # scratch for removing duplicate candidates in O(candidates)
    slot = np.zeros(flat.size, np.int32 if flat.size < 2**31 else np.int64)
    for _ in range(max_iter):
        if cand.size == 0:
            break
        new = flat[cand - ww]  # priority order: up, left, right, down
        for off in (-1, 1, ww):
            nb = flat[cand + off]
            np.copyto(new, nb, where=new == 0)
        got = new > 0
        done = cand[got]
        if done.size == 0:
            break
        flat[done] = new[got]  # all at once: one geodesic layer per iteration
        todo[done] = False
        # next candidates: the unlabelled domain neighbours of this layer
        nb = np.concatenate([done - ww, done - 1, done + 1, done + ww])
        nb = nb[todo[nb]]
        pos = np.arange(nb.size, dtype=slot.dtype)
        slot[nb] = pos
        cand = nb[slot[nb] == pos]  # each pixel once (order is irrelevant: a layer is assigned at once)
    return pad[1:-1, 1:-1].copy()
