"""geoseg mine: the comparison (exact FP/FN sets), the review grid, and a run with a real (tiny) model."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from shapely.geometry import box

from geoseg.errors import ConfigError
from geoseg.mine import MineConfig, compare_objects, inside, rank_cells, review_grid
from geoseg.qgis import read_gpkg_style
from geoseg.testing import write_buildings_scene, write_labels, write_random_model
from geoseg.tile.hardneg import MINED_FIELD, read_hard_negatives


def test_compare_objects_exact_sets() -> None:
    truth = [box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10), box(60, 0, 70, 10)]
    tcls = ["house", "house", "house", "shed"]
    pred = [
        box(0, 0, 10, 9),  # IoU 0.9 with truth 0 -> match
        box(20, 0, 24, 10),  # IoU 0.4 with truth 1 -> FP (and truth 1 FN)
        box(100, 0, 110, 10),  # no overlap -> FP
        box(60, 0, 70, 10),  # same shape as truth 3 but other class -> FP (and truth 3 FN)
        box(40, 0, 50, 10),  # exact -> match
        box(40.5, 0, 50, 10),  # duplicate of the same truth: one-to-one -> FP
    ]
    pcls = ["house", "house", "house", "house", "house", "house"]
    c = compare_objects(pred, pcls, truth, tcls, iou=0.5)
    assert c.false_positives.tolist() == [1, 2, 3, 5]
    assert c.false_negatives.tolist() == [1, 3]
    assert c.pred_best_iou[1] == pytest.approx(0.4)
    assert c.pred_best_iou[3] == 0.0  # other class: no pair at all
    assert c.truth_best_iou[1] == pytest.approx(0.4)
    # a lower threshold turns the 0.4 pair into a match
    c2 = compare_objects(pred, pcls, truth, tcls, iou=0.4)
    assert c2.false_positives.tolist() == [2, 3, 5] and c2.false_negatives.tolist() == [3]
    empty = compare_objects([], [], truth, tcls)
    assert empty.false_negatives.tolist() == [0, 1, 2, 3] and len(empty.false_positives) == 0


def test_inside_uses_representative_point() -> None:
    region = box(0, 0, 10, 10)
    geoms = [box(1, 1, 2, 2), box(8, 8, 30, 30), box(-5, 2, 9, 4), box(20, 20, 21, 21)]
    assert inside(geoms, region).tolist() == [True, False, True, False]
    assert inside([], region).tolist() == []


def test_rank_cells_ties() -> None:
    assert rank_cells(np.array([0.2, 0.9, 0.2, 0.5]), np.array([0, 0, 3, 0])).tolist() == [4, 1, 3, 2]


def _prob_raster(path: Path, bg: np.ndarray, res: float = 1.0) -> Affine:
    """A 2-band uint8 probabilities.tif (scale 1/254, nodata 255) with background probability ``bg``."""
    tr = Affine(res, 0, 1000.0, 0, -res, 2000.0)
    raw = np.where(np.isnan(bg), 255, np.round(np.nan_to_num(bg) * 254)).astype(np.uint8)
    fg = np.where(raw == 255, 255, 254 - raw).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=bg.shape[1], height=bg.shape[0], count=2, dtype="uint8",
                       crs="EPSG:32636", transform=tr, nodata=255) as ds:  # fmt: skip
        ds.write(np.stack([raw, fg]))
        ds.scales = (1 / 254, 1 / 254)
    return tr


def test_review_grid_statistics(tmp_path: Path) -> None:
    bg = np.ones((20, 30))  # certain background everywhere ...
    bg[0:10, 10:20] = 0.5  # ... a coin flip in cell (0, 1)
    bg[10:20, 20:30] = 0.0  # ... certain foreground in cell (1, 2)
    bg[10:20, 0:10] = np.nan  # nodata in cell (1, 0): not listed
    tr = _prob_raster(tmp_path / "p.tif", bg)
    # annotated: the left half of cell (0, 0) and nothing else -> that cell has 50 unannotated pixels (listed)
    ann = box(1000.0, 2000.0 - 10, 1005.0, 2000.0)
    pts = [shapely.Point(tr * (25, 15)), shapely.Point(tr * (26, 12))]
    polys, st = review_grid(tmp_path / "p.tif", ann, cell=10, threshold=0.5, object_points=pts)
    cells = {(int(r), int(c)): i for i, (r, c) in enumerate(zip(st["row_off"], st["col_off"], strict=True))}
    assert set(cells) == {(0, 0), (0, 10), (0, 20), (10, 10), (10, 20)}
    assert st["pixels"][cells[(0, 0)]] == 50
    assert st["uncertainty"][cells[(0, 10)]] == pytest.approx(1.0, abs=0.01)
    assert st["uncertainty"][cells[(0, 0)]] == pytest.approx(0.0)
    assert st["foreground"][cells[(10, 20)]] == 1.0 and st["objects"][cells[(10, 20)]] == 2
    assert st["score"][cells[(10, 20)]] == 1.0 and st["score"][cells[(10, 10)]] == 0.0
    assert polys[cells[(10, 20)]].equals(box(1020, 1980, 1030, 1990))


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="--iou"):
        MineConfig(scenes=("a.tif",), model="m", labels="l", out="o", iou=0)
    with pytest.raises(ConfigError, match="--review-cell"):
        MineConfig(scenes=("a.tif",), model="m", labels="l", out="o", review_cell=4)
    assert MineConfig(scenes="a.tif", model="m", labels="l", out="o").scenes == ("a.tif",)  # type: ignore[arg-type]


def _model(path: Path, tile: int = 64) -> Path:
    return write_random_model(path, tile_size=tile, seed=3, mean=128.0, std=8.0,
                              postprocess={"threshold": 0.5, "min_area_m2": 0.5})  # fmt: skip


def test_mine_run_layers_are_consistent(tmp_path: Path) -> None:
    from geoseg.cli import main

    d = write_buildings_scene(tmp_path / "data", height=192, width=256, res=0.5, seed=1)
    model = _model(tmp_path / "model")
    g = d["grid"]
    x0, y0, x1, y1 = g.bounds
    cov = write_labels(tmp_path / "cov.gpkg", [box(x0, y0, (x0 + x1) / 2, y1)], g.crs)
    out = tmp_path / "mine"
    rc = main(["mine", str(d["scene"]), "--model", str(model), "--labels", str(d["labels"]), "--coverage", str(cov),
               "--out", str(out), "--no-progress", "--scene-date", "2020-01-01"])  # fmt: skip
    assert rc == 0
    mj = json.loads((out / "mine.json").read_text())
    c = mj["counts"]
    assert mj["model"]["weights_sha256"] and mj["model"]["config"]["tile_size"] == 64
    pred = gpd.read_file(out / "predict" / "scene" / "instances.gpkg", layer="instances")
    fp = gpd.read_file(out / "false_positives.gpkg", layer="false_positives")
    fn = gpd.read_file(out / "false_negatives.gpkg", layer="false_negatives")
    rv = gpd.read_file(out / "review.gpkg", layer="review")
    assert c["false_positives"] == len(fp) and c["false_negatives"] == len(fn) and c["review_cells"] == len(rv)
    assert c["matched"] + c["false_positives"] + c["ambiguous"] == c["predicted_inside_coverage"]
    assert c["matched"] + c["false_negatives"] == c["labels_inside_coverage"]
    # independent check of the FP set: predictions inside the coverage with no same-class label at IoU >= 0.5
    region = box(x0, y0, (x0 + x1) / 2, y1)
    labels = gpd.read_file(d["labels"])
    ins = pred[shapely.covers(region, shapely.point_on_surface(pred.geometry.values))]
    expect = 0
    for geom in ins.geometry.values:
        ious = [shapely.area(shapely.intersection(geom, t)) / shapely.area(shapely.union(geom, t))
                for t in labels.geometry.values]  # fmt: skip
        expect += max(ious, default=0) < 0.5
    assert len(fp) == expect  # (one-to-one may add duplicates; this random model's blobs are disjoint)
    assert {"class", "score", "area_m2", "best_iou", MINED_FIELD} <= set(fp.columns)
    assert (fp[MINED_FIELD] == mj["model"]["weights_sha256"]).all() if len(fp) else True
    assert len(rv) > 0 and rv["rank"].tolist() == list(range(1, len(rv) + 1))
    assert not shapely.intersects(shapely.buffer(region, -1e-6), rv.geometry.values).any()  # outside coverage only
    for path, layer in ((out / "false_positives.gpkg", "false_positives"), (out / "false_negatives.gpkg",
                        "false_negatives"), (out / "review.gpkg", "review")):  # fmt: skip
        assert read_gpkg_style(path, layer)
    assert (out / "run.json").exists() and not (out / ".geoseg-stage").exists()
    layers = read_hard_negatives((str(out / "false_positives.gpkg"),))
    assert layers.sources[0]["kind"] == "mined" and layers.lookalikes is None
    assert read_hard_negatives((str(d["slabs"]),)).sources[0]["kind"] == "look-alike"
