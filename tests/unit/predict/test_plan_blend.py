"""Planning (AOI -> windows, strips, bands) and blend windows."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

from geoseg.errors import ConfigError, RegistryError
from geoseg.grid import Grid
from geoseg.predict.blend import BLEND_WINDOWS, weight_1d, weight_2d
from geoseg.predict.plan import axis_starts, plan_scene
from geoseg.testing import pixel_box


@pytest.mark.parametrize("n", [1, 31, 32, 33, 100, 157, 203])
@pytest.mark.parametrize("size,stride", [(32, 32), (32, 17), (32, 16), (16, 9)])
def test_axis_starts_cover_range_inside_axis(n: int, size: int, stride: int) -> None:
    for lo, hi in [(0, n), (min(5, n - 1), n), (0, max(1, n // 2)), (n // 3, max(n // 3 + 1, 2 * n // 3))]:
        starts = axis_starts(lo, hi, n, size, stride)
        covered = np.zeros(n, bool)
        for s in starts:
            covered[max(s, 0) : s + size] = True
        assert covered[lo:hi].all(), (lo, hi, starts)
        assert starts == sorted(set(starts))
        if n >= size:
            assert all(0 <= s and s + size <= n for s in starts)
            assert all(b - a <= stride for a, b in itertools.pairwise(starts))
            assert starts[-1] + size >= hi and starts[0] <= lo
        else:
            assert starts == [0]
    assert axis_starts(5, 5, n, size, stride) == []


def _grid(w: int = 157, h: int = 203) -> Grid:
    return Grid(CRS.from_epsg(32636), Affine(0.5, 0, 500000, 0, -0.5, 40000), w, h)


def test_plan_keeps_only_windows_touching_the_aoi_and_covers_it() -> None:
    g = _grid()
    # an L-shaped AOI that cuts through windows
    aoi = shapely.union_all([pixel_box(g, 10.5, 20.3, 30, 100), pixel_box(g, 10.5, 20.3, 150, 25)])
    plan = plan_scene(g, aoi, 32, 8)
    assert plan is not None
    cover = np.zeros(g.shape, int)
    for w in plan.windows():
        box = shapely.box(*g.window_bounds(w))
        assert box.intersects(aoi)
        cover[w.row_off : w.row_off + 32, w.col_off : w.col_off + 32] += 1
    inside = plan.aoi_mask((0, g.height), g.width)[:, : g.width - plan.col_lo]
    full = np.zeros(g.shape, bool)
    full[:, plan.col_lo :] = inside[:, : g.width - plan.col_lo]
    assert full.sum() > 1000 and (cover[full] > 0).all()
    # windows that do not touch the AOI are left out (the L's empty corner)
    assert plan.n_windows < len(list(g.tiles(32, 24)))


def test_plan_misses_and_bad_overlap() -> None:
    g = _grid()
    far = shapely.box(0, 0, 10, 10)
    assert plan_scene(g, far, 32, 8) is None
    with pytest.raises(ConfigError, match="overlap"):
        plan_scene(g, g.footprint, 32, 32)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_bands_tile_the_rows(n: int) -> None:
    g = _grid()
    plan = plan_scene(g, g.footprint, 32, 12)
    assert plan is not None
    bands = plan.row_ranges(n)
    assert bands[0].row_lo == 0 and bands[-1].row_hi == g.height
    for a, b in itertools.pairwise(bands):
        assert a.row_hi == b.row_lo
        # a band also runs the previous band's strips whose windows reach into it
        assert max(a.strips) in b.strips
        assert all(plan.strips[i].row + 32 > b.row_lo for i in b.strips)


def test_blend_registry_and_weights() -> None:
    assert set(BLEND_WINDOWS.names()) >= {"hann", "cosine", "triangular", "uniform"}
    with pytest.raises(RegistryError, match="valid: cosine, hann"):
        BLEND_WINDOWS["gauss"]
    for name in BLEND_WINDOWS:
        for size in (1, 7, 32):
            a = weight_1d(name, size)
            assert a.shape == (size,) and (a > 0).all() and a.max() == pytest.approx(1.0)
            np.testing.assert_allclose(a, a[::-1])
        w = weight_2d(name, 32)
        assert w.shape == (32, 32) and w.min() >= 1e-6
    hann = weight_1d("hann", 32)
    assert hann[0] < 0.01 and hann[15] > 0.99  # smooth taper to the floor at the edges
