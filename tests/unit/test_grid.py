"""Grid: windows, tiles, sub-grids and metre resolution, checked against rasterio directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from geoseg.grid import Grid, geodesic_area_m2
from geoseg.testing import pixel_box, write_scene, xy_image


@pytest.fixture
def grid() -> Grid:
    return Grid(CRS.from_epsg(32636), Affine(0.5, 0, 500_000, 0, -0.5, 40_000), 203, 157)


def test_tiles_cover_grid_inside_edges(grid: Grid) -> None:
    wins = list(grid.tiles(64, 48))
    assert all(w.col_off + w.width <= grid.width and w.row_off + w.height <= grid.height for w in wins)
    covered = np.zeros(grid.shape, bool)
    for w in wins:
        covered[w.toslices()] = True
    assert covered.all()
    assert {int(w.col_off) for w in wins} == {0, 48, 96, 139}


def test_tiles_padded_keep_size(grid: Grid) -> None:
    wins = list(grid.tiles(64, pad=True))
    assert {(w.width, w.height) for w in wins} == {(64, 64)}
    assert max(w.col_off for w in wins) == 192 and max(w.row_off for w in wins) == 128


def test_small_grid_yields_no_unpadded_tiles() -> None:
    g = Grid(CRS.from_epsg(3857), Affine(1, 0, 0, 0, -1, 0), 10, 10)
    assert list(g.tiles(16)) == []


def test_subgrid_matches_rasterio(tmp_path, grid: Grid) -> None:
    path = tmp_path / "xy.tif"
    data = xy_image(grid.height, grid.width, 2, "uint16")
    g = write_scene(path, data, crs=grid.crs, origin=(grid.transform.c, grid.transform.f), res=0.5)
    w = Window(17, 33, 40, 21)
    sub = g[w]
    with rasterio.open(path) as ds:
        assert sub.transform == ds.window_transform(w)
        arr = ds.read(window=w)
    # pixel values encode their own position: the sub-grid origin is (col 17, row 33)
    assert arr[0, 0, 0] == 17 + 1 and arr[1, 0, 0] == 33 + 1
    assert sub.shape == (21, 40)


def test_window_from_bounds_roundtrip(grid: Grid) -> None:
    w = Window(10, 20, 30, 40)
    assert grid.window(grid.window_bounds(w)) == w
    # bounds half outside get clipped
    minx, miny, _maxx, maxy = grid.bounds
    clipped = grid.window((minx - 100, miny - 100, minx + 5, maxy + 100))
    assert clipped == Window(0, 0, 10, grid.height)


def test_pixel_box_covers_window(grid: Grid) -> None:
    geom = pixel_box(grid, 5, 7, 3, 4)
    assert grid.window(geom.bounds) == Window(7, 5, 4, 3)


def test_resolution_m_web_mercator() -> None:
    # A Web Mercator unit along a parallel at latitude phi is cos(phi) / sqrt(1 - e2 sin^2 phi) m on WGS84
    from pyproj import Transformer

    _, y60 = Transformer.from_crs(4326, 3857, always_xy=True).transform(0.0, 60.0)
    g = Grid(CRS.from_epsg(3857), Affine(1, 0, 0, 0, -1, y60 + 50), 100, 100)
    e2 = 0.00669437999014
    phi = math.radians(60)
    expected = math.cos(phi) / math.sqrt(1 - e2 * math.sin(phi) ** 2)
    assert g.resolution_m() == pytest.approx(expected, rel=1e-4)


def test_geodesic_area_4326_and_3857() -> None:
    from pyproj import Transformer
    from shapely.geometry import box
    from shapely.ops import transform as shp_transform

    # a 0.001 x 0.001 degree cell at the equator is about 111.32 m x 110.57 m
    cell = box(32.0, 0.0, 32.001, 0.001)
    a4326 = geodesic_area_m2(cell, CRS.from_epsg(4326))
    assert a4326 == pytest.approx(111.32 * 110.57, rel=2e-3)
    t = Transformer.from_crs(4326, 3857, always_xy=True)
    merc = shp_transform(t.transform, cell)
    assert geodesic_area_m2(merc, CRS.from_epsg(3857)) == pytest.approx(a4326, rel=1e-6)
    # at 60 deg N the planar Web Mercator area is ~4x the true area; the geodesic one is not fooled
    north = shp_transform(t.transform, box(32.0, 60.0, 32.001, 60.001))
    assert north.area > 3.9 * geodesic_area_m2(north, CRS.from_epsg(3857))
    assert math.isclose(geodesic_area_m2(north, CRS.from_epsg(3857)), 111.4 * 55.8, rel_tol=5e-3)


def test_dict_roundtrip(grid: Grid) -> None:
    assert Grid.from_dict(grid.to_dict()) == grid
