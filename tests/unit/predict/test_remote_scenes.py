"""Remote scenes: a COG over HTTP (range requests) and STAC Items, served from 127.0.0.1 by
``range_server.py`` (full ``Range`` support; every request logged, so tests check only ranges were read)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.shutil

from geoseg.errors import InputError, RasterReadError
from geoseg.io.rasters import scene_info
from geoseg.predict.run import PredictConfig, run
from geoseg.testing import pixel_box, write_labels, write_scene, xy_image

pytest.importorskip("pystac")


class Served:
    """The server process: ``base`` URL, ``root`` folder, ``log()`` = the requests so far, ``clear()``."""

    def __init__(self, root: Path) -> None:
        self.root, self.log_path = root, root.parent / f"{root.name}_requests.jsonl"
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("range_server.py")), str(root),
                                      str(self.log_path)], stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert self.proc.stdout is not None
        self.base = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def log(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in self.log_path.read_text().splitlines()] if self.log_path.exists() else []

    def clear(self) -> None:
        self.log_path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Served]]:
    root = tmp_path_factory.mktemp("www")
    srv = Served(root)
    rng = np.random.default_rng(3)
    img = (xy_image(384, 320, 3, "uint16") + rng.integers(0, 50, (3, 384, 320))).astype("uint16")
    write_scene(root / "plain.tif", img, compress=None)
    rasterio.shutil.copy(root / "plain.tif", root / "scene.tif", driver="COG", BLOCKSIZE=128, COMPRESS="DEFLATE")
    (root / "plain.tif").unlink()
    base = srv.base
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "S2X_20990101_item", "geometry": None,
        "properties": {"datetime": "2021-06-01T10:30:00Z"}, "links": [],
        "assets": {
            "thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]},
            "visual": {"href": f"{base}/scene.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                       "roles": ["data"]},
        },
    }  # fmt: skip
    (root / "item.json").write_text(json.dumps(item))
    yield base, srv
    srv.proc.terminate()
    srv.proc.wait(10)


def test_predict_on_url_equals_local_file_and_reads_ranges(
    served: tuple[str, Served], identity_model: Path, identity, tmp_path: Path
) -> None:
    base, srv = served
    local = srv.root / "scene.tif"
    g = scene_info(local).grid
    x0, y1 = g.transform * (40, 60)
    x1, y0 = g.transform * (40 + 150, 60 + 130)
    cfg = PredictConfig(
        scenes=(str(local),), model=str(identity_model), out=str(tmp_path / "local"),
        bbox=f"{x0},{y0},{x1},{y1},EPSG:32636", float_output=True, progress=False, vectorize=False,
    )  # fmt: skip
    run(cfg, predict_fn=identity)
    srv.clear()
    res = run(replace(cfg, scenes=(f"{base}/scene.tif",), out=str(tmp_path / "url")), predict_fn=identity)
    gets = [e for e in srv.log() if e["method"] == "GET" and e["path"] == "/scene.tif"]
    assert gets and all(e["range"] for e in gets)  # only range requests
    assert sum(e["sent"] for e in gets) < 0.7 * local.stat().st_size  # a part of the file, not all of it
    for name in ("probabilities.tif", "classes.tif"):
        with rasterio.open(tmp_path / "local" / name) as a, rasterio.open(tmp_path / "url" / name) as b:
            assert a.transform == b.transform
            np.testing.assert_array_equal(a.read(), b.read())
    assert res.scenes[0].windows > 4


def test_stac_item_url_names_and_dates_the_scene(
    served: tuple[str, Served], identity_model: Path, identity, tmp_path: Path
) -> None:
    base, _ = served
    info = scene_info(f"{base}/item.json")
    assert (info.name, str(info.date), info.path) == ("S2X_20990101_item", "2021-06-01", f"/vsicurl/{base}/scene.tif")
    assert scene_info(f"{base}/item.json", "2020-01-02").date.isoformat() == "2020-01-02"  # --scene-date wins
    cfg = PredictConfig(scenes=(f"{base}/item.json",), model=str(identity_model), out=str(tmp_path / "p"),
                        bbox="-180,-90,180,90", tile_size=64, progress=False, vectorize=False)  # fmt: skip
    run(cfg, predict_fn=identity)
    with rasterio.open(tmp_path / "p" / "classes.tif") as ds:
        tags = ds.tags()
    assert tags["SCENE"] == "S2X_20990101_item" and tags["SCENE_DATE"] == "2021-06-01"
    with pytest.raises(InputError, match="no asset 'nir'; the item has thumbnail, visual"):
        scene_info(f"{base}/item.json", asset="nir")


def test_tile_on_stac_item_equals_local_file_dated_by_the_item(served: tuple[str, Served], tmp_path: Path) -> None:
    from geoseg.tile import TileConfig
    from geoseg.tile import run as run_tile

    from ..tile.conftest import load_dataset

    base, srv = served
    local = srv.root / "scene.tif"
    g = scene_info(local).grid
    geoms = [pixel_box(g, 20, 20, 40, 50), pixel_box(g, 150, 150, 60, 40), pixel_box(g, 300, 60, 30, 30)]
    labels = write_labels(tmp_path / "l.gpkg", geoms, g.crs, **{"class": ["a", "a", "a"],
                          "date": ["2020-01-01", "2022-03-01", "2021-05-01"]})  # fmt: skip
    opts = {"tile_size": 64, "negative_ratio": 100.0, "val_fraction": 0.0, "max_unusable_fraction": 1.0,
            "min_positive_fraction": 0.0, "boundary_width": 0, "progress": False, "labels": str(labels)}  # fmt: skip

    def tile(scene: str, out: str, dates: tuple[str, ...] = ()) -> tuple[Any, np.ndarray, np.ndarray]:
        run_tile(TileConfig(scenes=(scene,), out=str(tmp_path / out), scene_dates=dates, **opts))
        return load_dataset(tmp_path / out)

    idx, img, mask = tile(f"{base}/item.json", "stac")
    _, img_l, mask_l = tile(str(local), "local", ("2021-06-01",))
    _, _, mask_late = tile(str(local), "late", ("2023-01-01",))
    np.testing.assert_array_equal(img, img_l)
    np.testing.assert_array_equal(mask, mask_l)  # the Item's datetime decided which labels were valid
    assert not np.array_equal(mask, mask_late)  # (a later date validates the 2022 label too)
    assert set(idx.scene) == {"S2X_20990101_item"}
    meta = json.loads((tmp_path / "stac" / "dataset.json").read_text())
    assert meta["scenes"][0]["date"] == "2021-06-01"


def test_http_failures_are_one_line_errors(served: tuple[str, Served]) -> None:
    base, _ = served
    with pytest.raises(RasterReadError, match=r"missing\.tif: cannot read over HTTP") as e:
        scene_info(f"{base}/missing.tif")
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match=r"missing\.json: not a readable STAC Item \(HTTP 404") as e2:
        scene_info(f"{base}/missing.json")
    assert "\n" not in str(e2.value)
