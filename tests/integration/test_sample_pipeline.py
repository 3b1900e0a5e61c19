"""The main job in reduced form (1 short epoch): every output exists, opens and sits on the scene grid."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
import torch
import zarr

from geoseg.cli import main
from geoseg.grid import Grid

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipelines" / "sample_aoi.yaml"
SCENE = ROOT / "sample_aoi" / "kampala_z20_cluster0.tif"
QUICK = ["--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=2", "--set", "train.weights=none"]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample") / "run"
    assert main(["run", str(PIPELINE), "--out", str(out), *QUICK]) == 0
    return out


@pytest.mark.slow
def test_every_output_exists_and_opens(sample_run: Path) -> None:
    with rasterio.open(SCENE) as ds:
        scene_grid = Grid.from_dataset(ds)
    # tile stage
    ds_json = json.loads((sample_run / "dataset" / "dataset.json").read_text())
    images = zarr.open_group(str(sample_run / "dataset" / "tiles.zarr"), mode="r")["images"]
    tiles = gpd.read_file(sample_run / "dataset" / "tiles.gpkg", layer="tiles")
    assert images.shape[0] == len(tiles) > 0 and ds_json["boundary_class"] is not None
    # train stage
    cfg = json.loads((sample_run / "train" / "model" / "config.json").read_text())
    assert cfg["in_channels"] == 3 and (sample_run / "train" / "metrics.csv").exists()
    assert (sample_run / "train" / "curves.png").stat().st_size > 0
    # predict stage: COGs on the scene grid
    for name in ("probabilities.tif", "classes.tif"):
        with rasterio.open(sample_run / "predict" / name) as ds:
            assert Grid.from_dataset(ds) == scene_grid
            assert ds.nodata == 255 and ds.overviews(1)
    inst = gpd.read_file(sample_run / "predict" / "instances.gpkg", layer="instances")
    assert inst.crs is not None and inst.crs.equals(scene_grid.crs.to_wkt())
    assert {"class", "score", "area_m2", "scene", "scene_date"} <= set(inst.columns)
    assert (sample_run / "predict" / "project.qgs").exists()
    # evaluate + baseline
    for path in (sample_run / "eval.json", sample_run / "baseline" / "eval.json"):
        ev = json.loads(path.read_text())
        assert "pixel" in ev and "object" in ev


@pytest.mark.slow
def test_no_training_tile_touches_the_holdout(sample_run: Path) -> None:
    tiles = gpd.read_file(sample_run / "dataset" / "tiles.gpkg", layer="tiles")
    aoi = gpd.read_file(ROOT / "sample_aoi" / "holdout_aoi.geojson").to_crs(tiles.crs)
    assert not tiles.intersects(aoi.union_all()).any()


@pytest.mark.slow
def test_rerun_skips_unchanged_stages_and_from_forces(sample_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (sample_run / "train" / "model" / "model.pt").stat().st_mtime_ns
    assert main(["run", str(PIPELINE), "--out", str(sample_run), *QUICK]) == 0
    state = json.loads((sample_run / "pipeline.json").read_text())
    assert all(s["skipped"] for s in state["stages"].values())
    assert (sample_run / "train" / "model" / "model.pt").stat().st_mtime_ns == before
    assert main(["run", str(PIPELINE), "--out", str(sample_run), *QUICK, "--from", "evaluate"]) == 0
    state = json.loads((sample_run / "pipeline.json").read_text())
    ran = [k for k, s in state["stages"].items() if not s["skipped"]]
    assert ran == ["evaluate", "baseline"]


_TEXT = PIPELINE.read_text()


def _with(stage: str, option: str) -> str:
    """The sample pipeline with ``option`` (one YAML line) added to ``stage``."""
    return _TEXT.replace(f"  {stage}:\n", f"  {stage}:\n    {option}\n", 1)


# (pipeline text, a word the one-line error must contain): each must stop `geoseg run` before the first stage
BAD_PIPELINES = {
    "unknown_key": (_with("train", "epochz: 1"), "epochz"),
    "unknown_stage": (_TEXT.replace("  evaluate:", "  evaluatee:"), "evaluatee"),
    "missing_file": (
        _TEXT.replace("aoi: ../sample_aoi/holdout_aoi.geojson", "aoi: ../sample_aoi/nope.geojson", 1),
        "nope.geojson",
    ),
    # a bad option of a late stage stops the pipeline before the first stage starts (issues 8 and 13)
    "tile_undated": (_with("tile", "undated: sometimes"), "--undated"),
    "train_lr": (_TEXT.replace("    lr: 0.002\n", "    lr: fast\n"), "--lr: expected a number"),
    "train_arch": (_with("train", "arch: segformer9"), "--arch: unknown"),
    "predict_threshold": (_with("predict", "threshold: 7"), "--threshold"),
    "predict_blend": (_with("predict", "blend: nonsense"), "--blend"),
    "predict_min_area": (_with("predict", "min_area: -5"), "--min-area"),
    "predict_batch": (_with("predict", "batch_size: 0"), "--batch-size"),
    "predict_compress": (_with("predict", "compress: FOO"), "--compress"),
    "predict_tta": (_with("predict", "tta: fast"), "--tta: expected true or false"),
    "evaluate_size_bins": (_with("evaluate", "size_bins: [banana]"), "--size-bins: expected a list of numbers"),
    "evaluate_iou": (_with("evaluate", "iou: 2"), "--iou"),
    "baseline_threshold": (_with("baseline", "threshold: 7"), "--threshold"),
    # checks across stages / against the scene files and this machine (pipeline.preflight)
    "predict_overlap": (_TEXT.replace("    overlap: 32", "    overlap: 9999", 1), "overlap must be in [0, 127]"),
    "predict_bands": (_with("predict", "bands: [7, 8, 9]"), "bands: 7 out of range"),
}
if not torch.cuda.is_available():  # a CUDA request on a machine without CUDA
    BAD_PIPELINES["train_cuda"] = (_with("train", "device: cuda"), "CUDA is not available")


@pytest.mark.parametrize("name", list(BAD_PIPELINES))
def test_bad_pipeline_fails_before_any_work(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body, needle = BAD_PIPELINES[name]
    assert body != _TEXT, name  # the case really changes the file
    p = tmp_path / "pipelines" / f"{name}.yaml"
    p.parent.mkdir()
    p.write_text(body.replace("../sample_aoi/", f"{ROOT}/sample_aoi/"))
    out = tmp_path / "out"
    assert main(["run", str(p), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert str(p) in err[0], err  # names the pipeline file
    assert not out.exists()  # nothing written: no dataset/, no state file


@pytest.mark.slow
def test_partial_pipeline_takes_upstream_paths_from_the_file(sample_run: Path, tmp_path: Path) -> None:
    aoi, truth = ROOT / "sample_aoi" / "holdout_aoi.geojson", ROOT / "sample_aoi" / "buildings.geojson"
    body = (
        "stages:\n"
        f"  predict: {{scenes: [{SCENE}], aoi: {aoi}, model: {sample_run / 'train'}}}\n"
        f"  evaluate: {{truth: {truth}, aoi: {aoi}}}\n"
    )
    p = tmp_path / "predict_only.yaml"
    p.write_text(body)
    assert main(["run", str(p), "--out", str(tmp_path / "out")]) == 0
    mine = json.loads((tmp_path / "out" / "eval.json").read_text())["pixel"]["classes"]
    theirs = json.loads((sample_run / "eval.json").read_text())["pixel"]["classes"]
    assert mine == theirs  # same model, same AOI: the same prediction
    # without the model the file is refused before any work
    p.write_text(body.replace(f", model: {sample_run / 'train'}", ""))
    assert main(["run", str(p), "--out", str(tmp_path / "out2")]) == 2
    assert not (tmp_path / "out2").exists()


@pytest.mark.slow
def test_edited_input_file_reruns_its_stage(tmp_path: Path) -> None:
    import shutil

    pipe_dir = tmp_path / "pipelines"
    (tmp_path / "sample_aoi").mkdir()
    for f in ("kampala_z20_cluster0.tif", "buildings.geojson", "train_area.geojson", "holdout_aoi.geojson"):
        shutil.copy(ROOT / "sample_aoi" / f, tmp_path / "sample_aoi" / f)
    pipe_dir.mkdir()
    text = PIPELINE.read_text()
    only_tile = text[: text.index("  train:")]
    (pipe_dir / "tile.yaml").write_text(only_tile)
    out = tmp_path / "out"
    assert main(["run", str(pipe_dir / "tile.yaml"), "--out", str(out)]) == 0
    assert main(["run", str(pipe_dir / "tile.yaml"), "--out", str(out)]) == 0
    assert json.loads((out / "pipeline.json").read_text())["stages"]["tile"]["skipped"]
    labels = tmp_path / "sample_aoi" / "buildings.geojson"
    labels.write_text(labels.read_text().replace('"osm_id": 616763436.0', '"osm_id": 1.0'))
    assert main(["run", str(pipe_dir / "tile.yaml"), "--out", str(out)]) == 0
    assert not json.loads((out / "pipeline.json").read_text())["stages"]["tile"]["skipped"]
