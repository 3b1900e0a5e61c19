"""geoseg.polygonize.label_polygons against GDAL's polygonize (rasterio.features.shapes), on label
images built to contain the hard cases: corner contacts of one region with itself (pinches), of two
regions of the same value, holes touching the outer ring, nested regions, image borders."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio.features
import shapely
from scipy import ndimage as ndi

from geoseg.polygonize import label_polygons


def _gdal(lab: np.ndarray, col_off: int = 0, row_off: int = 0) -> list[tuple[int, bytes]]:
    shift = rasterio.Affine.translation(col_off, row_off)
    found = rasterio.features.shapes(lab.astype(np.int32), mask=lab > 0, connectivity=4, transform=shift)
    return sorted((int(v), shapely.normalize(shapely.geometry.shape(g)).wkb) for g, v in found)


def _ours(lab: np.ndarray, col_off: int = 0, row_off: int = 0) -> list[tuple[int, bytes]]:
    vals, geoms = label_polygons(lab, col_off, row_off)
    assert shapely.is_valid(geoms).all()
    return sorted((int(v), shapely.normalize(g).wkb) for v, g in zip(vals.tolist(), geoms, strict=True))


def _images(seed: int, n: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (int(x) for x in rng.integers(1, 28, 2))
        kind = i % 4
        if kind == 0:  # checkerboard-like noise: many pinches between and within values
            yield rng.integers(0, 3, (h, w))
        elif kind == 1:  # instance ids of smooth blobs (what vectorize polygonizes)
            yield ndi.label(ndi.gaussian_filter(rng.normal(size=(h, w)), 1.2) > 0)[0]
        elif kind == 2:  # sparse multi-valued noise: several components per value, nested regions
            yield rng.integers(0, 6, (h, w)) * (rng.random((h, w)) > 0.3)
        else:  # one value with holes and diagonal contacts
            yield (rng.random((h, w)) > 0.35).astype(np.int64) * 7


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_polygons_as_gdal(seed):
    for lab in _images(seed, 120):
        assert _ours(lab) == _gdal(lab)


def test_known_cases_and_offsets():
    pinch = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 0]])  # a hole touching the outside at a corner
    two = np.array([[1, 0], [0, 1]])  # two regions of one value meeting at a corner
    ring = np.ones((5, 5), np.int64)
    ring[1:4, 1:4] = 0
    ring[2, 2] = 1  # an island of the same value inside the hole: a second polygon
    for lab in (pinch, two, ring):
        assert _ours(lab, 100, -7) == _gdal(lab, 100, -7)
    vals, geoms = label_polygons(two)
    assert len(vals) == 2
    vals, geoms = label_polygons(pinch)
    assert len(vals) == 1 and shapely.get_num_interior_rings(geoms[0]) == 1
    vals, geoms = label_polygons(ring)
    assert sorted(shapely.area(geoms).tolist()) == [1.0, 16.0]
    assert label_polygons(np.zeros((3, 4), np.int32))[0].size == 0
    assert label_polygons(np.zeros((0, 4), np.int32))[0].size == 0


def test_vertices_are_corners_only():
    lab = np.zeros((6, 9), np.int32)
    lab[1:5, 1:8] = 3  # a 7 x 4 rectangle: 4 corners (+ the closing vertex)
    _, geoms = label_polygons(lab)
    assert shapely.get_num_coordinates(geoms).tolist() == [5]


@pytest.mark.parametrize("seed", [3, 4])
def test_output_is_canonical_with_exact_moments(seed):
    from geoseg.polygonize import canonical_pixel_polygons, pixel_polygons

    for lab in _images(seed, 80):
        p = pixel_polygons(lab, 37, 1000)
        if not len(p.values):
            continue
        # already in shapely.normalize's form, bit for bit (so merged and unmerged objects agree)
        assert (shapely.to_wkb(p.geoms) == shapely.to_wkb(shapely.normalize(p.geoms))).all()
        g, area, centre = canonical_pixel_polygons(p.geoms)
        assert (shapely.to_wkb(g) == shapely.to_wkb(p.geoms)).all()
        assert np.array_equal(area, p.area) and np.array_equal(centre, p.centre)
        assert np.array_equal(area, shapely.area(p.geoms))
        np.testing.assert_allclose(centre, shapely.get_coordinates(shapely.centroid(p.geoms)), rtol=1e-12)
