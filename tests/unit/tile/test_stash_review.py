"""Review of the scan -> stash -> extract path of ``geoseg tile`` against a straightforward computation.

Every test runs :func:`geoseg.tile.run.run` with a small ``CHUNK_BYTES`` so scenes split into several
scan chunks (several lattice phases each with ``--stride`` < ``--tile-size``), positives (stashed) and
negatives (read again) sit in the same extract task, and compares what was written with:
each selected tile's window read by :func:`geoseg.io.rasters.read_window` (cast to the dataset dtype),
its mask cropped from the whole-scene reference of ``conftest.reference_mask`` (255 outside the scene and
on invalid pixels), the fractions and pixel counts recomputed from those, and ``--workers 2`` written
byte for byte as ``--workers 1``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.warp import transform as warp_xy
from rasterio.windows import Window
from shapely.geometry import Polygon

from geoseg.io.rasters import read_window
from geoseg.testing import pixel_box, write_labels, write_scene, xy_image
from geoseg.tile import TileConfig, run

from .conftest import SCENE_DATE, load_dataset, random_labels, reference_mask

RUN = importlib.import_module("geoseg.tile.run")  # (``geoseg.tile.run`` the attribute is the function)


def _small_chunks(monkeypatch: pytest.MonkeyPatch, t: int, count: int, itemsize: int, tiles: int = 2) -> None:
    """Scan chunks of ``tiles`` x ``tiles`` tiles (before block alignment)."""
    monkeypatch.setattr(RUN, "CHUNK_BYTES", count * itemsize * (tiles * t) ** 2)


def _tile(tmp: Path, scenes: list[Path], labels: Path, out: str, **kw: Any) -> Path:
    opts: dict[str, Any] = {"val_fraction": 0.0, "max_unusable_fraction": 1.0, "min_positive_fraction": 0.0,
                            "negative_ratio": 100.0, "boundary_width": 0, "tile_size": 16}  # fmt: skip
    run(TileConfig(scenes=tuple(map(str, scenes)), labels=str(labels), out=str(tmp / out), progress=False,
                   **{**opts, **kw}))  # fmt: skip
    return tmp / out


def _check_straightforward(
    out: Path, labels: Path, *, boundary: int = 0, coverage: gpd.GeoDataFrame | None = None
) -> gpd.GeoDataFrame:
    """Assert ``out`` holds what reading and rasterizing each selected tile on its own gives; returns the index."""
    meta = json.loads((out / "dataset.json").read_text())
    t, dtype = meta["tile_size"], np.dtype(meta["dtype"])
    idx, images, masks = load_dataset(out)
    assert len(idx) == len(images) == len(masks) and (idx["index"].to_numpy() == np.arange(len(idx))).all()
    src = gpd.read_file(labels)
    classes = [c["name"] for c in meta["classes"] if 0 < c["id"] < 255 and c["id"] != meta["boundary_class"]]
    refs: dict[str, np.ndarray] = {}
    valid_px = {n: 0 for n in range(images.shape[1])}
    sums = np.zeros((images.shape[1], 2))
    for i, row in idx.iterrows():
        path = row.scene_path
        with rasterio.open(path) as ds:
            if path not in refs:
                ref = reference_mask(Path(path), src, classes, boundary=boundary, coverage=coverage)
                ref[~read_window(ds, Window(0, 0, ds.width, ds.height))[1]] = 255  # (NaN too)
                refs[path] = ref
            r, c = int(row.row_off), int(row.col_off)
            data, valid = read_window(ds, Window(c, r, t, t))
        what = f"{Path(path).name} tile {r},{c} ({row.kind})"
        assert images[i].dtype == dtype
        assert images[i].tobytes() == data.astype(dtype).tobytes(), f"image of {what}"
        expect = np.full((t, t), 255, np.uint8)
        part = refs[path][max(r, 0) : r + t, max(c, 0) : c + t]
        expect[: part.shape[0], : part.shape[1]] = part
        np.testing.assert_array_equal(masks[i], expect, err_msg=f"mask of {what}")
        m = masks[i]
        assert row.label_fraction == pytest.approx(np.count_nonzero((m > 0) & (m < 255)) / t**2, abs=1e-12), what
        assert row.unusable_fraction == pytest.approx(np.count_nonzero(m == 255) / t**2, abs=1e-12), what
        assert row.nodata_fraction == pytest.approx(1 - np.count_nonzero(valid) / t**2, abs=1e-12), what
        px = data.astype(dtype)[:, valid].astype(np.float64)
        for b in valid_px:
            valid_px[b] += px.shape[1]
        sums[:, 0] += px.sum(axis=1)
        sums[:, 1] += (px * px).sum(axis=1)
    counts = np.bincount(masks.ravel(), minlength=256)
    assert {k: v for k, v in meta["pixel_counts"].items()} == {k: int(counts[int(k)]) for k in meta["pixel_counts"]}
    assert sum(meta["pixel_counts"].values()) == masks.size
    for b, st in enumerate(meta["bands"]):
        n = valid_px[b]
        mean = sums[b, 0] / n
        assert st["mean"] == pytest.approx(mean, rel=1e-9, abs=1e-9), f"band {b} mean"
        assert st["std"] == pytest.approx(np.sqrt(max(sums[b, 1] / n - mean**2, 0)), rel=1e-6, abs=1e-6)
    return idx


def _same_bytes(a: Path, b: Path) -> None:
    """``a`` and ``b`` (two outputs of one config) hold the same zarr chunk files, index rows and dataset.json."""
    za, zb = sorted((a / "tiles.zarr").rglob("*")), sorted((b / "tiles.zarr").rglob("*"))
    assert [p.relative_to(a) for p in za] == [p.relative_to(b) for p in zb]
    for pa, pb in zip(za, zb, strict=True):
        if pa.is_file() and pa.name != "zarr.json":
            assert pa.read_bytes() == pb.read_bytes(), pa.relative_to(a)
    ia, ib = (gpd.read_file(p / "tiles.gpkg", layer="tiles") for p in (a, b))
    assert ia.drop(columns="geometry").equals(ib.drop(columns="geometry"))
    assert ia.geometry.to_wkb().equals(ib.geometry.to_wkb())
    ja, jb = (json.loads((p / "dataset.json").read_text()) for p in (a, b))
    for j in (ja, jb):
        j.pop("created", None)
        j["config"].pop("workers")
        j["config"].pop("out")
    assert ja == jb


def _with_holes(img: np.ndarray, seed: int) -> np.ndarray:
    """Valid-pixel mask with a block and scattered pixels missing."""
    rng = np.random.default_rng(seed)
    _, h, w = img.shape
    valid = rng.random((h, w)) > 0.02
    valid[h // 3 : h // 3 + 13, w // 2 : w // 2 + 21] = False
    return valid


def _labels(tmp: Path, grid: Any, n: int, seed: int) -> Path:
    """``conftest.random_labels`` (some reach past the scene's right and bottom edges) written to a GeoPackage."""
    lab = random_labels(grid, n, seed=seed)
    return write_labels(tmp / "l.gpkg", lab["geoms"], grid.crs, **{"class": lab["class"], "date": lab["date"]})


# --------------------------------------------------------------------------------------------
def test_uint16_two_crss_striped_overlap_match_straightforward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """uint16, nodata in one scene and an internal mask in the other (striped, Web Mercator), sizes not a
    multiple of the tile, stride 11 < 16 (several phases per chunk), half the negatives dropped."""
    _small_chunks(monkeypatch, 16, 3, 2)
    a_img = xy_image(74, 91, 3, "uint16")
    va = _with_holes(a_img, 0)
    a_img[:, ~va] = 0
    a = tmp_path / "a.tif"
    ga = write_scene(a, a_img, nodata=0, blocksize=16, date=SCENE_DATE)
    x, y = warp_xy(ga.crs, "EPSG:3857", [ga.bounds[0] - 3.3], [ga.bounds[3] + 2.1])
    b_img = xy_image(70, 85, 3, "uint16") + 1000  # (covers scene a)
    b = tmp_path / "b.tif"
    write_scene(b, b_img, crs="EPSG:3857", origin=(x[0], y[0]), res=0.6, tiled=False, mask=_with_holes(b_img, 1),
                date=SCENE_DATE)  # fmt: skip
    labels = _labels(tmp_path, ga, 45, seed=4)
    kw = {"stride": 11, "boundary_width": 2, "negative_ratio": 0.5}
    out1 = _tile(tmp_path, [a, b], labels, "w1", **kw)
    idx = _check_straightforward(out1, labels, boundary=2)
    assert set(idx.scene) == {"a.tif", "b.tif"}
    assert {"positive", "easy_negative"} <= set(idx.kind) or {"positive", "hard_negative"} <= set(idx.kind)
    assert (idx.row_off % 11 == 0).all() and (idx.col_off % 11 == 0).all()
    assert len(set(zip(idx.row_off % 16, idx.col_off % 16, strict=True))) > 4  # several lattice phases
    # extract tasks (scene, 32-px chunk): several, and some write stashed positives next to negatives read again
    kinds = idx.groupby([idx.scene, idx.row_off // 32, idx.col_off // 32])["kind"].agg(set)
    assert len(kinds) > 8 and any("positive" in k and len(k) > 1 for k in kinds)
    _same_bytes(out1, _tile(tmp_path, [a, b], labels, "w2", workers=2, **kw))


def test_float_nan_four_bands_coverage_match_straightforward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 with NaN (nodata NaN, NaN in one band only too), 4 bands, 16-px blocks, --coverage."""
    _small_chunks(monkeypatch, 16, 4, 4)
    rng = np.random.default_rng(2)
    img = rng.normal(100, 20, (4, 77, 69)).astype("float32")
    valid = _with_holes(img, 2)
    img[:, ~valid] = np.nan
    img[2, 5:9, 40:60] = np.nan  # one band only: the pixel is invalid
    s = tmp_path / "s.tif"
    g = write_scene(s, img, nodata=float("nan"), blocksize=16, date=SCENE_DATE)
    labels = _labels(tmp_path, g, 30, seed=5)
    cov = gpd.GeoDataFrame(geometry=[pixel_box(g, 3, 2, 60, 50)], crs=g.crs)
    cov_path = tmp_path / "cov.gpkg"
    cov.to_file(cov_path)
    kw = {"stride": 12, "coverage": str(cov_path), "boundary_width": 1, "negative_ratio": 1.0}
    out1 = _tile(tmp_path, [s], labels, "w1", **kw)
    idx = _check_straightforward(out1, labels, boundary=1, coverage=cov)
    assert (idx.nodata_fraction > 0).any() and (idx.nodata_fraction < 1).any()
    _same_bytes(out1, _tile(tmp_path, [s], labels, "w2", workers=2, **kw))


def _write_rgba(path: Path, data: np.ndarray, alpha: np.ndarray) -> None:
    """A uint8 RGBA GeoTIFF (alpha band: mask flags ``per_dataset | alpha`` on the colour bands)."""
    _, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=4, dtype="uint8", crs="EPSG:32636",
                       transform=Affine(0.5, 0, 500_004.0, 0, -0.5, 39_998.0), photometric="RGB", alpha="YES",
                       tiled=True, blockxsize=32, blockysize=32) as ds:  # fmt: skip
        ds.write(np.concatenate([data, alpha[None].astype(np.uint8) * 255]))
        ds.update_tags(TIFFTAG_DATETIME=SCENE_DATE.strftime("%Y:%m:%d 00:00:00"))


def test_int16_and_rgba_uint8_scenes_match_straightforward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An int16 scene (negative values, nodata -9999) and a uint8 RGBA one: dataset dtype int16, the alpha band
    is a band too (4 bands in both), edge tiles padded, the boundary class off."""
    _small_chunks(monkeypatch, 16, 4, 2, tiles=3)
    a_img = (xy_image(70, 85, 4, "uint16").astype(np.int32) * 7 - 4000).astype(np.int16)
    va = _with_holes(a_img, 3)
    a_img[:, ~va] = -9999
    a = tmp_path / "a.tif"
    ga = write_scene(a, a_img, nodata=-9999, blocksize=32, date=SCENE_DATE)
    b = tmp_path / "b.tif"
    rgb = xy_image(58, 61, 3, "uint8")
    _write_rgba(b, rgb, _with_holes(rgb, 4))
    labels = _labels(tmp_path, ga, 35, seed=6)
    out1 = _tile(tmp_path, [a, b], labels, "w1", negative_ratio=0.7)
    idx = _check_straightforward(out1, labels)
    assert json.loads((out1 / "dataset.json").read_text())["dtype"] == "int16"
    assert set(idx.scene) == {"a.tif", "b.tif"}
    _same_bytes(out1, _tile(tmp_path, [a, b], labels, "w2", negative_ratio=0.7, workers=2))


def _quad(grid: Any, r: float, c: float, h: float, w: float) -> Polygon:
    """The true quadrilateral of pixels ``[r, r + h) x [c, c + w)`` (rotated grids too)."""
    return Polygon([grid.transform * p for p in ((c, r), (c + w, r), (c + w, r + h), (c, r + h))])


def test_rotated_scene_boundary_reaches_labels_at_chunk_corners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 45-degree rotated scene, boundary width 8, one tile per chunk: the chunk's labels must include every
    polygon within 8 pixels (Chebyshev) of it. The padded window's corners lie 8 * sqrt(2) pixels out, beyond
    a bounding box padded by (8 + 2) pixel sizes, so a polygon there was missed: a close-contact gap pixel
    at the chunk corner came out background."""
    monkeypatch.setattr(RUN, "CHUNK_BYTES", 1)  # one tile per chunk
    tr = Affine.translation(500_000, 40_000) * Affine.rotation(45) * Affine.scale(0.5, -0.5)
    s = tmp_path / "s.tif"
    g = write_scene(s, xy_image(64, 64, 2, "uint8"), transform=tr, date=SCENE_DATE)
    # a 3x3 object inside tile (16, 16) and a one-pixel object 8 pixels diagonally off that tile's corner
    geoms = [_quad(g, 20, 20, 3, 3), _quad(g, 8.3, 8.3, 0.4, 0.4)]
    labels = write_labels(tmp_path / "l.gpkg", geoms, g.crs, **{"class": ["house"] * 2, "date": ["2020-01-01"] * 2})
    out = _tile(tmp_path, [s], labels, "ds", boundary_width=8)
    idx = _check_straightforward(out, labels, boundary=8)
    corner = idx[(idx.row_off == 16) & (idx.col_off == 16)]
    assert len(corner) == 1
    assert load_dataset(out)[2][int(corner["index"].iloc[0])][0, 0] == 2  # the gap pixel (boundary class id 2)


def test_close_contact_with_an_object_just_outside_the_scene(tmp_path: Path) -> None:
    """The rule "the scene edge is not an outline (computed as if the scene went on)": a background pixel at the
    scene edge within 2 pixels of an object inside and one just outside is close contact (boundary). The labels
    of a scene were those intersecting it, so the object outside was dropped and the gap came out background."""
    s = tmp_path / "s.tif"
    g = write_scene(s, xy_image(32, 32, 2, "uint8"), date=SCENE_DATE)
    geoms = [pixel_box(g, 10, 26, 4, 4), pixel_box(g, 10, 33, 4, 4)]  # the second: columns 33..36, outside
    labels = write_labels(tmp_path / "l.gpkg", geoms, g.crs, **{"class": ["house"] * 2, "date": ["2020-01-01"] * 2})
    out = _tile(tmp_path, [s], labels, "ds", boundary_width=2)
    _check_straightforward(out, labels, boundary=2)
    idx, _, masks = load_dataset(out)
    right = int(idx.loc[(idx.row_off == 0) & (idx.col_off == 16), "index"].iloc[0])
    assert (masks[right][9:15, 15] == 2).all()  # column 31: 2 px from both objects
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"]["per_scene"][0]["in_scene"] == 1  # (the counts are still of the scene's own labels)


def test_masks_do_not_depend_on_the_chunk_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One chunk for the whole scene and one chunk per tile give the same masks, also where a label edge runs
    exactly along pixel centres (here row 47 of a 0.6 m grid at y = 39975.5, which 0.6 does not represent):
    labels are rasterized in scene pixel coordinates with integer window offsets (SceneLabels.pixels)."""
    s = tmp_path / "s.tif"
    g = write_scene(s, xy_image(48, 48, 1, "uint8"), res=0.6, origin=(499_996.0, 40_004.0), date=SCENE_DATE)
    geoms = [shapely.box(500_005.0, 39_975.5, 500_010.0, 39_978.0)]
    labels = write_labels(tmp_path / "l.gpkg", geoms, g.crs, **{"class": ["house"], "date": ["2020-01-01"]})
    # the coverage's lower edge also runs along those pixel centres (pixels outside it are ignore)
    cov = write_labels(tmp_path / "c.gpkg", [shapely.box(499_990.0, 39_975.5, 500_030.0, 40_010.0)], g.crs)
    whole = load_dataset(_tile(tmp_path, [s], labels, "whole", tile_size=24, coverage=str(cov)))
    monkeypatch.setattr(RUN, "CHUNK_BYTES", 1)
    per_tile = load_dataset(_tile(tmp_path, [s], labels, "per_tile", tile_size=24, coverage=str(cov)))
    assert whole[0][["row_off", "col_off"]].equals(per_tile[0][["row_off", "col_off"]])
    np.testing.assert_array_equal(whole[2], per_tile[2])
