"""Scenes of every kind: several CRSs, nodata / internal masks, 4 bands, float, striped, label formats,
band statistics, and identical output for 1 and 2 workers or an existing scheduler."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import zarr
from affine import Affine
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from geoseg.grid import Grid
from geoseg.testing import pixel_box, write_labels, write_scene, xy_image
from geoseg.tile import TileConfig, run

from .conftest import ALL, SCENE_DATE, load_dataset, random_labels, reference_mask


def _tile(tmp: Path, scenes: list[Path], labels: Path, out: str = "ds", **kw) -> Path:
    cfg = TileConfig(
        scenes=tuple(map(str, scenes)),
        labels=str(labels),
        out=str(tmp / out),
        progress=False,
        **{**ALL, "tile_size": 32, **kw},
    )
    run(cfg)
    return tmp / out


def _check(out: Path, scene_refs: dict[str, tuple[Path, np.ndarray]], t: int = 32) -> pd.Series:
    idx, images, masks = load_dataset(out)
    for i, row in idx.iterrows():
        path, ref = scene_refs[row.scene]
        r, c = int(row.row_off), int(row.col_off)
        with rasterio.open(path) as ds:
            data = ds.read(window=Window(c, r, t, t), boundless=True, fill_value=ds.nodata or 0)
        np.testing.assert_array_equal(images[i], data, err_msg=f"{row.scene} tile {r},{c}")
        expect = np.full((t, t), 255, np.uint8)
        part = ref[r : r + t, c : c + t]
        expect[: part.shape[0], : part.shape[1]] = part
        np.testing.assert_array_equal(masks[i], expect, err_msg=f"{row.scene} mask {r},{c}")
    return idx.scene.value_counts()


def test_several_crss_labels_in_a_third(tmp_path: Path) -> None:
    a = tmp_path / "a.tif"
    ga = write_scene(a, xy_image(160, 192, 3, "uint16"), crs="EPSG:32636", date=SCENE_DATE)
    # scene b: Web Mercator over the same place, date from the file name
    bb = transform_bounds(ga.crs, "EPSG:3857", *ga.bounds)
    gb = Grid.from_bounds("EPSG:3857", bb, 0.6)
    b = tmp_path / "b_20210601.tif"
    write_scene(b, xy_image(gb.height, gb.width, 3, "uint16"), crs="EPSG:3857", origin=(bb[0], bb[3]), res=0.6)
    lab = random_labels(ga, 50, seed=3)
    labels = gpd.GeoDataFrame({"class": lab["class"], "date": lab["date"]}, geometry=lab["geoms"], crs=ga.crs)
    p = tmp_path / "l.geojson"
    labels.to_crs("EPSG:4326").to_file(p)
    out = _tile(tmp_path, [a, b], p, boundary_width=1)
    src = gpd.read_file(p)
    refs = {n: (s, reference_mask(s, src, ["house", "shed"], boundary=1)) for n, s in (("a.tif", a), (b.name, b))}
    counts = _check(out, refs)
    assert counts["a.tif"] > 0 and counts[b.name] > 0
    meta = json.loads((out / "dataset.json").read_text())
    assert [s["date"] for s in meta["scenes"]] == ["2021-06-01", "2021-06-01"]
    idx = gpd.read_file(out / "tiles.gpkg", layer="tiles")
    assert idx.crs.to_epsg() == 32636 and rasterio.crs.CRS.from_wkt(meta["tiles_crs"]).to_epsg() == 32636
    # b's tile polygons, taken back to b's CRS, match their windows
    row = idx[idx.scene == b.name].iloc[0]
    back = gpd.GeoSeries([row.geometry], crs=idx.crs).to_crs("EPSG:3857").iloc[0]
    win_b = Grid(gb.crs, Affine(0.6, 0, bb[0], 0, -0.6, bb[3]), gb.width, gb.height).window_bounds(
        Window(row.col_off, row.row_off, 32, 32)
    )
    np.testing.assert_allclose(back.bounds, win_b, atol=1e-3)


@pytest.mark.parametrize("kind", ["nodata", "internal_mask"])
def test_uint16_nodata_and_internal_mask(tmp_path: Path, kind: str) -> None:
    img = xy_image(128, 160, 2, "uint16")
    valid = np.ones((128, 160), bool)
    valid[:40, :50] = False
    valid[100:, 90:] = False
    s = tmp_path / "s.tif"
    if kind == "nodata":
        img[:, ~valid] = 0
        g = write_scene(s, img, nodata=0, date=SCENE_DATE)
    else:
        g = write_scene(s, img, mask=valid, date=SCENE_DATE)
    lab = random_labels(g, 30, seed=1)
    p = write_labels(tmp_path / "l.gpkg", lab["geoms"], g.crs, **{"class": lab["class"], "date": lab["date"]})
    out = _tile(tmp_path, [s], p)
    ref = reference_mask(s, gpd.read_file(p), ["house", "shed"])
    assert (ref[~valid] == 255).all()
    _check(out, {"s.tif": (s, ref)})
    idx, _, masks = load_dataset(out)
    first = idx[(idx.row_off == 0) & (idx.col_off == 0)].iloc[0]
    assert first.nodata_fraction == 1.0 and (masks[int(first["index"])] == 255).all()
    inside = idx[(idx.row_off == 64) & (idx.col_off == 64)].iloc[0]
    assert inside.nodata_fraction == 0.0
    corner = idx[(idx.row_off == 96) & (idx.col_off == 64)].iloc[0]  # rows 96..128 x cols 64..96; 28x6 invalid
    assert corner.nodata_fraction == pytest.approx(28 * 6 / 32**2)
    # default filter: tiles with more than half nodata/ignore are skipped
    out2 = _tile(tmp_path, [s], p, out="ds2", max_unusable_fraction=0.5)
    idx2, _, _ = load_dataset(out2)
    assert len(idx2) > 0 and (idx2.unusable_fraction <= 0.5).all() and (idx2.nodata_fraction < 1).all()


def test_four_band_float_striped_and_band_stats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = (rng.normal(100, 20, (4, 96, 128))).astype("float32")
    img[:, :10, :10] = np.nan
    s = tmp_path / "s.tif"
    g = write_scene(s, img, tiled=False, nodata=float("nan"), date=SCENE_DATE)
    with rasterio.open(s) as ds:
        assert not ds.is_tiled and ds.count == 4
    lab = random_labels(g, 20, seed=2)
    p = write_labels(tmp_path / "l.parquet", lab["geoms"], g.crs, **{"class": lab["class"], "date": lab["date"]})
    out = _tile(tmp_path, [s], p)
    ref = reference_mask(s, gpd.read_parquet(p), ["house", "shed"])
    idx, images, _ = load_dataset(out)
    for i, row in idx.iterrows():
        r, c = int(row.row_off), int(row.col_off)
        np.testing.assert_array_equal(images[i], img[:, r : r + 32, c : c + 32])
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["in_channels"] == 4 and meta["dtype"] == "float32"
    px = images.transpose(1, 0, 2, 3).reshape(4, -1).astype(np.float64)
    px = px[:, ~np.isnan(px).any(axis=0)]
    for b, st in enumerate(meta["bands"]):
        assert st["mean"] == pytest.approx(px[b].mean(), rel=1e-9)
        assert st["std"] == pytest.approx(px[b].std(), rel=1e-9)
        assert st["p2"] == pytest.approx(np.percentile(px[b], 2), abs=3.0)  # sampled percentile
        assert st["p98"] == pytest.approx(np.percentile(px[b], 98), abs=3.0)
    assert (ref[:10, :10] == 255).all()


def test_uint8_band_stats_exact(small_case: dict) -> None:
    out = _tile(
        small_case["tmp"],
        [small_case["scene"]],
        small_case["labels"],
        min_positive_fraction=0.02,
        negative_ratio=0.5,
        max_unusable_fraction=0.5,
    )
    meta = json.loads((out / "dataset.json").read_text())
    _, images, _ = load_dataset(out)
    px = images.transpose(1, 0, 2, 3).reshape(3, -1)
    for b, st in enumerate(meta["bands"]):
        assert st["mean"] == pytest.approx(px[b].mean(), rel=1e-12)
        assert st["std"] == pytest.approx(px[b].std(), rel=1e-9)
        assert st["p2"] == np.percentile(px[b], 2, method="inverted_cdf")
        assert st["p98"] == np.percentile(px[b], 98, method="inverted_cdf")


def test_label_formats_give_the_same_masks(small_case: dict) -> None:
    gdf = gpd.read_file(small_case["labels"])
    masks = {}
    for suffix in (".gpkg", ".geojson", ".shp", ".parquet"):
        p = small_case["tmp"] / f"fmt{suffix}"
        gdf.to_parquet(p) if suffix == ".parquet" else gdf.to_file(p)
        out = _tile(small_case["tmp"], [small_case["scene"]], p, out=f"o{suffix}")
        masks[suffix] = load_dataset(out)[2]
    for suffix, m in masks.items():
        np.testing.assert_array_equal(m, masks[".gpkg"], err_msg=suffix)
    assert (masks[".gpkg"] == 1).any()


def _snapshot(out: Path) -> tuple:
    g = zarr.open_group(str(out / "tiles.zarr"), mode="r")
    idx = gpd.read_file(out / "tiles.gpkg", layer="tiles")
    meta = json.loads((out / "dataset.json").read_text())
    for k in ("created", "config"):
        meta.pop(k)
    return g["images"][:], g["masks"][:], idx, meta


def _same(a: tuple, b: tuple) -> None:
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    pd.testing.assert_frame_equal(a[2].drop(columns="geometry"), b[2].drop(columns="geometry"))
    assert a[2].geometry.equals(b[2].geometry)
    assert a[3] == b[3]


def test_one_and_two_workers_and_scheduler_identical(small_case: dict) -> None:
    from dask.distributed import LocalCluster

    kw = {
        "tile_size": 16,
        "val_fraction": 0.3,
        "val_block_tiles": 4,
        "negative_ratio": 1.0,
        "max_unusable_fraction": 0.5,
        "min_positive_fraction": 0.01,
        "boundary_width": 1,
        "seed": 3,
    }
    tmp = small_case["tmp"]
    one = _snapshot(_tile(tmp, [small_case["scene"]], small_case["labels"], out="w1", workers=1, **kw))
    two = _snapshot(_tile(tmp, [small_case["scene"]], small_case["labels"], out="w2", workers=2, processes=False, **kw))
    _same(one, two)
    assert len(one[2]) > 20 and set(one[2].kind) == {"positive", "hard_negative", "easy_negative"}
    assert set(one[2].split) == {"train", "val"}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        sch = _snapshot(
            _tile(tmp, [small_case["scene"]], small_case["labels"], out="ws", scheduler=cluster.scheduler_address, **kw)
        )
    _same(one, sch)


def test_two_thread_workers_write_the_same_bytes(small_case: dict) -> None:
    """--workers 2 (thread pool, tasks finishing in any order) writes byte-identical files to --workers 1."""
    kw = {"tile_size": 16, "val_fraction": 0.3, "val_block_tiles": 4, "negative_ratio": 1.0, "boundary_width": 1}
    tmp = small_case["tmp"]
    outs = [_tile(tmp, [small_case["scene"]], small_case["labels"], out=f"b{w}", workers=w, **kw) for w in (1, 2)]
    files = [{p.relative_to(o): p.read_bytes() for p in (o / "tiles.zarr").rglob("*") if p.is_file()} for o in outs]
    assert len(files[0]) > 40 and files[0] == files[1]
    metas = [json.loads((o / "dataset.json").read_text()) for o in outs]
    assert metas[0].pop("config")["workers"] == 1 and metas[1].pop("config")["workers"] == 2
    for m in metas:
        m.pop("created")
    assert metas[0] == metas[1]
    idx = [gpd.read_file(o / "tiles.gpkg", layer="tiles") for o in outs]
    pd.testing.assert_frame_equal(idx[0], idx[1])
    assert (load_dataset(outs[0])[2] == 3).any()  # the boundary class is in the masks


def test_boundary_class_recorded(small_case: dict) -> None:
    out = _tile(small_case["tmp"], [small_case["scene"]], small_case["labels"], boundary_width=1)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["boundary_class"] == 3
    assert [c["name"] for c in meta["classes"]] == ["background", "house", "shed", "boundary"]
    assert meta["ignore_index"] == 255
    _, _, masks = load_dataset(out)
    assert (masks == 3).any()
    assert meta["pixel_counts"]["3"] == int((masks == 3).sum())


def test_touching_polygons_are_separated_by_boundary(tmp_path: Path) -> None:
    g = write_scene(tmp_path / "s.tif", xy_image(32, 32, 1, "uint8"))
    left, right = pixel_box(g, 8, 4, 10, 10), pixel_box(g, 8, 14, 10, 10)
    p = write_labels(tmp_path / "l.gpkg", [left, right], g.crs, **{"class": ["a", "a"]})
    out = _tile(tmp_path, [tmp_path / "s.tif"], p, boundary_width=1)
    m = load_dataset(out)[2][0]
    assert (m[8:18, 13] == 2).all() and (m[8:18, 14] == 2).all()  # both sides of the shared edge
    assert (m[10:16, 6:12] == 1).all() and (m[10:16, 16:22] == 1).all()  # interiors stay class 1
    assert (m[8, 4:24] == 2).all() and (m[7, 4:13] == 0).all() and (m[7, 15:24] == 0).all()  # outline inside
    assert (m[7, 13:15] == 2).all()  # close contact: the background pixels touching both ends of the seam


def test_narrow_gap_between_objects_is_close_contact(tmp_path: Path) -> None:
    g = write_scene(tmp_path / "s.tif", xy_image(32, 32, 1, "uint8"))
    left, right = pixel_box(g, 8, 4, 10, 10), pixel_box(g, 8, 16, 10, 10)  # columns 14-15 between them
    far = pixel_box(g, 24, 4, 6, 6)  # 6 px below `left`: no contact with it
    p = write_labels(tmp_path / "l.gpkg", [left, right, far], g.crs, **{"class": ["a", "a", "a"]})
    out = _tile(tmp_path, [tmp_path / "s.tif"], p, boundary_width=2)
    m = load_dataset(out)[2][0]
    assert (m[8:18, 14:16] == 2).all()  # the 2-px gap: within 2 px of both neighbours
    assert (m[19:23, 4:10] == 0).all()  # between left and far: background (too far apart)


def test_default_boundary_width_comes_from_object_sizes(tmp_path: Path) -> None:
    g = write_scene(tmp_path / "s.tif", xy_image(64, 64, 1, "uint8"))
    big = [pixel_box(g, 4 + 30 * (i // 2), 4 + 30 * (i % 2), 24, 24) for i in range(4)]  # 576 px each
    small = [pixel_box(g, 4 + 16 * (i // 4), 4 + 16 * (i % 4), 8, 8) for i in range(16)]  # 64 px each
    tiny = [pixel_box(g, 4 + 8 * (i // 8), 4 + 8 * (i % 8), 4, 4) for i in range(64)]  # 16 px each
    for name, geoms, width in (("big", big, 2), ("small", small, 1), ("tiny", tiny, 0)):
        p = write_labels(tmp_path / f"{name}.gpkg", geoms, g.crs, **{"class": ["a"] * len(geoms)})
        cfg = TileConfig(scenes=(str(tmp_path / "s.tif"),), labels=str(p), out=str(tmp_path / name), tile_size=32,
                         progress=False, **{**ALL, "boundary_width": None})  # fmt: skip
        run(cfg)
        info = json.loads((tmp_path / name / "dataset.json").read_text())
        assert info["boundary"] == {**info["boundary"], "width_px": width, "source": "auto"}, name
        assert (info["boundary_class"] is not None) == (width > 0)
        assert info["objects"]["per_class"]["1"]["count"] == len(geoms)


@pytest.mark.parametrize("codec", ["blosc", "zstd"])
def test_chunk_writer_round_trips_through_zarr(tmp_path: Path, codec: str) -> None:
    from zarr.codecs import BloscCodec, ZstdCodec

    from geoseg.tile.work import ChunkWriter

    comp = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle") if codec == "blosc" else ZstdCodec(level=1)
    g = zarr.open_group(str(tmp_path / "t.zarr"), mode="w")
    g.create_array("images", shape=(5, 2, 8, 8), chunks=(1, 2, 8, 8), dtype="int16", compressors=comp)
    w = ChunkWriter(str(tmp_path / "t.zarr"), "images")
    assert (w.codec is not None) == (codec == "blosc")
    data = np.arange(3 * 2 * 8 * 8, dtype=np.int16).reshape(3, 2, 8, 8) - 100
    w.write(1, data)
    back = zarr.open_array(store=str(tmp_path / "t.zarr" / "images"), mode="r")[:]
    np.testing.assert_array_equal(back[1:4], data)
    assert (back[0] == 0).all() and (back[4] == 0).all()


def test_int16_with_negative_values_and_nodata(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(-3000, 3000, (2, 96, 96)).astype("int16")
    img[:, :20, :] = -32768
    s = tmp_path / "s.tif"
    g = write_scene(s, img, nodata=-32768, date=SCENE_DATE)
    lab = random_labels(g, 15, seed=4)
    p = write_labels(tmp_path / "l.gpkg", lab["geoms"], g.crs, **{"class": lab["class"], "date": lab["date"]})
    out = _tile(tmp_path, [s], p)
    ref = reference_mask(s, gpd.read_file(p), ["house", "shed"])
    _check(out, {"s.tif": (s, ref)})
    meta = json.loads((out / "dataset.json").read_text())
    _, images, _ = load_dataset(out)
    assert meta["dtype"] == "int16"
    px = images.transpose(1, 0, 2, 3).reshape(2, -1)
    px = px[:, (px != -32768).all(axis=0)]
    for b, st in enumerate(meta["bands"]):
        assert st["mean"] == pytest.approx(px[b].mean(), rel=1e-12)
        assert st["p2"] == np.percentile(px[b], 2, method="inverted_cdf") < 0


def test_two_workers_read_labels_while_the_scan_starts_and_raise_their_errors(small_case: dict) -> None:
    """--workers 2 (threads) starts decoding before the labels are read: an input error is still the
    one-line error of --workers 1, nothing is left in --out, and a good run leaves no stash behind."""
    from geoseg.errors import NoOverlapError

    tmp, scene = small_case["tmp"], small_case["scene"]
    g = small_case["grid"]
    far = write_labels(tmp / "far.gpkg", [pixel_box(g, -5000, -5000, 8, 8)], g.crs, **{"class": ["house"]})
    for w in (1, 2):
        with pytest.raises(NoOverlapError, match="labels do not overlap any scene"):
            _tile(tmp, [scene], far, out=f"bad{w}", workers=w, tile_size=16)
        assert not (tmp / f"bad{w}").exists()
    out = _tile(tmp, [scene], small_case["labels"], out="good", workers=2, tile_size=16, boundary_width=1)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "tiles.gpkg", "tiles.qml", "tiles.zarr"]
