"""Synthetic prediction outputs (probabilities.tif / classes.tif) for the vectorize/qgis/evaluate tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from geoseg.grid import Grid

CLASSES = [
    {"id": 0, "name": "background", "color": "#000000"},
    {"id": 1, "name": "building", "color": "#e41a1c"},
    {"id": 2, "name": "boundary", "color": "#ffff33"},
]


def probs_from_labels(labels: np.ndarray, n_classes: int = 3, p: float = 0.9) -> np.ndarray:
    """(C, H, W) float32 probabilities: ``p`` on the labelled class, the rest shared equally."""
    h, w = labels.shape
    rest = (1.0 - p) / (n_classes - 1)
    out = np.full((n_classes, h, w), rest, np.float32)
    for k in range(n_classes):
        out[k][labels == k] = p
    return out


def write_probabilities(
    path: Path,
    probs: np.ndarray,
    *,
    crs: Any = "EPSG:32636",
    transform: Affine | None = None,
    nodata_mask: np.ndarray | None = None,
    as_float: bool = False,
    names: list[str] | None = None,
) -> Grid:
    """Write ``probs`` like ``geoseg predict`` does: uint8 round(p*254), nodata 255, scale 1/254
    (or float32 with NaN nodata), one band per class with the class name as description."""
    c, h, w = probs.shape
    transform = transform or Affine(0.5, 0, 500_000.0, 0, -0.5, 40_000.0)
    if as_float:
        data = probs.astype(np.float32).copy()
        if nodata_mask is not None:
            data[:, nodata_mask] = np.nan
        dtype, nodata = "float32", float("nan")
    else:
        data = np.round(probs * 254).astype(np.uint8)
        if nodata_mask is not None:
            data[:, nodata_mask] = 255
        dtype, nodata = "uint8", 255
    names = names or [CLASSES[i]["name"] for i in range(c)]
    prof = dict(driver="GTiff", width=w, height=h, count=c, dtype=dtype, crs=CRS.from_user_input(crs),
                transform=transform, nodata=nodata, tiled=True, blockxsize=64, blockysize=64)  # fmt: skip
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(data)
        for i, n in enumerate(names, start=1):
            ds.set_band_description(i, n)
        if not as_float:
            ds.scales = tuple([1 / 254] * c)
    return Grid(prof["crs"], transform, w, h)


def write_classes(path: Path, labels: np.ndarray, grid: Grid, classes: list[dict] = CLASSES) -> Path:
    """classes.tif: uint8 ids, nodata 255, colour table, CLASS_NAMES tag (as geoseg predict writes)."""
    h, w = labels.shape
    prof = dict(driver="GTiff", width=w, height=h, count=1, dtype="uint8", crs=grid.crs, transform=grid.transform,
                nodata=255, tiled=True, blockxsize=64, blockysize=64)  # fmt: skip
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(labels.astype(np.uint8), 1)
        ds.update_tags(CLASS_NAMES=json.dumps({c["id"]: c["name"] for c in classes}))
        cmap = {c["id"]: (*(int(c["color"][i : i + 2], 16) for i in (1, 3, 5)), 255) for c in classes}
        ds.write_colormap(1, cmap)
    return path


@pytest.fixture
def classes() -> list[dict]:
    return [dict(c) for c in CLASSES]


@pytest.fixture
def synth() -> Any:
    """The helpers above, as a fixture (test modules are imported with importlib mode)."""
    import types

    return types.SimpleNamespace(
        CLASSES=CLASSES,
        probs_from_labels=probs_from_labels,
        write_probabilities=write_probabilities,
        write_classes=write_classes,
    )
