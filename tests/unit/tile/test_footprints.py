"""tiles.gpkg footprints are the true tile quadrilaterals, also for a rotated / sheared geotransform (issue 13)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

from geoseg.grid import Grid
from geoseg.testing import write_labels, write_scene, xy_image
from geoseg.tile.run import TileConfig, run

from .conftest import load_dataset, reference_mask

T = 16


def _pixel_quad(tr: Affine, r: float, c: float, h: float, w: float) -> shapely.Polygon:
    """The polygon of pixels ``[r, r + h) x [c, c + w)`` under ``tr`` (a quadrilateral when rotated)."""
    return shapely.Polygon([tr * (c, r), tr * (c + w, r), tr * (c + w, r + h), tr * (c, r + h)])


def test_north_up_footprints_are_exactly_shapely_boxes() -> None:
    g = Grid(CRS.from_epsg(32636), Affine(0.3, 0, 500_000.1, 0, -0.3, 40_000.7), 100, 80)
    rows, cols = np.array([0, 16, 48]), np.array([32, 0, 80])
    quads = g.tile_footprints(rows, cols, T)
    for q, r, c in zip(quads, rows, cols, strict=True):
        assert shapely.equals_exact(q, shapely.box(*shapely.bounds(q)), tolerance=0)  # same vertices, same order
        x0, y1 = g.transform * (c, r)
        x1, y0 = g.transform * (c + T, r + T)
        np.testing.assert_allclose(shapely.bounds(q), [x0, y0, x1, y1], rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "transform",
    [
        Affine.translation(500_000, 40_000) * Affine.rotation(30) * Affine.scale(0.5, -0.5),
        Affine(0.5, 0.2, 500_000, 0.1, -0.5, 40_000),  # sheared
    ],
    ids=["rotated", "sheared"],
)
def test_rotated_scene_index_has_true_footprints(tmp_path: Path, transform: Affine) -> None:
    scene = tmp_path / "scene.tif"
    grid = write_scene(scene, xy_image(64, 80, 3, "uint8"), transform=transform)
    rng = np.random.default_rng(1)
    boxes = [(float(rng.integers(0, 56)), float(rng.integers(0, 72)), 6.0, 7.0) for _ in range(12)]
    geoms = [_pixel_quad(grid.transform, *b) for b in boxes]
    labels = write_labels(tmp_path / "labels.gpkg", geoms, grid.crs, **{"class": ["house"] * len(geoms)})
    out = tmp_path / "ds"
    cfg = TileConfig(
        scenes=(str(scene),), labels=str(labels), out=str(out), tile_size=T, negative_ratio=10.0,
        val_fraction=0.0, boundary_width=0, progress=False,
    )  # fmt: skip
    run(cfg)
    idx, _, masks = load_dataset(out)
    assert len(idx) > 4
    for row in idx.itertuples():
        expect = _pixel_quad(grid.transform, row.row_off, row.col_off, T, T)
        got = row.geometry
        assert got.area == pytest.approx(T * T * abs(grid.transform.determinant), rel=1e-9)  # not a bounding box
        assert shapely.equals_exact(shapely.normalize(got), shapely.normalize(expect), tolerance=1e-6)
    # the masks follow the rotated pixels too (labels near chunk edges are not lost)
    ref = reference_mask(scene, gpd.read_file(labels).assign(date=None), ["house"])
    for i, row in enumerate(idx.itertuples()):
        expect = np.full((T, T), 255, np.uint8)
        part = ref[row.row_off : row.row_off + T, row.col_off : row.col_off + T]
        expect[: part.shape[0], : part.shape[1]] = part
        np.testing.assert_array_equal(masks[i], expect, err_msg=f"tile {row.row_off},{row.col_off}")
