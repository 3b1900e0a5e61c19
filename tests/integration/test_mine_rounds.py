"""Issue 10 "Show it works": look-alikes in no layer are mined as false positives, and a second round
trained with them predicts fewer false positives on a held-out part of the scene (same seed, same budget).

The synthetic town (geoseg.testing.write_buildings_scene) has look-alike slabs: the same roof colours,
no ridge, no shadow, in no layer given to geoseg. Round 1 trains on the western part (coverage); mine
predicts the scene with it; round 2 re-tiles with the mined layer as --hard-negatives (same negative
ratio and hard share) and trains with the same seed and epochs. Both are evaluated on the eastern part,
two tiles away from every training tile.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pytest
import shapely
from shapely.geometry import box

from geoseg.cli import main
from geoseg.testing import write_buildings_scene, write_labels

pytestmark = pytest.mark.slow

TILE = ["--tile-size", "32", "--negative-ratio", "0.5", "--hard-negative-share", "1.0", "--seed", "0", "--no-progress"]
TRAIN = ["--epochs", "6", "--seed", "0", "--no-progress"]


def _round(tmp: Path, name: str, d: dict, cov: Path, holdout: Path, extra: list[str]) -> dict:
    assert main(["tile", str(d["scene"]), "--labels", str(d["labels"]), "--coverage", str(cov), "--out",
                 str(tmp / f"ds_{name}"), *TILE, *extra]) == 0  # fmt: skip
    assert main(["train", str(tmp / f"ds_{name}"), "--out", str(tmp / f"run_{name}"), *TRAIN]) == 0
    assert main(["predict", str(d["scene"]), "-m", str(tmp / f"run_{name}"), "--aoi", str(holdout), "--out",
                 str(tmp / f"pred_{name}"), "--no-progress"]) == 0  # fmt: skip
    assert main(["evaluate", str(tmp / f"pred_{name}"), "--truth", str(d["labels"]), "--aoi", str(holdout)]) == 0
    return json.loads((tmp / f"pred_{name}" / "eval.json").read_text())["object"]


def test_mined_false_positives_reduce_false_positives_on_a_holdout(tmp_path: Path) -> None:
    d = write_buildings_scene(tmp_path / "data", height=512, width=832, res=0.4, seed=11, attempts=150, slab_share=0.35)
    g = d["grid"]
    x0, y0, _, y1 = g.bounds
    train = box(x0, y0, x0 + 512 * 0.4, y1)  # columns 0..511
    hold = box(x0 + 576 * 0.4, y0, x0 + 832 * 0.4, y1)  # columns 576..831: two 32-px tiles away
    cov = write_labels(tmp_path / "train.gpkg", [train], g.crs)
    holdout = write_labels(tmp_path / "holdout.gpkg", [hold], g.crs)
    r1 = _round(tmp_path, "r1", d, cov, holdout, [])
    assert main(["mine", str(d["scene"]), "--model", str(tmp_path / "run_r1"), "--labels", str(d["labels"]),
                 "--coverage", str(cov), "--out", str(tmp_path / "mine"), "--no-progress"]) == 0  # fmt: skip
    fp = gpd.read_file(tmp_path / "mine" / "false_positives.gpkg", layer="false_positives")
    slabs = gpd.read_file(d["slabs"]).geometry.values
    slabs_train = slabs[shapely.covers(train, shapely.point_on_surface(slabs))]
    hit = shapely.STRtree(fp.geometry.values).query(slabs_train, predicate="intersects")[0] if len(fp) else []
    found = len(set(hit))
    on_slabs = shapely.STRtree(slabs).query(fp.geometry.values, predicate="intersects")[0] if len(fp) else []
    print(
        f"round 1 holdout FP {r1['fp']} (P {r1['precision']}, R {r1['recall']}); mined {len(fp)} FPs, "
        f"{len(set(on_slabs))} on slabs; {found} of {len(slabs_train)} training-area slabs found"
    )
    assert found >= max(1, len(slabs_train) // 2), "the mined layer must contain the unlabelled look-alikes"
    r2 = _round(tmp_path, "r2", d, cov, holdout, ["--hard-negatives", str(tmp_path / "mine" / "false_positives.gpkg")])
    ds = json.loads((tmp_path / "ds_r2" / "dataset.json").read_text())
    print(f"round 2 holdout FP {r2['fp']} (P {r2['precision']}, R {r2['recall']}); tiles {ds['counts']['realised']}")
    assert ds["counts"]["realised"]["mined_negative"] > 0
    assert r2["fp"] < r1["fp"], f"round 2 FP {r2['fp']} vs round 1 {r1['fp']}"
