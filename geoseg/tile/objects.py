"""Label object statistics for ``dataset.json``: what a plausible object of each class looks like.

The areas feed the instance step's defaults (see :mod:`geoseg.postprocess`): the model carries them
into its ``config.json``, so ``geoseg predict`` knows the minimum plausible object without a
constant tuned to any one dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely

from geoseg.grid import geodesic_areas_m2
from geoseg.postprocess import object_area_summary
from geoseg.tile.labels import SceneLabels

__all__ = ["BOUNDARY_RULE", "auto_boundary_width", "label_object_summary"]

BOUNDARY_RULE = (
    "auto: 2 px when the median label object covers >= 400 px (20 x 20), 1 px when >= 36 px (6 x 6), else 0 "
    "(objects too small to carry a rim); an explicit --boundary-width wins"
)


def label_object_summary(per_scene: Sequence[SceneLabels], crss: Sequence[Any], resolution_m: float | None) -> dict:
    """Count and area quantiles (true m²) per class of the labels valid at a scene date.

    A label seen by several scenes is counted once (by its instance id, the first scene's
    geometry); with a coverage layer only labels inside the annotated areas count (labels outside
    are never trained on, e.g. a held-out area). Memory O(number of labels).
    """
    seen: set[int] = set()
    areas: dict[int, list[float]] = {}
    for sl, crs in zip(per_scene, crss, strict=True):
        inside = sl.valid
        if sl.coverage is not None:
            cov = shapely.union_all(sl.coverage) if len(sl.coverage) else shapely.Polygon()
            inside = inside & shapely.intersects(sl.geoms, cov)
        sel = np.flatnonzero(inside)
        sel = np.array([i for i in sel.tolist() if int(sl.instance[i]) not in seen], dtype=np.intp)
        if sel.size == 0:
            continue
        seen.update(int(v) for v in sl.instance[sel])
        a = geodesic_areas_m2(sl.geoms[sel], crs)
        for cid, area in zip(sl.class_ids[sel].tolist(), a.tolist(), strict=True):
            areas.setdefault(int(cid), []).append(float(area))
    return object_area_summary(areas, resolution_m)


def auto_boundary_width(objects: dict) -> int:
    """Boundary (rim + contact) width in pixels by :data:`BOUNDARY_RULE`, from :func:`label_object_summary`."""
    res = objects.get("resolution_m")
    per_class = objects.get("per_class") or {}
    if not res or not per_class:
        return 0
    medians = [c["area_m2"]["p50"] for c in per_class.values()]
    median_px = float(np.median(medians)) / float(res) ** 2
    return 2 if median_px >= 400 else 1 if median_px >= 36 else 0
