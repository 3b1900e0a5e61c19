"""geoseg run: named stages, @references, dependency order and the skipping logic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from geoseg.errors import ConfigError
from geoseg.pipeline import Pipeline, _users, run_pipeline
from geoseg.testing import pixel_box, write_labels, write_scene

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    img = rng.integers(10, 40, (1, 64, 64)).astype("uint8")
    geoms = []
    for r, c in ((4, 4), (20, 40), (44, 10), (50, 50)):
        img[0, r : r + 6, c : c + 6] = 200
    grid = write_scene(tmp_path / "s.tif", img)
    for r, c in ((4, 4), (20, 40), (44, 10), (50, 50)):
        geoms.append(pixel_box(grid, r, c, 6, 6))
    write_labels(tmp_path / "l.gpkg", geoms, grid.crs, **{"class": ["roof"] * len(geoms)})
    write_labels(tmp_path / "look.gpkg", [pixel_box(grid, 30, 30, 4, 4)], grid.crs)
    return {"tmp": tmp_path, "scene": tmp_path / "s.tif", "labels": tmp_path / "l.gpkg", "look": tmp_path / "look.gpkg"}


def _write(tmp: Path, stages: dict, name: str = "p.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump({"name": "t", "stages": stages}, sort_keys=False))
    return path


def _tile(**kw: object) -> dict:
    return {"scenes": ["s.tif"], "labels": "l.gpkg", "tile_size": 16, "val_fraction": 0.0, "progress": False, **kw}


def test_two_round_references_resolve_and_order(inputs: dict[str, Path]) -> None:
    tmp = inputs["tmp"]
    stages = {
        "train_r2": {"uses": "train", "dataset": "@tile_r2", "epochs": 1},  # listed before what it uses
        "tile": _tile(),
        "train": {"epochs": 1},
        "mine": {"scenes": ["s.tif"], "labels": "l.gpkg"},
        "tile_r2": {"uses": "tile", **_tile(hard_negatives=["look.gpkg", "@mine"])},
        "predict_r2": {"uses": "predict", "scenes": ["s.tif"], "aoi": "look.gpkg", "model": "@train_r2"},
        "evaluate_r2": {"uses": "evaluate", "truth": "l.gpkg", "predicted": "@predict_r2"},
        "fn_check": {"uses": "tile", **_tile(hard_negatives="@mine/false_negatives.gpkg")},
    }
    pipe = Pipeline.load(_write(tmp, stages))
    order = list(pipe.stages)
    assert order.index("tile") < order.index("train") < order.index("mine") < order.index("tile_r2")
    assert order.index("tile_r2") < order.index("train_r2") < order.index("predict_r2") < order.index("evaluate_r2")
    assert pipe.kinds["tile_r2"] == "tile" and "uses" not in pipe.stages["tile_r2"]
    out = tmp / "out"
    t2 = pipe.resolve("tile_r2", out)
    assert t2.hard_negatives == (str(inputs["look"].resolve()), str(out / "mine" / "false_positives.gpkg"))
    assert t2.out == str(out / "tile_r2")
    assert str(pipe.resolve("train_r2", out).dataset) == str(out / "tile_r2")
    assert str(pipe.resolve("train", out).dataset) == str(out / "dataset")  # builtin names: implicit, as before
    assert pipe.resolve("mine", out).model == str(out / "train")
    ev = pipe.resolve("evaluate_r2", out)
    assert ev.predicted == str(out / "predict_r2") and ev.out == str(out / "evaluate_r2" / "eval.json")
    assert pipe.resolve("fn_check", out).hard_negatives == (str(out / "mine" / "false_negatives.gpkg"),)
    assert pipe.dependencies("evaluate_r2") == ["predict_r2"]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ({"tile2": _tile()}, "needs 'uses: KIND'"),
        ({"tile2": {"uses": "tiles", **_tile()}}, "unknown kind 'tiles'"),
        ({"train": {"uses": "predict"}}, "a stage named after a kind is that kind"),
        ({"tile": _tile(), "t2": {"uses": "train", "dataset": "@nope"}}, "@nope is not a stage"),
        ({"tile": _tile(hard_negatives=["@tile"])}, "cannot use its own output"),
        ({"a": {"uses": "train", "dataset": "@b"}, "b": {"uses": "train", "dataset": "@a"}}, "cycle: a -> b -> a"),
        ({"tile": _tile(), "t2": {"uses": "train", "dataset": "@tile", "encoder": "@tile"}}, "only path options"),
        ({"tile": _tile(), "t2": {"uses": "train"}}, 'give dataset, e.g. dataset: "@<tile stage>"'),
        ({"tile": _tile(), "dataset": {"uses": "tile", **_tile()}}, "output folder 'dataset'"),
        ({"tile": _tile(), "mine": {"scenes": ["s.tif"], "labels": "l.gpkg", "model": "l.gpkg", "iou": 2}}, "--iou"),
    ],
)
def test_bad_pipelines_fail_up_front(inputs: dict[str, Path], stages: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pipe = Pipeline.load(_write(inputs["tmp"], stages))
        for name in pipe.stages:
            pipe.resolve(name, inputs["tmp"] / "out")


def test_existing_pipeline_files_load_unchanged() -> None:
    for name in ("sample_aoi.yaml", "sample_aoi_two_round.yaml"):
        pipe = Pipeline.load(ROOT / "pipelines" / name)
        for stage in pipe.stages:
            pipe.resolve(stage, Path("/tmp/x"))
    pipe = Pipeline.load(ROOT / "pipelines" / "sample_aoi.yaml")
    assert list(pipe.stages) == ["tile", "train", "predict", "evaluate", "baseline"]
    assert [pipe.out_of(s) for s in pipe.stages] == ["dataset", "train", "predict", "eval.json", "baseline"]


def test_users_are_transitive() -> None:
    deps = {"a": [], "b": ["a"], "c": [], "d": ["b"], "e": ["c"]}
    assert _users("a", ["b", "c", "d", "e"], deps) == ["b", "d"]


def test_named_stages_skip_and_rerun(inputs: dict[str, Path]) -> None:
    tmp = inputs["tmp"]
    path = _write(tmp, {"tile": _tile(), "tile_b": {"uses": "tile", **_tile(seed=1, hard_negatives=["look.gpkg"])}})
    out = tmp / "out"
    first = run_pipeline(path, out)
    assert [s["skipped"] for s in first["stages"].values()] == [False, False]
    assert (out / "tile_b" / "dataset.json").exists() and (out / "dataset" / "dataset.json").exists()
    again = run_pipeline(path, out)
    assert [s["skipped"] for s in again["stages"].values()] == [True, True]
    changed = run_pipeline(path, out, overrides=["tile_b.seed=2"])
    assert changed["stages"]["tile"]["skipped"] and not changed["stages"]["tile_b"]["skipped"]
    forced = run_pipeline(path, out, overrides=["tile_b.seed=2"], from_stage="tile")
    assert not any(s["skipped"] for s in forced["stages"].values())
    state = json.loads((out / "pipeline_state.json").read_text())
    assert set(state["stages"]) == {"tile", "tile_b"}
