"""Masks written by ``geoseg tile`` equal a whole-scene rasterize reference; dates, coverage, classes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from shapely.geometry import Polygon

from geoseg.errors import LabelsError
from geoseg.testing import pixel_box, write_labels, write_scene, xy_image
from geoseg.tile import TileConfig, run
from geoseg.tile.labels import label_validity, read_labels

from .conftest import ALL, SCENE_DATE, load_dataset, reference_mask


def _run(case: dict, out: str = "ds", **kw) -> Path:
    cfg = TileConfig(
        scenes=(str(case["scene"]),),
        labels=str(case["labels"]),
        out=str(case["tmp"] / out),
        tile_size=32,
        progress=False,
        **{**ALL, **kw},
    )
    run(cfg)
    return case["tmp"] / out


def _check_against_reference(out: Path, scene: Path, ref: np.ndarray, t: int = 32) -> int:
    idx, images, masks = load_dataset(out)
    with rasterio.open(scene) as ds:
        for i, row in idx.iterrows():
            r, c = int(row.row_off), int(row.col_off)
            np.testing.assert_array_equal(masks[i], ref[r : r + t, c : c + t], err_msg=f"tile {i} at {r},{c}")
            np.testing.assert_array_equal(images[i], ds.read(window=Window(c, r, t, t)))
    return len(idx)


@pytest.mark.parametrize("boundary", [0, 2])
def test_masks_equal_whole_scene_reference(small_case: dict, boundary: int) -> None:
    out = _run(small_case, boundary_width=boundary, max_label_age=2000)
    gdf = gpd.read_file(small_case["labels"])
    ref = reference_mask(small_case["scene"], gdf, ["house", "shed"], max_age=2000, boundary=boundary)
    assert (ref == 255).any() and (ref == 1).any() and (ref == 2).any()
    if boundary:
        assert (ref == 3).any()
    n = _check_against_reference(out, small_case["scene"], ref)
    assert n == (192 // 32) * (256 // 32)  # every tile taken: the check covers the whole scene


@pytest.mark.parametrize("stride", [12, 32 - 8])
def test_overlapping_tiles_with_stride_equal_reference(small_case: dict, stride: int) -> None:
    out = _run(small_case, boundary_width=1, max_label_age=2000, stride=stride)
    gdf = gpd.read_file(small_case["labels"])
    ref = reference_mask(small_case["scene"], gdf, ["house", "shed"], max_age=2000, boundary=1)
    idx, _, _ = load_dataset(out)
    # every tile origin on the stride lattice, padded at the right/bottom edges like the stride-free grid
    expect = {(r, c) for r in range(0, 192 - 32 + stride, stride) for c in range(0, 256 - 32 + stride, stride)}
    assert set(zip(idx.row_off.astype(int), idx.col_off.astype(int), strict=True)) == expect
    # tiles running past the scene edge read as nodata/ignore there: compare the inside part only
    inside = idx[(idx.row_off + 32 <= 192) & (idx.col_off + 32 <= 256)]
    assert len(inside) > 0
    _, _, masks = load_dataset(out)
    for i, row in inside.iterrows():
        r, c = int(row.row_off), int(row.col_off)
        np.testing.assert_array_equal(masks[i], ref[r : r + 32, c : c + 32], err_msg=f"tile {i} at {r},{c}")


def test_coverage_outside_is_ignore(small_case: dict) -> None:
    g = small_case["grid"]
    cov = write_labels(small_case["tmp"] / "cov.geojson", [pixel_box(g, 0, 0, 100, 150)], g.crs)
    out = _run(small_case, coverage=str(cov))
    ref = reference_mask(
        small_case["scene"], gpd.read_file(small_case["labels"]), ["house", "shed"], coverage=gpd.read_file(cov)
    )
    assert (ref[100:, :] == 255).all() and (ref[:, 150:] == 255).all()
    _check_against_reference(out, small_case["scene"], ref)


def test_polygon_dated_after_scene_is_ignore_not_background(tmp_path: Path) -> None:
    grid = write_scene(tmp_path / "s.tif", xy_image(64, 64, 1, "uint8"), date=SCENE_DATE, blocksize=32)
    later = pixel_box(grid, 4, 4, 10, 10)
    earlier = pixel_box(grid, 30, 30, 10, 10)
    overlap_new = pixel_box(grid, 44, 4, 10, 10)  # a valid label wins over an invalid one
    overlap_old = pixel_box(grid, 48, 4, 10, 4)
    stale = pixel_box(grid, 4, 40, 8, 8)
    write_labels(
        tmp_path / "l.gpkg",
        [later, earlier, overlap_new, overlap_old, stale],
        grid.crs,
        **{"class": ["a"] * 5, "date": ["2021-06-02", "2021-05-31", "2030-01-01", "2021-01-01", "2000-01-01"]},
    )
    cfg = TileConfig(
        scenes=(str(tmp_path / "s.tif"),),
        labels=str(tmp_path / "l.gpkg"),
        out=str(tmp_path / "o"),
        tile_size=64,
        progress=False,
        max_label_age=365,
        **ALL,
    )
    run(cfg)
    _, _, masks = load_dataset(tmp_path / "o")
    m = masks[0]
    assert (m[4:14, 4:14] == 255).all()  # one day after the scene
    assert (m[30:40, 30:40] == 1).all()  # one day before
    assert (m[4:12, 40:48] == 255).all()  # older than --max-label-age
    assert (m[48:58, 4:8] == 1).all() and (m[44:48, 4:14] == 255).all() and (m[48:54, 8:14] == 255).all()
    assert (m[20:28, 20:28] == 0).all()


def test_label_validity_rules() -> None:
    d = dt.date
    date = np.array([d(2021, 1, 1), d(2021, 7, 1), None, None, d(2010, 1, 1), None], object)
    vfrom = np.array([None, None, d(2021, 1, 1), None, None, d(2021, 6, 2)], object)
    vto = np.array([None, None, d(2021, 12, 31), None, None, None], object)
    keep = label_validity(date, vfrom, vto, SCENE_DATE, max_age_days=3650, undated="keep")
    assert keep.tolist() == [True, False, True, True, False, False]
    drop = label_validity(date, vfrom, vto, SCENE_DATE, max_age_days=None, undated="drop")
    assert drop.tolist() == [True, False, True, False, True, False]


def test_class_ids_sorted_or_as_listed(tmp_path: Path) -> None:
    grid = write_scene(tmp_path / "s.tif", xy_image(64, 64, 1, "uint8"))
    geoms = [pixel_box(grid, 0, 0, 5, 5), pixel_box(grid, 10, 10, 5, 5), pixel_box(grid, 20, 20, 5, 5)]
    p = write_labels(tmp_path / "l.geojson", geoms, grid.crs, **{"class": ["zebra", "ant", "moth"]})
    lab = read_labels(p)
    assert lab.class_names == ("ant", "moth", "zebra")
    assert lab.gdf["class_id"].tolist() == [3, 1, 2]
    lab = read_labels(p, classes=["zebra", "moth", "ant"])
    assert lab.gdf["class_id"].tolist() == [1, 3, 2]
    with pytest.raises(LabelsError, match="ant"):
        read_labels(p, classes=["zebra", "moth"])
    single = read_labels(p, class_field=None, classes=None, date_field="nope")
    assert single.undated == 3
    with pytest.raises(LabelsError, match="no field 'kind'"):
        read_labels(p, class_field="kind")


def test_repair_and_explode_counted(tmp_path: Path) -> None:
    grid = write_scene(tmp_path / "s.tif", xy_image(64, 64, 1, "uint8"))
    x0, y0 = grid.transform @ (0, 0)
    x1, y1 = grid.transform @ (20, 20)
    bowtie = Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
    multi = pixel_box(grid, 30, 30, 4, 4).union(pixel_box(grid, 40, 40, 4, 4))
    p = write_labels(tmp_path / "l.gpkg", [bowtie, multi], grid.crs, **{"class": ["a", "b"]})
    lab = read_labels(p)
    assert lab.repaired == 1
    assert lab.features == 2
    assert len(lab.gdf) == 4  # bowtie -> 2 triangles, multipolygon -> 2 boxes


def test_tiles_gpkg_carries_a_style_by_kind(small_case: dict) -> None:
    from geoseg.qgis import read_gpkg_style

    out = _run(small_case)
    qml = read_gpkg_style(out / "tiles.gpkg", "tiles")
    assert qml is not None and 'attr="kind"' in qml
    assert all(f'value="{k}"' in qml for k in ("positive", "hard_negative", "easy_negative"))
