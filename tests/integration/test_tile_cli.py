"""`geoseg tile` from the command line: the happy path (in-process and 2 worker processes give the same
dataset), and every bad input of issue 2 item 9: exit code 2, one line, nothing left in --out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine

from geoseg.cli import main
from geoseg.testing import pixel_box, write_labels, write_scene, xy_image

DATE = "2021-06-01"


@pytest.fixture
def case(tmp_path: Path) -> dict:
    g = write_scene(tmp_path / "scene_20210601.tif", xy_image(128, 160, 3, "uint8"), blocksize=32)
    rng = np.random.default_rng(0)
    geoms = [pixel_box(g, *rng.integers(0, 150, 2), 8, 8) for _ in range(30)]
    dates = ["2020-01-01"] * 25 + ["2022-01-01"] * 5
    write_labels(tmp_path / "labels.gpkg", geoms, g.crs, **{"class": ["a", "b"] * 15, "date": dates})
    late = sum(1 for geom, d in zip(geoms, dates, strict=False) if d > DATE and geom.intersects(g.footprint))
    return {
        "tmp": tmp_path,
        "grid": g,
        "scene": tmp_path / "scene_20210601.tif",
        "labels": tmp_path / "labels.gpkg",
        "late": late,
    }


def _args(case: dict, out: Path, *extra: str, scene: Path | None = None, labels: Path | None = None) -> list[str]:
    return [
        "tile",
        str(scene or case["scene"]),
        "--labels",
        str(labels or case["labels"]),
        "--out",
        str(out),
        "--tile-size",
        "16",
        "--val-block-tiles",
        "3",
        "--boundary-width",
        "1",
        "--no-progress",
        *extra,
    ]


def test_cli_workers_1_in_process_equals_2_worker_processes(case: dict, capsys: pytest.CaptureFixture) -> None:
    out1 = case["tmp"] / "one"
    assert main(_args(case, out1)) == 0
    printed = capsys.readouterr().out
    assert "requested" in printed and "positive" in printed and "split: train" in printed
    assert "val share of positives" in printed and "(requested 0.200)" in printed
    out2 = case["tmp"] / "two"
    exe = Path(sys.executable).with_name("geoseg")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "geoseg.cli"]
    proc = subprocess.run(
        [*cmd, *_args(case, out2, "--workers", "2", "--processes")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    a, b = zarr.open_group(str(out1 / "tiles.zarr"), mode="r"), zarr.open_group(str(out2 / "tiles.zarr"), mode="r")
    np.testing.assert_array_equal(a["images"][:], b["images"][:])
    np.testing.assert_array_equal(a["masks"][:], b["masks"][:])
    ia, ib = gpd.read_file(out1 / "tiles.gpkg", layer="tiles"), gpd.read_file(out2 / "tiles.gpkg", layer="tiles")
    assert ia.drop(columns="geometry").equals(ib.drop(columns="geometry"))
    ma, mb = (json.loads((o / "dataset.json").read_text()) for o in (out1, out2))
    assert ma["counts"] == mb["counts"] and ma["bands"] == mb["bands"]
    assert ma["config"]["workers"] == 1 and mb["config"]["workers"] == 2
    assert set(ia.kind) == {"positive", "hard_negative", "easy_negative"}
    assert a["images"].shape == (len(ia), 3, 16, 16) and a["images"].dtype == np.uint8
    assert a["images"].chunks == (1, 3, 16, 16) and a["masks"].chunks == (1, 16, 16)
    assert ma["labels"]["per_scene"][0]["ignored"] == case["late"] > 0 and ma["boundary_class"] == 3


def _bad_scene_no_crs(tmp: Path) -> Path:
    p = tmp / "nocrs.tif"
    with rasterio.open(
        p, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8", transform=Affine(1, 0, 0, 0, -1, 64)
    ) as ds:
        ds.write(np.zeros((1, 64, 64), np.uint8))
    return p


def _corrupt(tmp: Path, case: dict) -> Path:
    p = tmp / "corrupt.tif"
    data = case["scene"].read_bytes()
    p.write_bytes(data[:600] + b"\0" * 50)  # header kept, image data truncated
    return p


def _empty_labels(tmp: Path) -> Path:
    p = tmp / "empty.geojson"
    p.write_text('{"type": "FeatureCollection", "features": []}')
    return p


def _far_labels(tmp: Path, case: dict) -> Path:
    from shapely.geometry import box

    return write_labels(tmp / "far.gpkg", [box(10.0, 50.0, 10.001, 50.001)], "EPSG:4326", **{"class": ["a"]})


def _bad_dates(tmp: Path, case: dict) -> Path:
    return write_labels(
        tmp / "baddate.gpkg",
        [pixel_box(case["grid"], 5, 5, 5, 5)],
        case["grid"].crs,
        **{"class": ["a"], "date": ["next tuesday"]},
    )


def _point_line_labels(tmp: Path, case: dict) -> Path:
    from shapely.geometry import LineString, Point

    geoms = [Point(500_005.0, 39_990.0), LineString([(500_001.0, 39_990.0), (500_020.0, 39_980.0)])]
    return write_labels(tmp / "points.gpkg", geoms, case["grid"].crs, **{"class": ["a", "b"]})


def _invalid_scene(tmp: Path, fill: float) -> Path:
    """A dated scene over the labels with no valid pixel: all nodata (0) or all NaN (float, no nodata tag)."""
    nan = fill != fill
    p = tmp / ("nan_20210601.tif" if nan else "nodata_20210601.tif")
    write_scene(p, np.full((3, 128, 160), fill, np.float32 if nan else np.uint8), nodata=None if nan else fill)
    return p


CASES = {
    "missing scene": (lambda t, c: {"scene": t / "nope.tif"}, [], "scene not found"),
    "not a raster": (lambda t, c: {"scene": (t / "x.tif", (t / "x.tif").write_text("hello"))[0]}, [], "not a readable"),
    "truncated scene": (lambda t, c: {"scene": _corrupt(t, c)}, [], "corrupt.tif"),
    "scene without CRS": (lambda t, c: {"scene": _bad_scene_no_crs(t)}, [], "no CRS"),
    "labels without features": (lambda t, c: {"labels": _empty_labels(t)}, [], "no features"),
    "labels without class field": (lambda t, c: {}, ["--class-field", "kind"], "no field 'kind'"),
    "labels not overlapping": (lambda t, c: {"labels": _far_labels(t, c)}, [], "do not overlap any scene"),
    "unknown label date format": (lambda t, c: {"labels": _bad_dates(t, c)}, [], "unknown date format"),
    "unknown scene date format": (lambda t, c: {}, ["--scene-date", "1st of June"], "unknown date format"),
    "dated labels, undated scene": (
        lambda t, c: {"scene": (t / "plain.tif", write_scene(t / "plain.tif", xy_image(64, 64, 1, "uint8")))[0]},
        [],
        "give --scene-date",
    ),
    "labels of points and lines only": (
        lambda t, c: {"labels": _point_line_labels(t, c)},
        [],
        "no polygon features (only 1 LineString, 1 Point)",
    ),
    "all-nodata scene": (
        lambda t, c: {"scene": _invalid_scene(t, 0)},
        [],
        "nodata_20210601.tif: the scene has no valid pixels",
    ),
    "all-NaN scene": (
        lambda t, c: {"scene": _invalid_scene(t, np.nan)},
        [],
        "nan_20210601.tif: the scene has no valid",
    ),
    "missing labels": (lambda t, c: {"labels": t / "none.gpkg"}, [], "not found"),
    "bad option": (lambda t, c: {}, ["--undated", "maybe"], "--undated"),
    "bad block option": (lambda t, c: {}, ["--val-block-tiles", "big"], "--val-block-tiles must be auto"),
    "missing val area": (lambda t, c: {}, ["--val-area", "no_val_area.gpkg"], "not found"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_one_line_exit_2_nothing_written(case: dict, name: str, capsys: pytest.CaptureFixture) -> None:
    make, extra, needle = CASES[name]
    kw = make(case["tmp"], case)
    out = case["tmp"] / "out"
    rc = main(_args(case, out, *extra, **kw))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("geoseg: error: "), err
    assert needle in err[0]
    assert "Traceback" not in err[0]
    assert not out.exists()
    assert not any(p.name.startswith(".out") for p in case["tmp"].iterdir())
    if name == "labels not overlapping":  # both extents in the message
        assert "labels extent" in err[0] and "scene_20210601.tif extent" in err[0]


def test_failed_run_leaves_existing_out_untouched(case: dict, capsys: pytest.CaptureFixture) -> None:
    out = case["tmp"] / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(_args(case, out, "--class-field", "kind")) == 2
    capsys.readouterr()
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
