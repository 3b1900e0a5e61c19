"""Fixtures for geoseg tile tests: tiny dated scenes + labels, and an independent whole-scene reference.

The reference mask is built the slow, obvious way on the whole (tiny) scene: labels reprojected with
geopandas, validity decided per row in plain Python, ``rasterio.features.rasterize`` on the full
grid, the boundary from explicit neighbour shifts, coverage and scene masks applied last.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import zarr
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely.geometry import Polygon

from geoseg.grid import Grid
from geoseg.testing import pixel_box, write_labels, write_scene, xy_image

SCENE_DATE = dt.date(2021, 6, 1)
#: options that keep every candidate tile (no sampling, no split); the rim is tested on its own (default: auto)
ALL = {
    "negative_ratio": 100.0,
    "val_fraction": 0.0,
    "max_unusable_fraction": 1.0,
    "min_positive_fraction": 0.0,
    "boundary_width": 0,
}


def random_labels(grid: Grid, n: int, seed: int = 0, classes: tuple[str, ...] = ("house", "shed")) -> dict[str, Any]:
    """``n`` boxes and triangles (some touching, some overlapping) with classes and dates around SCENE_DATE."""
    rng = np.random.default_rng(seed)
    geoms, cls, dates = [], [], []
    for i in range(n):
        r, c = float(rng.integers(0, grid.height - 8)), float(rng.integers(0, grid.width - 8))
        h, w = float(rng.integers(3, 14)), float(rng.integers(3, 14))
        if i % 3 == 2:  # triangle (not pixel aligned)
            x0, y0 = grid.transform @ (c + 0.3, r + 0.2)
            x1, y1 = grid.transform @ (c + w, r + h)
            g = Polygon([(x0, y0), (x1, y0), (x0, y1)])
        else:
            g = pixel_box(grid, r, c, h, w)
        geoms.append(g)
        if i % 4 == 0:  # a touching neighbour of the same class
            geoms.append(pixel_box(grid, r, c + w, h, 3))
            cls.append(classes[i % len(classes)])
            dates.append("2020-01-01")
        cls.append(classes[i % len(classes)])
        dates.append("2022-03-01" if i % 5 == 1 else ("2015-02-02" if i % 7 == 3 else "2020-05-05"))
    return {"geoms": geoms, "class": cls, "date": dates}


@pytest.fixture
def small_case(tmp_path: Path) -> dict[str, Any]:
    """A 192 x 256 uint16 3-band scene dated SCENE_DATE (tag) and 60 dated labels (GPKG)."""
    grid = write_scene(tmp_path / "scene.tif", xy_image(192, 256, 3, "uint16"), date=SCENE_DATE, blocksize=64)
    lab = random_labels(grid, 60)
    path = write_labels(
        tmp_path / "labels.gpkg", lab["geoms"], grid.crs, **{"class": lab["class"], "date": lab["date"]}
    )
    return {"grid": grid, "scene": tmp_path / "scene.tif", "labels": path, "tmp": tmp_path}


def valid_rule(date: Any, scene_date: dt.date, max_age: int | None, undated: str) -> bool:
    if date is None or (isinstance(date, float) and date != date):
        return undated == "keep"
    d = dt.date.fromisoformat(str(date)[:10])
    if d > scene_date:
        return False
    return not (max_age is not None and (scene_date - d).days > max_age)


def reference_mask(
    scene: Path,
    labels: gpd.GeoDataFrame,
    classes: list[str],
    *,
    scene_date: dt.date = SCENE_DATE,
    max_age: int | None = None,
    undated: str = "keep",
    coverage: gpd.GeoDataFrame | None = None,
    boundary: int = 0,
) -> np.ndarray:
    """Whole-scene mask by the documented rules (tiny scenes only)."""
    with rasterio.open(scene) as ds:
        grid = Grid.from_dataset(ds)
        valid_px = np.all(ds.read_masks() > 0, axis=0)
    g = labels.to_crs(grid.crs.to_wkt()).explode(index_parts=False)
    ok = [valid_rule(d, scene_date, max_age, undated) for d in g["date"]]
    ids = [classes.index(c) + 1 for c in g["class"]]
    out = np.zeros(grid.shape, np.uint8)
    inv = [geom for geom, v in zip(g.geometry, ok, strict=False) if not v]
    if inv:
        rasterize([(x, 255) for x in inv], out=out, transform=grid.transform)
    val = [(geom, i) for geom, i, v in zip(g.geometry, ids, ok, strict=False) if v]
    if val:
        rasterize(val, out=out, transform=grid.transform)
    if boundary:
        p = boundary
        t = grid[Window(-p, -p, grid.width + 2 * p, grid.height + 2 * p)].transform
        inst = rasterize(
            [(geom, k + 1) for k, (geom, v) in enumerate(zip(g.geometry, ok, strict=False)) if v],
            out_shape=(grid.height + 2 * p, grid.width + 2 * p),
            transform=t,
            dtype="int32",
        )
        edge = np.zeros(inst.shape, bool)
        core = inst[p:-p, p:-p]
        first = np.zeros(core.shape, np.int64)  # some instance id seen in the neighbourhood (0: none yet)
        two = np.zeros(core.shape, bool)  # two different instance ids seen
        for dy in range(-p, p + 1):
            for dx in range(-p, p + 1):
                nb = inst[p + dy : p + dy + grid.height, p + dx : p + dx + grid.width]
                edge[p:-p, p:-p] |= (core > 0) & (nb != core)
                two |= (nb > 0) & (first > 0) & (nb != first)
                first = np.where((first == 0) & (nb > 0), nb, first)
        gap = (core == 0) & two & (out == 0)  # close contact: background between two instances
        out[edge[p:-p, p:-p] | gap] = len(classes) + 1
    if coverage is not None:
        cov = rasterize(
            [(x, 1) for x in coverage.to_crs(grid.crs.to_wkt()).geometry],
            out_shape=grid.shape,
            transform=grid.transform,
            dtype="uint8",
        )
        out[cov == 0] = 255
    out[~valid_px] = 255
    return out


def load_dataset(out: Path) -> tuple[gpd.GeoDataFrame, np.ndarray, np.ndarray]:
    """``(tiles index sorted by index, images, masks)`` of a written dataset."""
    idx = gpd.read_file(out / "tiles.gpkg", layer="tiles").sort_values("index").reset_index(drop=True)
    g = zarr.open_group(str(out / "tiles.zarr"), mode="r")
    return idx, g["images"][:], g["masks"][:]


def read_labels_gdf(path: Path) -> gpd.GeoDataFrame:
    return gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path)
