"""``geoseg predict`` end to end through the CLI with a tiny real model; bad input -> exit 2, nothing written."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from geoseg.cli import main
from geoseg.grid import Grid
from geoseg.testing import pixel_box, write_labels, write_random_model, write_scene, xy_image


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("predict_cli")
    model = write_random_model(tmp / "run" / "model", head_gain=20.0)
    data = (xy_image(150, 130, 3, "uint16") % 200).astype("uint16")
    scene = tmp / "scene.tif"
    grid = write_scene(scene, data, date=dt.date(2024, 5, 6))
    aoi = write_labels(tmp / "aoi.geojson", [pixel_box(grid, 10, 10, 120, 100)], grid.crs.to_wkt())
    gpd.read_file(aoi).to_crs(4326).to_file(tmp / "aoi4326.geojson")
    empty = tmp / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    four = tmp / "four.tif"
    write_scene(four, xy_image(100, 100, 4, "uint16"))
    bad_model = tmp / "bad_model"
    bad_model.mkdir()
    (bad_model / "config.json").write_text("{}")
    (bad_model / "model.pt").write_bytes((model / "model.pt").read_bytes())
    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.pt").write_bytes(b"not a torch file")
    cfg = json.loads((model / "config.json").read_text())
    (corrupt / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "weights_sha256"}))
    flipped = tmp / "flipped"  # 4 KiB of flipped bytes inside model.pt: refused by its checksum
    flipped.mkdir()
    weights = bytearray((model / "model.pt").read_bytes())
    mid = len(weights) // 2
    weights[mid : mid + 4096] = bytes(b ^ 0xFF for b in weights[mid : mid + 4096])
    (flipped / "model.pt").write_bytes(bytes(weights))
    (flipped / "config.json").write_text((model / "config.json").read_text())
    far = write_labels(tmp / "far.gpkg", [pixel_box(grid, 0, 0, 10, 10).buffer(1).centroid.buffer(10)], "EPSG:32636")
    gpd.read_file(far).translate(50_000, 0).to_file(tmp / "far.gpkg")
    return {
        "tmp": tmp,
        "run": tmp / "run",
        "model": model,
        "scene": scene,
        "aoi": tmp / "aoi4326.geojson",
        "empty": empty,
        "four": four,
        "bad_model": bad_model,
        "corrupt": corrupt,
        "flipped": flipped,
        "far": tmp / "far.gpkg",
    }


def test_predict_cli_writes_qgis_ready_outputs(setup: dict[str, Path]) -> None:
    out = setup["tmp"] / "out"
    rc = main(
        [
            "predict",
            str(setup["scene"]),
            "--model",
            str(setup["run"]),
            "--aoi",
            str(setup["aoi"]),
            "--out",
            str(out),
            "--overlap",
            "16",
            "--min-area",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 0
    for name in ("probabilities.tif", "classes.tif", "run.json"):
        assert (out / name).is_file(), name
    with rasterio.open(setup["scene"]) as ds:
        grid = Grid.from_dataset(ds)
    for name in ("probabilities.tif", "classes.tif"):
        with rasterio.open(out / name) as ds:
            assert Grid.from_dataset(ds) == grid
            assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert ds.tags()["SCENE_DATE"] == "2024-05-06"
            a = ds.read(1)
            assert (a == 255).any() and (a != 255).sum() >= 100 * 120 * 0.9  # AOI inside, nodata outside
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["overlap"] == 16 and run["scenes"][0]["windows"] > 0
    if (out / "instances.gpkg").exists():  # vectorize stage present in this build
        gdf = gpd.read_file(out / "instances.gpkg", layer="instances")
        assert gdf.crs.equals(grid.crs.to_wkt())
        assert {"class", "class_id", "score", "area_m2", "scene", "scene_date"} <= set(gdf.columns)
        assert len(gdf) == run["scenes"][0]["polygons"] > 0
        assert (gdf["class"] == "building").all() and (gdf["scene"] == "scene.tif").all()
        assert (out / "classes.qml").exists() and (out / "project.qgs").exists()
    assert not list(out.glob(".*"))  # no work or temp files left


@pytest.mark.parametrize(
    "case,expect",
    [
        ("miss", "misses every scene"),
        ("bands", "expects 3"),
        ("empty", "no features"),
        ("bad_model", "missing key"),
        ("no_model", "not a geoseg model directory"),
        ("corrupt", "unreadable weights"),
        ("flipped", "model.pt: does not match config.json (corrupt or replaced)"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str], case: str, expect: str
) -> None:
    out = setup["tmp"] / f"out_{case}"
    scene, model, aoi = setup["scene"], setup["run"], setup["aoi"]
    if case == "miss":
        aoi = setup["far"]
    elif case == "bands":
        scene = setup["four"]
    elif case == "empty":
        aoi = setup["empty"]
    elif case == "bad_model":
        model = setup["bad_model"]
    elif case == "no_model":
        model = setup["tmp"] / "nope"
    elif case in ("corrupt", "flipped"):
        model = setup[case]
    capsys.readouterr()
    rc = main(["predict", str(scene), "--model", str(model), "--aoi", str(aoi), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("geoseg: error:") and expect in err, err
    assert not out.exists()
    if case == "miss":  # both extents are named
        assert "AOI [" in err and "scene.tif [" in err


def test_console_script_exit_code(setup: dict[str, Path]) -> None:
    out = setup["tmp"] / "out_sub"
    exe = Path(sys.executable).with_name("geoseg")
    proc = subprocess.run(
        [
            str(exe),
            "predict",
            str(setup["scene"]),
            "--model",
            str(setup["run"]),
            "--aoi",
            str(setup["far"]),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("geoseg: error:") and "Traceback" not in proc.stderr
    assert not out.exists()


_ = np
