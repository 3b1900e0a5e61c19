"""The vectorised tile paths equal their plain references: boundary filters (OpenCV and numpy),
histograms, geodesic areas, and the thread-pool executor."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from pyproj import CRS, Geod, Transformer
from scipy import ndimage

from geoseg.errors import InputError
from geoseg.grid import geodesic_areas_m2
from geoseg.parallel import Executor
from geoseg.tile import work
from geoseg.tile.labels import rim_and_gap


def _reference_rim_gap(inst: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    size = 2 * r + 1
    hi = ndimage.maximum_filter(inst, size=size, mode="nearest")
    lo = ndimage.minimum_filter(inst, size=size, mode="nearest")
    big = np.iinfo(np.int32).max
    lo_nz = ndimage.minimum_filter(np.where(inst > 0, inst, big), size=size, mode="nearest")
    rim = (inst > 0) & ((hi != inst) | (lo != inst))
    gap = (inst == 0) & (hi > 0) & (lo_nz < big) & (hi != lo_nz)
    crop = (slice(r, inst.shape[0] - r), slice(r, inst.shape[1] - r))
    return rim[crop], gap[crop]


@pytest.mark.parametrize("r", [1, 2, 3])
def test_rim_and_gap_opencv_and_numpy_equal_scipy(r: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(r)
    monkeypatch.setattr("geoseg.tile.labels._STRIP_ROWS", 7)  # several strips, partial last one
    for trial in range(20):
        h, w = (int(v) for v in rng.integers(1, 60, 2) + 2 * r)
        inst = (rng.integers(1, 6, (h, w)) * (rng.random((h, w)) < 0.4)).astype(np.int32)
        if trial % 4 == 0:
            inst[: h // 2] = 0  # unlabelled rows are skipped
        if trial % 7 == 0:
            inst[:] = 0
        ref = _reference_rim_gap(inst, r)
        for arr in (inst.astype(np.uint16), inst):  # OpenCV (uint16) and numpy (int32) paths
            got = rim_and_gap(arr, r)
            np.testing.assert_array_equal(got[0], ref[0], err_msg=f"rim {arr.dtype} {trial}")
            np.testing.assert_array_equal(got[1], ref[1], err_msg=f"gap {arr.dtype} {trial}")
        assert trial % 7 == 0 or ref[0].any()


def test_hist_u8_equals_bincount(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (9, 3, 8 * 8), dtype=np.uint8)
    valid = rng.random((9, 64)) < 0.7
    for split in (2**24, 64 * 2):  # one OpenCV call, then calls of two rows each
        monkeypatch.setattr(work, "_CV_EXACT_PX", split)
        for b in range(3):
            band = imgs[:, b]  # rows strided by the band count
            np.testing.assert_array_equal(work.hist_u8(band), np.bincount(band.ravel(), minlength=256))
            np.testing.assert_array_equal(work.hist_u8(band, valid), np.bincount(band[valid], minlength=256))
    px16 = rng.integers(0, 65536, (4, 50)).astype(np.uint16)
    np.testing.assert_array_equal(work.band_hist(px16, None, (0, 65536)), np.bincount(px16.ravel(), minlength=65536))


def test_geodesic_areas_equal_pyproj_per_geometry() -> None:
    x0, y0 = 500_000.0, 4_000_000.0
    geoms = np.array(
        [
            shapely.box(x0, y0, x0 + 30, y0 + 12),
            shapely.box(x0, y0, x0 + 100, y0 + 100).difference(shapely.box(x0 + 10, y0 + 10, x0 + 20, y0 + 30)),
            shapely.MultiPolygon([shapely.box(x0, y0, x0 + 5, y0 + 5), shapely.box(x0 + 9, y0, x0 + 12, y0 + 4)]),
            shapely.Polygon(),
            shapely.Polygon([(x0, y0), (x0 + 7.3, y0 + 1.1), (x0 + 2.2, y0 + 9.9)]),
        ],
        dtype=object,
    )
    crs = CRS.from_epsg(32636)
    got = geodesic_areas_m2(geoms, crs)
    t = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True)
    ll = shapely.orient_polygons(shapely.transform(geoms, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))))
    want = [abs(float(Geod(ellps="WGS84").geometry_area_perimeter(g)[0])) for g in ll]
    assert got.tolist() == want  # bit for bit
    assert got[1] == pytest.approx(100 * 100 - 10 * 20, rel=2e-3) and got[3] == 0


def _square(x: int) -> int:
    return x * x


def _fail(kind: str) -> None:
    raise InputError("bad.tif: unreadable") if kind == "geoseg" else ValueError("boom")


@pytest.mark.parametrize("local", ["threads", "fork"])
def test_local_pool_executor(local: str) -> None:
    with Executor(2, processes=False, local=local, what="square task") as ex:
        assert ex.parallel and not ex.distributed and ex.n_workers == 2
        assert sorted(ex.map(_square, [(i, i) for i in range(9)])) == [(i, i * i) for i in range(9)]
        with pytest.raises(InputError, match=r"bad\.tif: unreadable"):
            list(ex.map(_fail, [(0, "geoseg")]))
        with pytest.raises(RuntimeError, match="square task failed: ValueError"):
            list(ex.map(_fail, [(0, "other")]))
    assert Executor(2, processes=True, local=local).local is None  # --processes: a dask cluster
    assert Executor(2, "tcp://h:1", processes=False, local=local).local is None  # so does a scheduler


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32"])
def test_burn_equals_rasterio_rasterize(dtype: str) -> None:
    """labels._burn (rasterio's C call without its per-shape checks) burns what rasterize burns, later
    shapes winning, holes kept open, empty polygons skipped."""
    from affine import Affine
    from rasterio.features import rasterize

    from geoseg.tile.labels import _burn, polygon_mappings

    rng = np.random.default_rng(5)
    tr = Affine(0.5, 0, 100, 0, -0.5, 200)
    polys = [shapely.box(*xy, *(xy + rng.uniform(1, 8, 2))) for xy in rng.uniform([100, 180], [120, 200], (40, 2))]
    polys.append(shapely.box(101, 181, 115, 195).difference(shapely.box(104, 184, 110, 190)))  # with a hole
    polys.append(shapely.Polygon())
    shapes = polygon_mappings(np.array(polys, dtype=object))
    pairs = [(g, i % 7 + 1) for i, g in enumerate(shapes)]
    ours = np.zeros((40, 48), dtype)
    _burn(pairs, ours, tr)
    with pytest.warns(UserWarning):  # (rasterio warns about the empty polygon)
        ref = rasterize([(shapely.geometry.mapping(p), v) for p, (_, v) in zip(polys, pairs, strict=True)],
                        out_shape=(40, 48), transform=tr, dtype=dtype)  # fmt: skip
    np.testing.assert_array_equal(ours, ref)
    assert len(np.unique(ours)) > 4
