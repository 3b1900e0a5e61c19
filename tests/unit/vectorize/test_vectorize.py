"""Block-wise instance vectorization: separation, seams, holes, areas, nodata, filters, CLI."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Geod, Transformer
from rasterio.crs import CRS

from geoseg.cli import main
from geoseg.vectorize import geodesic_areas_m2, read_prediction_classes, vectorize_prediction

RES = 0.5  # metres per pixel (EPSG:32636 default grid of the synth helpers)


def _read(path):
    return gpd.read_file(path, layer="instances", engine="pyogrio")


def _vec(synth, tmp_path, labels, *, block_size=1024, name="inst.gpkg", **kw):
    g = synth.write_probabilities(tmp_path / "probabilities.tif", synth.probs_from_labels(labels), **kw)
    out = tmp_path / name
    n = vectorize_prediction(tmp_path / "probabilities.tif", out, classes=synth.CLASSES, boundary_class=2,
                             block_size=block_size, scene="s.tif", scene_date="2024-05-01")  # fmt: skip
    return g, out, n


def test_touching_squares_with_boundary_become_two_polygons(synth, tmp_path):
    lab = np.zeros((64, 64), np.uint8)
    lab[10:30, 10:30] = 1
    lab[10:30, 30:50] = 1  # touches the first square along column 30
    lab[10:30, 29:31] = 2  # contact line predicted as boundary
    lab[10, 10:50] = 2  # an outer rim row of boundary pixels as well
    _, out, n = _vec(synth, tmp_path, lab)
    gdf = _read(out)
    assert n == len(gdf) == 2
    assert gdf.crs == CRS.from_epsg(32636)
    assert not gdf.geometry.iloc[0].intersection(gdf.geometry.iloc[1]).area > 0
    # boundary pixels go to the nearest object: together the two cover the whole 20 x 40 block
    assert gdf.geometry.area.sum() == pytest.approx(20 * 40 * RES * RES)
    assert sorted(gdf.geometry.area.round(6)) == [20 * 20 * RES * RES] * 2
    assert set(gdf["class"]) == {"building"} and set(gdf["class_id"]) == {1}
    assert set(gdf["scene"]) == {"s.tif"} and set(gdf["scene_date"]) == {"2024-05-01"}
    assert gdf.is_valid.all()
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_without_boundary_channel_touching_squares_merge(synth, tmp_path):
    lab = np.zeros((64, 64), np.uint8)
    lab[10:30, 10:50] = 1
    probs = synth.probs_from_labels(lab, n_classes=2)
    synth.write_probabilities(tmp_path / "p.tif", probs, names=["background", "building"])
    n = vectorize_prediction(tmp_path / "p.tif", tmp_path / "o.gpkg", classes=synth.CLASSES[:2], boundary_class=None)
    assert n == 1


def test_object_across_block_seams_is_one_polygon_with_hole(synth, tmp_path):
    lab = np.zeros((100, 100), np.uint8)
    lab[20:80, 20:80] = 1  # spans 4 blocks of 32 (block seams at 32 and 64)
    lab[40:50, 40:50] = 0  # a hole that crosses no seam
    lab[60:70, 28:36] = 0  # a hole that crosses the seam at column 32
    lab[20, 20:80] = 2  # boundary rim on top
    _, out, n = _vec(synth, tmp_path, lab, block_size=32)
    gdf = _read(out)
    assert n == 1
    poly = gdf.geometry.iloc[0]
    assert poly.geom_type == "Polygon"
    assert len(poly.interiors) == 2
    assert poly.area == pytest.approx((60 * 60 - 100 - 80) * RES * RES)
    # the same instance whatever the block size
    _, out2, _ = _vec(synth, tmp_path, lab, block_size=1024, name="big.gpkg")
    assert _read(out2).geometry.iloc[0].equals(poly)


def test_block_size_does_not_change_the_result(synth, tmp_path):
    rng = np.random.default_rng(3)
    lab = np.zeros((150, 170), np.uint8)
    for _ in range(40):  # random rectangles, many touching, many crossing seams
        r, c = rng.integers(0, 140), rng.integers(0, 160)
        h, w = rng.integers(3, 40), rng.integers(3, 40)
        lab[r : r + h, c : c + w] = 1
        lab[r : r + h, c] = 2
        lab[r, c : c + w] = 2
    _, ref, n_ref = _vec(synth, tmp_path, lab, block_size=4096, name="ref.gpkg")
    want = sorted(shapely.normalize(g).wkt for g in _read(ref).geometry)
    assert n_ref > 5
    for bs in (16, 24, 50):
        _, out, _ = _vec(synth, tmp_path, lab, block_size=bs, name=f"b{bs}.gpkg")
        assert sorted(shapely.normalize(g).wkt for g in _read(out).geometry) == want, bs


def test_scores_are_mean_class_probability(synth, tmp_path):
    lab = np.zeros((40, 40), np.uint8)
    lab[5:15, 5:15] = 1
    probs = synth.probs_from_labels(lab)
    probs[1, 5:10, 5:15] = 0.7  # half the object less sure
    probs[0, 5:10, 5:15] = 0.3
    probs[2, 5:10, 5:15] = 0.0
    synth.write_probabilities(tmp_path / "p.tif", probs)
    vectorize_prediction(tmp_path / "p.tif", tmp_path / "o.gpkg", classes=synth.CLASSES, boundary_class=2)
    gdf = _read(tmp_path / "o.gpkg")
    want = (np.round(0.7 * 254) + np.round(0.9 * 254)) / 2 / 254
    assert gdf["score"].iloc[0] == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("epsg", [3857, 4326])
def test_area_m2_is_true_area(synth, tmp_path, epsg):
    # a grid near Kampala (0.33 N) and one far north (60 N) where Web Mercator area is 4x too big
    lon, lat = (32.58, 60.0)
    if epsg == 3857:
        x0, y0 = Transformer.from_crs(4326, 3857, always_xy=True).transform(lon, lat)
        res = 1.0
    else:
        x0, y0 = lon, lat
        res = 1e-5
    tr = Affine(res, 0, x0, 0, -res, y0)
    lab = np.zeros((64, 64), np.uint8)
    lab[8:48, 4:44] = 1
    _, out, _ = _vec(synth, tmp_path, lab, crs=f"EPSG:{epsg}", transform=tr)
    gdf = _read(out)
    assert gdf.crs == CRS.from_epsg(epsg)
    # independent truth: geodesic area of the object's four corners
    xs = [x0 + 4 * res, x0 + 44 * res, x0 + 44 * res, x0 + 4 * res]
    ys = [y0 - 8 * res, y0 - 8 * res, y0 - 48 * res, y0 - 48 * res]
    lons, lats = Transformer.from_crs(epsg, 4326, always_xy=True).transform(xs, ys)
    truth, _ = Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)
    assert gdf["area_m2"].iloc[0] == pytest.approx(abs(truth), rel=1e-6)
    planar = gdf.geometry.area.iloc[0]
    assert abs(planar - abs(truth)) / abs(truth) > 0.5  # planar units would be badly wrong here


def test_geodesic_areas_subtract_holes():
    outer = shapely.box(500_000, 40_000, 500_100, 40_100)
    holed = shapely.Polygon(outer.exterior.coords, [shapely.box(500_010, 40_010, 500_030, 40_030).exterior.coords])
    a = geodesic_areas_m2([outer, holed], CRS.from_epsg(32636))
    assert a[0] - a[1] == pytest.approx(400, rel=2e-3)
    assert a[0] == pytest.approx(10_000, rel=2e-3)


@pytest.mark.parametrize("as_float", [False, True])
def test_nodata_never_produces_polygons(synth, tmp_path, as_float):
    lab = np.zeros((64, 64), np.uint8)
    lab[5:25, 5:25] = 1  # fully nodata below
    lab[30:60, 30:60] = 1  # right half nodata below
    nod = np.zeros((64, 64), bool)
    nod[0:28, 0:28] = True
    nod[:, 45:] = True
    synth.write_probabilities(tmp_path / "p.tif", synth.probs_from_labels(lab), nodata_mask=nod, as_float=as_float)
    n = vectorize_prediction(tmp_path / "p.tif", tmp_path / "o.gpkg", classes=synth.CLASSES, boundary_class=2,
                             block_size=32)  # fmt: skip
    gdf = _read(tmp_path / "o.gpkg")
    assert n == 1
    assert gdf.geometry.iloc[0].area == pytest.approx(30 * 15 * RES * RES)


def test_min_area_filter_and_empty_output(synth, tmp_path):
    lab = np.zeros((64, 64), np.uint8)
    lab[2:6, 2:6] = 1  # 16 px = 4 m²
    lab[20:40, 20:40] = 1  # 400 px = 100 m²
    p = tmp_path / "p.tif"
    synth.write_probabilities(p, synth.probs_from_labels(lab))
    kw = dict(classes=synth.CLASSES, boundary_class=2)
    assert vectorize_prediction(p, tmp_path / "a.gpkg", min_area_m2=0, **kw) == 2
    assert vectorize_prediction(p, tmp_path / "b.gpkg", min_area_m2=10, **kw) == 1
    assert _read(tmp_path / "b.gpkg")["area_m2"].iloc[0] == pytest.approx(100, rel=1e-2)
    assert vectorize_prediction(p, tmp_path / "c.gpkg", min_area_m2=1e6, **kw) == 0
    empty = _read(tmp_path / "c.gpkg")
    assert len(empty) == 0 and empty.crs == CRS.from_epsg(32636)


def test_simplification_keeps_topology_and_holes(synth, tmp_path):
    yy, xx = np.mgrid[0:80, 0:80]
    lab = np.where((yy - 40) ** 2 + (xx - 40) ** 2 < 30**2, 1, 0).astype(np.uint8)
    lab[(yy - 40) ** 2 + (xx - 40) ** 2 < 8**2] = 0
    p = tmp_path / "p.tif"
    synth.write_probabilities(p, synth.probs_from_labels(lab))
    kw = dict(classes=synth.CLASSES, boundary_class=2, block_size=32)
    vectorize_prediction(p, tmp_path / "raw.gpkg", simplify_px=0, **kw)
    vectorize_prediction(p, tmp_path / "simple.gpkg", simplify_px=1.0, **kw)
    raw, simple = _read(tmp_path / "raw.gpkg").geometry.iloc[0], _read(tmp_path / "simple.gpkg").geometry.iloc[0]
    assert raw.area == pytest.approx(int(lab.sum()) * RES * RES)
    assert len(simple.exterior.coords) < len(raw.exterior.coords) / 2
    assert len(simple.interiors) == 1 and simple.is_valid
    assert simple.symmetric_difference(raw).area < 0.05 * raw.area


def test_read_prediction_classes_from_band_descriptions(synth, tmp_path):
    lab = np.zeros((16, 16), np.uint8)
    synth.write_probabilities(tmp_path / "probabilities.tif", synth.probs_from_labels(lab))
    classes, boundary = read_prediction_classes(tmp_path / "probabilities.tif")
    assert [c["name"] for c in classes] == ["background", "building", "boundary"]
    assert boundary == 2


def test_cli_vectorize(synth, tmp_path, capsys):
    lab = np.zeros((64, 64), np.uint8)
    lab[10:30, 10:30] = 1
    lab[10:30, 30:50] = 1
    lab[10:30, 29:31] = 2
    synth.write_probabilities(tmp_path / "probabilities.tif", synth.probs_from_labels(lab))
    out = tmp_path / "v.gpkg"
    rc = main(["vectorize", str(tmp_path / "probabilities.tif"), "--out", str(out), "--block-size", "32"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["polygons"] == 2 == len(_read(out))
    with rasterio.open(tmp_path / "probabilities.tif") as ds:
        assert _read(out).crs == ds.crs
    rc = main(["vectorize", str(tmp_path / "probabilities.tif"), "--out", str(out), "--threshold", "0.95"])
    assert rc == 0 and len(_read(out)) == 0  # 0.9 < 0.95: nothing is an object
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    rc = main(["vectorize", str(bad), "--out", str(tmp_path / "x.gpkg")])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.tif" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.gpkg").exists()


def _rows(path):
    """(wkb, class_id, score, area_m2) per output row, in file order."""
    gdf = _read(path)
    return list(zip(shapely.to_wkb(gdf.geometry.values), gdf["class_id"], gdf["score"], gdf["area_m2"], strict=True))


def test_streaming_edge_cases_same_rows_in_same_order_for_any_block_size(synth, tmp_path):
    lab = np.zeros((130, 90), np.uint8)
    lab[3:125, 40:47] = 1  # a tall object spanning 3+ block rows of 32 (and 5 of 24)
    lab[100:130, 5:20] = 1  # touches the last row
    lab[0:6, 60:80] = 1  # touches the first row
    lab[30:34, 0:90] = 1  # crosses every block column, right at a seam (32)
    lab[30:34, 47] = 2  # ... split from the tall object by a boundary line
    lab[60:62, 60:62] = 1  # tiny
    lab[62:70, 62:70] = 1  # touches the tiny one corner to corner
    _, ref, n_ref = _vec(synth, tmp_path, lab, block_size=4096, name="ref.gpkg")
    want = _rows(ref)
    assert n_ref == len(want) >= 5
    for bs in (8, 16, 24, 32, 33, 64):
        _, out, _ = _vec(synth, tmp_path, lab, block_size=bs, name=f"b{bs}.gpkg")
        assert _rows(out) == want, bs  # geometries, attributes and their order
    # the documented order: bottom edge first (north-up: the polygons' southern edges go south)
    miny = _read(ref).geometry.bounds["miny"].to_numpy()
    assert np.all(np.diff(miny) <= 0)


def test_block_size_does_not_change_order_with_regularisation(synth, tmp_path):
    rng = np.random.default_rng(5)
    lab = np.zeros((120, 120), np.uint8)
    for r in range(4, 110, 13):  # rows of touching buildings split by boundary lines, some across seams
        for c in range(4, 110, 27):
            h, w = rng.integers(7, 11), rng.integers(10, 24)
            lab[r : r + h, c : c + w] = 1
            lab[r : r + h, c + w // 2] = 2
    p = tmp_path / "p.tif"
    synth.write_probabilities(p, synth.probs_from_labels(lab))
    kw = dict(classes=synth.CLASSES, boundary_class=2, regularize=("building",), min_area_m2=0)
    vectorize_prediction(p, tmp_path / "ref.gpkg", block_size=4096, **kw)
    want = _rows(tmp_path / "ref.gpkg")
    assert len(want) > 20
    for bs in (16, 40):
        vectorize_prediction(p, tmp_path / f"b{bs}.gpkg", block_size=bs, **kw)
        assert _rows(tmp_path / f"b{bs}.gpkg") == want, bs


def _grid_of_objects(rows: int, cols: int, cell: int = 16) -> np.ndarray:
    lab = np.zeros((rows * cell, cols * cell), np.uint8)
    for r in range(rows):
        for c in range(cols):
            lab[r * cell + 3 : r * cell + 12, c * cell + 2 : c * cell + 10] = 1
            lab[r * cell + 3 : r * cell + 12, c * cell + 6] = 2  # two touching halves
    return lab


def test_streaming_memory_does_not_grow_with_object_count(synth, tmp_path):
    import tracemalloc

    peaks = {}
    for rows in (16, 160):  # 10x the objects (and the scene height), same width
        lab = _grid_of_objects(rows, 12)
        synth.write_probabilities(tmp_path / f"p{rows}.tif", synth.probs_from_labels(lab))
        tracemalloc.start()
        n = vectorize_prediction(tmp_path / f"p{rows}.tif", tmp_path / f"o{rows}.gpkg", classes=synth.CLASSES,
                                 boundary_class=2, block_size=64, style=False)  # fmt: skip
        peaks[rows] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert n == rows * 12 * 2
    assert peaks[160] < 1.5 * peaks[16], peaks


def test_local_areas_match_geodesic_areas():
    from geoseg.grid import local_areas_m2

    crs = CRS.from_epsg(32636)
    geoms = [shapely.box(500_000 + dx, 4_000_000, 500_000 + dx + s, 4_000_000 + s) for dx, s in
             [(0, 3), (5_000, 40), (90_000, 900), (400_000, 20_000)]]  # fmt: skip
    holed = shapely.Polygon(
        geoms[2].exterior.coords, [shapely.box(590_100, 4_000_100, 590_200, 4_000_300).exterior.coords]
    )
    geoms.append(holed)
    got = local_areas_m2(geoms, crs, origin=(33.0, 36.1))
    want = geodesic_areas_m2(geoms, crs)
    assert got == pytest.approx(want, rel=2e-7)
    assert got[-1] == pytest.approx(
        got[2] - geodesic_areas_m2([shapely.box(590_100, 4_000_100, 590_200, 4_000_300)], crs)[0], rel=1e-6
    )


def test_threads_do_not_change_the_output(synth, tmp_path):
    rng = np.random.default_rng(11)
    lab = np.zeros((140, 150), np.uint8)
    for _ in range(60):
        r, c = rng.integers(0, 130), rng.integers(0, 140)
        h, w = rng.integers(3, 25), rng.integers(3, 25)
        lab[r : r + h, c : c + w] = 1
        lab[r : r + h, c] = 2
    synth.write_probabilities(tmp_path / "probabilities.tif", synth.probs_from_labels(lab))
    rows = []
    for workers in (1, 3):
        out = tmp_path / f"w{workers}.gpkg"
        vectorize_prediction(tmp_path / "probabilities.tif", out, classes=synth.CLASSES, boundary_class=2,
                             block_size=32, workers=workers)  # fmt: skip
        rows.append(_rows(out))
    assert len(rows[0]) > 10
    assert rows[0] == rows[1]


@pytest.mark.parametrize("epsg", [32636, 4326, 3857])
def test_pixel_areas_match_geodesic_areas(epsg):
    from affine import Affine

    from geoseg.grid import area_step_px, local_areas_m2, pixel_areas_m2

    crs = CRS.from_epsg(epsg)
    if epsg == 4326:
        t, origin = Affine(1e-5, 0, 33.0, 0, -1e-5, 60.0), (33.01, 59.99)
    elif epsg == 3857:
        t, origin = Affine(0.6, 0, 3_670_000, 0, -0.6, 8_390_000), (33.0, 60.0)
    else:
        t, origin = Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000), (33.0, 36.1)
    # pixel-space polygons: small and mid-sized boxes, one with a hole, one L shape, one too large
    px = [shapely.box(10, 20, 13, 26), shapely.box(400, 900, 460, 930), shapely.box(5, 5, 3005, 2005)]
    hole = shapely.box(10, 10, 20, 30).exterior.coords
    px.append(shapely.Polygon(shapely.box(0, 0, 50, 50).exterior.coords, [hole]))
    px.append(shapely.Polygon([(100, 100), (140, 100), (140, 110), (110, 110), (110, 150), (100, 150)]))
    cen = shapely.get_coordinates(shapely.centroid(px))
    step = area_step_px(float(abs(t.a * t.e)) if epsg != 4326 else 0.6)
    got = pixel_areas_m2(px, cen, t, crs, origin, step)
    geo = shapely.transform(np.asarray(px, dtype=object), lambda xy: np.column_stack(t * (xy[:, 0], xy[:, 1])))
    # truth: the area of the pixels, i.e. of the polygon with edges straight in the raster CRS:
    # densified edges, every vertex projected to an equal-area plane
    dense = shapely.segmentize(geo, max_segment_length=abs(t.a) / 4)
    truth = local_areas_m2(dense, crs, origin)
    small = np.arange(len(px)) != 2  # (the 3000 x 2000 px box goes through local_areas_m2: ~1e-7)
    assert got[small] == pytest.approx(truth[small], rel=1e-8)
    assert got == pytest.approx(truth, rel=1e-7)
    big = shapely.area(np.asarray(px, dtype=object)) >= 1000  # (geodesic sums of m²: only good to ~1e-6)
    assert got[big] == pytest.approx(geodesic_areas_m2(dense[big], crs), rel=1e-7)
