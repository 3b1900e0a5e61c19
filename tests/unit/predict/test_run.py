"""``geoseg.predict.run.run``: COG outputs on the scene grid, layouts, resume, dask, TTA."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.features import geometry_mask

from geoseg.grid import Grid
from geoseg.predict.adapter import TorchPredictor, _dihedral, _undo
from geoseg.predict.run import WORK_DIR, PredictConfig, run
from geoseg.testing import pixel_box, write_labels, write_scene, xy_image

H, W = 203, 157


def _scene(tmp: Path, name: str, crs: str, origin: tuple[float, float], res: float, **kw) -> tuple[Path, np.ndarray]:
    data = xy_image(H, W, 3, "uint16")
    path = tmp / name
    write_scene(path, data, crs=crs, origin=origin, res=res, **kw)
    return path, data


CRSS = {
    "EPSG:32636": ((500_000.0, 40_000.0), 0.5),
    "EPSG:4326": ((33.0, 0.36), 5e-6),
    "EPSG:3857": ((3_673_000.0, 40_100.0), 0.5),
}


@pytest.mark.parametrize("crs", list(CRSS))
def test_float_outputs_on_scene_grid_equal_input_inside_aoi(
    tmp_path: Path, identity_model: Path, identity, read_all, crs: str
) -> None:
    origin, res = CRSS[crs]
    scene, data = _scene(tmp_path, "s_20230405.tif", crs, origin, res)
    with rasterio.open(scene) as ds:
        grid = Grid.from_dataset(ds)
    aoi_geom = pixel_box(grid, 20.4, 11.7, 150.2, 120.9)
    aoi = write_labels(tmp_path / "aoi.gpkg", [aoi_geom], crs)
    out = tmp_path / "out"
    res_ = run(
        PredictConfig(
            scenes=(str(scene),),
            model=str(identity_model),
            out=str(out),
            aoi=str(aoi),
            overlap=9,
            float_output=True,
            progress=False,
        ),
        predict_fn=identity,
    )
    probs, meta = read_all(out / "probabilities.tif")
    classes, cmeta = read_all(out / "classes.tif")
    for m in (meta, cmeta):
        assert m["crs"] == grid.crs and m["transform"] == grid.transform
        assert (m["width"], m["height"]) == (W, H)
        assert m["layout"] == "COG"
        assert m["tags"]["SCENE"] == scene.name and m["tags"]["SCENE_DATE"] == "2023-04-05"
        assert m["tags"]["ENCODER"] == "tu-tf_efficientnet_lite0" and m["tags"]["GEOSEG_VERSION"]
        assert Path(m["tags"]["MODEL"]) == identity_model.resolve()
    keep = ~geometry_mask([aoi_geom], out_shape=grid.shape, transform=grid.transform)
    assert meta["dtype"] == "float32" and np.isnan(meta["nodata"])
    np.testing.assert_array_equal(probs[:, keep], data[:, keep].astype(np.float32))
    assert np.isnan(probs[:, ~keep]).all()
    np.testing.assert_array_equal(classes[0][keep], np.argmax(data, 0)[keep])
    assert (classes[0][~keep] == 255).all() and cmeta["nodata"] == 255
    assert meta["descriptions"] == ("background", "class1", "class2")
    with rasterio.open(out / "classes.tif") as ds:
        assert ds.colormap(1)[1][:3] == (0xE3, 0x1A, 0x1C)
    runj = json.loads((out / "run.json").read_text())
    assert runj["layout"] == "flat" and runj["scenes"][0]["windows"] == res_.scenes[0].windows > 0
    assert runj["config"]["overlap"] == 9 and runj["model_config"]["num_classes"] == 3
    assert "predict_s" in runj["scenes"][0]["timing_s"]
    assert not (out / WORK_DIR).exists()


def test_uint8_cog_with_overviews_scale_and_nodata(
    tmp_path: Path, identity_model: Path, identity, read_all, rng: np.random.Generator
) -> None:
    data = rng.random((3, 700, 600), dtype=np.float32)
    valid = np.ones((700, 600), bool)
    valid[:50] = False
    scene = tmp_path / "u.tif"
    write_scene(scene, data, mask=valid, blocksize=128)
    out = tmp_path / "out"
    run(
        PredictConfig(
            scenes=(str(scene),),
            model=str(identity_model),
            out=str(out),
            bbox="-180,-90,180,90",
            overlap=8,
            progress=False,
            vectorize=False,
        ),
        predict_fn=identity,
    )
    probs, meta = read_all(out / "probabilities.tif")
    assert meta["dtype"] == "uint8" and meta["nodata"] == 255 and meta["overviews"] == [2]
    assert meta["scales"] == pytest.approx((1 / 254,) * 3)
    expect = np.round(data * np.float32(254)).astype(np.uint8)
    np.testing.assert_array_equal(probs[:, valid], expect[:, valid])
    assert (probs[:, ~valid] == 255).all()


def test_several_scenes_per_scene_folders_other_crs_and_skipped(
    tmp_path: Path, identity_model: Path, identity, read_all
) -> None:
    a, da = _scene(tmp_path, "a.tif", "EPSG:32636", (500_000.0, 40_000.0), 0.5)
    b, db = _scene(tmp_path, "b.tif", "EPSG:3857", (3_673_000.0, 40_100.0), 0.5)
    far, _ = _scene(tmp_path, "far.tif", "EPSG:32636", (700_000.0, 90_000.0), 0.5)
    aoi_a = pixel_box(Grid.from_dataset(rasterio.open(a)), 0, 0, H, W)
    aoi = write_labels(tmp_path / "aoi.geojson", [aoi_a.buffer(5000)], "EPSG:32636")
    out = tmp_path / "out"
    res = run(
        PredictConfig(
            scenes=(str(a), str(b), str(far)),
            model=str(identity_model),
            out=str(out),
            aoi=str(aoi),
            float_output=True,
            progress=False,
        ),
        predict_fn=identity,
    )
    assert res.skipped == [str(far)]
    for stem, data in (("a", da), ("b", db)):
        probs, _meta = read_all(out / stem / "probabilities.tif")
        np.testing.assert_array_equal(probs, data.astype(np.float32))
    assert json.loads((out / "run.json").read_text())["layout"] == "per-scene"
    assert not (out / "far").exists()


def test_resume_after_crash_equals_uninterrupted(
    tmp_path: Path, real_model: Path, identity, interrupting, counting, read_all
) -> None:
    scene, _ = _scene(tmp_path, "r.tif", "EPSG:32636", (500_000.0, 40_000.0), 0.5)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def model(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(conv(x), 1)

    cfg = PredictConfig(
        scenes=(str(scene),),
        model=str(real_model),
        out=str(tmp_path / "full"),
        bbox="-180,-90,180,90",
        overlap=20,
        tile_size=32,
        batch_size=2,
        progress=False,
        vectorize=False,
    )
    run(cfg, predict_fn=model)
    full, _ = read_all(tmp_path / "full" / "probabilities.tif")

    out = tmp_path / "resumed"
    crash = interrupting(40)  # 6 batches per strip: crash in strip 7 of 17

    def crashing(x: torch.Tensor) -> torch.Tensor:
        crash(x)
        return model(x)

    with pytest.raises(RuntimeError, match="simulated crash"):
        run(replace(cfg, out=str(out)), predict_fn=crashing)
    assert (out / WORK_DIR).is_dir() and not (out / "probabilities.tif").exists()
    assert list((out / WORK_DIR).rglob("rows_*.npz"))  # checkpoints were written before the crash
    count = counting()

    def counted(x: torch.Tensor) -> torch.Tensor:
        count(x)
        return model(x)

    run(replace(cfg, out=str(out), resume=True), predict_fn=counted)
    resumed, _ = read_all(out / "probabilities.tif")
    np.testing.assert_array_equal(resumed, full)
    total = json.loads((tmp_path / "full" / "run.json").read_text())["scenes"][0]["windows"]
    assert 0 < count.windows < total  # only the unfinished part was predicted again
    # without --resume an old work folder is discarded and the run starts over
    with pytest.raises(RuntimeError):
        run(replace(cfg, out=str(tmp_path / "again")), predict_fn=interrupting(2))
    c2 = counting()
    run(replace(cfg, out=str(tmp_path / "again")), predict_fn=lambda x: model(c2(x)))
    assert c2.windows == total


def test_dask_two_scenes_identical_to_single_process(tmp_path: Path, real_model: Path, read_all) -> None:
    from dask.distributed import LocalCluster

    a, _ = _scene(tmp_path, "a.tif", "EPSG:32636", (500_000.0, 40_000.0), 0.5)
    b, _ = _scene(tmp_path, "b.tif", "EPSG:32636", (500_050.0, 40_020.0), 0.5)
    base = PredictConfig(
        scenes=(str(a), str(b)),
        model=str(real_model),
        out=str(tmp_path / "single"),
        bbox="-180,-90,180,90",
        overlap=16,
        batch_size=3,
        device="cpu",
        progress=False,
        vectorize=False,
    )
    run(base)
    with LocalCluster(n_workers=3, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        res = run(replace(base, out=str(tmp_path / "dask"), scheduler=cluster.scheduler_address))
    assert [s.bands for s in res.scenes] == [2, 2]  # 3 workers, 2 scenes: each scene split in row bands
    for stem in ("a", "b"):
        for name in ("probabilities.tif", "classes.tif"):
            one, m1 = read_all(tmp_path / "single" / stem / name)
            two, m2 = read_all(tmp_path / "dask" / stem / name)
            np.testing.assert_array_equal(one, two)
            assert m1["transform"] == m2["transform"]
        assert (one < 255).sum() > 1000


def test_tta_undo_and_mean(real_model: Path) -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    seen = set()
    for k in range(4):
        for flip in (False, True):
            t = _dihedral(x, k, flip)
            seen.add(tuple(t[0, 0].flatten().tolist()))
            assert torch.equal(_undo(t, k, flip), x)
    assert len(seen) == 8
    # a pointwise "network" is equivariant: TTA changes nothing; a convolution is not: TTA = mean of 8
    pointwise = TorchPredictor(torch.nn.Identity(), torch.device("cpu"), tta=True)
    torch.testing.assert_close(pointwise(x), torch.softmax(x, 1))
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1).eval()
    tta = TorchPredictor(conv, torch.device("cpu"), tta=True)(x / 100)
    manual = torch.stack(
        [_undo(torch.softmax(conv(_dihedral(x / 100, k, f)), 1), k, f) for k in range(4) for f in (False, True)]
    ).mean(0)
    torch.testing.assert_close(tta, manual)
    assert not torch.allclose(tta, torch.softmax(conv(x / 100), 1))


_ = dt


def test_regularize_names_checked_up_front_and_passed_to_vectorize(
    tmp_path: Path, identity_model: Path, identity
) -> None:
    from geoseg.errors import ConfigError

    a, _ = _scene(tmp_path, "a.tif", "EPSG:32636", (500_000.0, 40_000.0), 0.5)
    aoi = write_labels(tmp_path / "aoi.geojson", [pixel_box(Grid.from_dataset(rasterio.open(a)), 0, 0, H, W)],
                       "EPSG:32636")  # fmt: skip
    cfg = PredictConfig(scenes=(str(a),), model=str(identity_model), out=str(tmp_path / "bad"), aoi=str(aoi),
                        regularize=("roof",), progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="'roof' is not an object class; classes: class1, class2"):
        run(cfg, predict_fn=identity)
    assert not (tmp_path / "bad").exists()  # nothing written before the check
    run(replace(cfg, out=str(tmp_path / "ok"), regularize=("class1",)), predict_fn=identity)
    assert json.loads((tmp_path / "ok" / "run.json").read_text())["config"]["regularize"] == ["class1"]
    assert (tmp_path / "ok" / "instances.gpkg").exists()
