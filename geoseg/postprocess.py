"""Post-processing parameters of the instance step: one owner for their defaults and provenance.

Turning class probabilities into instance polygons takes five numbers: the class probability
``threshold``, the boundary probability below which a pixel is a confident object core
(``core_boundary_max``, used to separate touching objects when the model has a boundary class),
the minimum object area ``min_area_m2``, the largest hole that is filled ``fill_holes_m2`` and the
simplification tolerance ``simplify_px``. Each is taken, in this order, from

1. the command line / stage option (``source = "option"``);
2. the model's ``config.json`` ``postprocess`` block, written by ``geoseg train`` after choosing
   the values that maximise object F1 on the validation split (``"calibrated"``);
3. the label object areas the tile stage measured (``dataset.json`` ``objects``, carried into the
   model config) for ``min_area_m2`` and ``fill_holes_m2`` (``"derived"``, rule below);
4. a generic default (``"default"``): threshold 0.5, core 0.1, simplify 0.5 px, and a minimum area
   of :data:`MIN_OBJECT_PX` pixels at the model's ground resolution.

Rule for the derived minimum area (per model, over its foreground classes):
``max(MIN_OBJECT_PX px, AREA_FRACTION x p02)``, where p02 is the 2nd percentile of the true areas
(m²) of the label objects of the class with the smallest such percentile. An object smaller than
half of nearly every real object is noise, and no object is ever a few isolated pixels. Holes up to
the same area are filled: a hole smaller than the smallest plausible object is a prediction gap,
not a courtyard.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from geoseg.errors import ConfigError

__all__ = [
    "AREA_FRACTION",
    "MIN_OBJECT_PX",
    "PostProcess",
    "derived_min_area_m2",
    "object_area_summary",
    "resolve_postprocess",
]

MIN_OBJECT_PX = 4  # never fewer pixels than this in an object (a 2 x 2 block)
AREA_FRACTION = 0.5  # derived minimum area = this x the p02 label object area
QUANTILES = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
DEFAULTS = {"threshold": 0.5, "core_boundary_max": 0.1, "simplify_px": 0.5}
PARAMS = ("threshold", "core_boundary_max", "min_area_m2", "fill_holes_m2", "simplify_px")


@dataclass(frozen=True)
class PostProcess:
    """Resolved instance-step parameters and where each came from (``source[name]``).

    ``threshold`` and ``core_boundary_max`` are probabilities in (0, 1); areas are true m²;
    ``simplify_px`` is in pixels.
    """

    threshold: float
    core_boundary_max: float
    min_area_m2: float
    fill_holes_m2: float
    simplify_px: float
    source: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("threshold", "core_boundary_max"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0.0 < float(v) < 1.0):
                raise ConfigError(f"{name} must be between 0 and 1, got {v!r} ({self.source.get(name, 'option')})")
        for name in ("min_area_m2", "fill_holes_m2", "simplify_px"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a number >= 0, got {v!r} ({self.source.get(name, 'option')})")

    def to_dict(self) -> dict[str, Any]:
        """JSON form for ``run.json``: the values and their sources."""
        return asdict(self)


def object_area_summary(areas_m2: Mapping[int, Sequence[float]], resolution_m: float | None) -> dict[str, Any]:
    """The ``objects`` block of ``dataset.json``: per class id, count and area quantiles (m²).

    ``areas_m2[class_id]`` holds the true areas of the label objects valid at a scene date (each
    label counted once). ``resolution_m`` is the ground pixel size the areas relate to.
    """
    per_class: dict[str, Any] = {}
    for cid, vals in sorted(areas_m2.items()):
        a = np.asarray(vals, dtype=np.float64)
        a = a[np.isfinite(a) & (a > 0)]
        if a.size == 0:
            continue
        per_class[str(int(cid))] = {
            "count": int(a.size),
            "area_m2": {f"p{round(q * 100):02d}": float(np.quantile(a, q)) for q in QUANTILES}
            | {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean())},
        }
    return {
        "resolution_m": resolution_m,
        "per_class": per_class,
        "quantiles": [f"p{round(q * 100):02d}" for q in QUANTILES],
    }


def derived_min_area_m2(
    objects: Mapping[str, Any] | None, resolution_m: float | None, fg_classes: Sequence[int]
) -> tuple[float, str]:
    """``(min_area_m2, source)`` by the module's rule; ``source`` is ``derived`` or ``default``."""
    px_m2 = float(resolution_m) ** 2 if resolution_m and math.isfinite(float(resolution_m)) else 0.0
    floor = MIN_OBJECT_PX * px_m2
    per_class = (objects or {}).get("per_class") or {}
    p02 = [
        float(per_class[str(k)]["area_m2"]["p02"])
        for k in fg_classes
        if str(k) in per_class and per_class[str(k)].get("area_m2", {}).get("p02") is not None
    ]
    if p02:
        return max(floor, AREA_FRACTION * min(p02)), "derived"
    return floor, "default"


def resolve_postprocess(
    model_cfg: Mapping[str, Any],
    *,
    fg_classes: Sequence[int],
    threshold: float | None = None,
    core_boundary_max: float | None = None,
    min_area_m2: float | None = None,
    fill_holes_m2: float | None = None,
    simplify_px: float | None = None,
) -> PostProcess:
    """Resolve every parameter: option > calibrated (model ``postprocess``) > derived > default."""
    options = {
        "threshold": threshold,
        "core_boundary_max": core_boundary_max,
        "min_area_m2": min_area_m2,
        "fill_holes_m2": fill_holes_m2,
        "simplify_px": simplify_px,
    }
    calibrated = (model_cfg.get("postprocess") or {}).get("params") or {}
    derived_area, area_source = derived_min_area_m2(model_cfg.get("objects"), model_cfg.get("resolution_m"), fg_classes)
    fallback: dict[str, tuple[float, str]] = {k: (v, "default") for k, v in DEFAULTS.items()}
    fallback["min_area_m2"] = (derived_area, area_source)
    fallback["fill_holes_m2"] = (derived_area, area_source)
    values: dict[str, float] = {}
    source: dict[str, str] = {}
    for name in PARAMS:
        if options[name] is not None:
            values[name], source[name] = float(options[name]), "option"  # type: ignore[arg-type]
        elif calibrated.get(name) is not None:
            values[name], source[name] = float(calibrated[name]), "calibrated"
        else:
            values[name], source[name] = fallback[name]
    return PostProcess(**values, source=source)
