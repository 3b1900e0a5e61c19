"""Blend windows: per-pixel weights of one tile's prediction when overlapping tiles are averaged.

A window is separable, ``w(r, c) = a(r) * a(c)``, from a 1-D profile registered in
:data:`BLEND_WINDOWS`. Every profile has a small positive floor so pixels seen only by a tile's
edge (the scene border) still get weight; the stitcher divides by the summed weights, so any
positive window reproduces a constant (and the identity model's input) exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from geoseg.registry import Registry

#: name -> function(size) -> 1-D float64 profile (before flooring)
BLEND_WINDOWS: Registry[Callable[[int], np.ndarray]] = Registry("blend window")

DEFAULT_FLOOR = 1e-3


def _centres(size: int) -> np.ndarray:
    """Pixel centres mapped to (0, 1)."""
    return (np.arange(size, dtype=np.float64) + 0.5) / size


@BLEND_WINDOWS.register("hann")
def hann(size: int) -> np.ndarray:
    """Raised cosine ``sin^2(pi x)``: smooth, zero slope at the centre (the default)."""
    return np.sin(np.pi * _centres(size)) ** 2


@BLEND_WINDOWS.register("cosine")
def cosine(size: int) -> np.ndarray:
    """Cosine (sine) window ``sin(pi x)``: wider plateau than Hann."""
    return np.sin(np.pi * _centres(size))


@BLEND_WINDOWS.register("triangular")
def triangular(size: int) -> np.ndarray:
    """Linear ramp to 1 at the centre."""
    return 1.0 - np.abs(2.0 * _centres(size) - 1.0)


@BLEND_WINDOWS.register("uniform")
def uniform(size: int) -> np.ndarray:
    """Plain average of overlapping tiles."""
    return np.ones(size, dtype=np.float64)


def weight_1d(name: str, size: int, floor: float = DEFAULT_FLOOR) -> np.ndarray:
    """The 1-D profile of window ``name`` (max 1, min ``floor``), float64."""
    prof = np.asarray(BLEND_WINDOWS[name](size), dtype=np.float64)
    peak = float(prof.max()) if prof.size else 1.0
    prof = prof / (peak if peak > 0 else 1.0)
    return np.maximum(prof, floor)


def weight_2d(name: str, size: int, floor: float = DEFAULT_FLOOR) -> np.ndarray:
    """``(size, size)`` float64 weights ``a(r) * a(c)``; every entry is > 0."""
    a = weight_1d(name, size, floor)
    return np.outer(a, a)
