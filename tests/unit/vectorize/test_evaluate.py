"""geoseg evaluate: pixel metrics, one-to-one object matching, size bins, AOI clipping, error map, CLI."""

from __future__ import annotations

import json
import sqlite3

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geoseg.cli import main
from geoseg.evaluate import EvaluateConfig, object_metrics, pixel_metrics, run
from geoseg.testing import pixel_box, write_labels


def test_pixel_metrics_match_an_independent_count():
    rng = np.random.default_rng(1)
    pred = rng.integers(0, 3, (50, 60))
    truth = rng.integers(0, 3, (50, 60))
    truth[rng.random((50, 60)) < 0.1] = 255
    pred[rng.random((50, 60)) < 0.1] = 255
    res = pixel_metrics(pred, truth, 3)
    valid = (pred != 255) & (truth != 255)
    for k in range(3):
        tp = int(np.sum((pred == k) & (truth == k) & valid))
        fp = int(np.sum((pred == k) & (truth != k) & valid))
        fn = int(np.sum((pred != k) & (truth == k) & valid))
        m = res["classes"][k]
        assert (m["tp"], m["fp"], m["fn"]) == (tp, fp, fn)
        assert m["iou"] == pytest.approx(tp / (tp + fp + fn))
        assert m["precision"] == pytest.approx(tp / (tp + fp))
        assert m["recall"] == pytest.approx(tp / (tp + fn))
        assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert res["pixels"] == int(valid.sum())
    assert res["accuracy"] == pytest.approx(np.mean(pred[valid] == truth[valid]))
    # a class absent from both has undefined (None) scores, not 0 or NaN
    assert pixel_metrics(np.zeros((4, 4)), np.zeros((4, 4)), 2)["classes"][1]["iou"] is None


def _gdf(geoms, **cols):
    return gpd.GeoDataFrame(cols, geometry=list(geoms), crs="EPSG:32636")


def test_object_metrics_one_to_one_at_iou_half():
    b = shapely.box
    truth = _gdf([b(0, 0, 10, 10), b(20, 0, 30, 10), b(40, 0, 50, 10), b(60, 0, 61, 1)])
    pred = _gdf([
        b(0, 0, 10, 10),      # IoU 1 with truth 0
        b(22, 0, 32, 10),     # IoU 80/120 with truth 1
        b(45, 0, 55, 10),     # IoU 50/150 with truth 2: no match
        b(100, 100, 105, 105),  # nothing
        b(1, 0, 11, 10),      # IoU 90/110 with truth 0, which is already taken: one-to-one -> FP
    ])  # fmt: skip
    res = object_metrics(pred, truth, iou=0.5, bins=(50, 200))
    assert (res["n_pred"], res["n_truth"], res["tp"], res["fp"], res["fn"]) == (5, 4, 2, 3, 2)
    assert res["precision"] == pytest.approx(2 / 5)
    assert res["recall"] == pytest.approx(2 / 4)
    assert res["f1"] == pytest.approx(2 * 2 / (5 + 4))
    assert res["mean_matched_iou"] == pytest.approx((1 + 80 / 120) / 2)
    # IoU exactly 0.5 counts (>=)
    assert object_metrics(_gdf([b(0, 0, 10, 10)]), _gdf([b(0, 0, 10, 5)]))["tp"] == 1


def test_object_matching_is_optimal_not_greedy():
    # overlapping truths: greedy by IoU takes P_x-T_a (0.905) and leaves P_y and T_b unmatched;
    # the optimal one-to-one assignment is P_x-T_b (0.739) + P_y-T_a (0.571)
    b = shapely.box
    truth = _gdf([b(0, 0, 10, 10), b(2, 0, 12, 10)])
    pred = _gdf([b(0.5, 0, 10.5, 10), b(-4, 0, 8, 10)])
    res = object_metrics(pred, truth)
    assert res["tp"] == 2 and res["precision"] == 1.0 and res["recall"] == 1.0


def test_object_metrics_by_size_and_class():
    b = shapely.box
    truth = _gdf([b(0, 0, 5, 5), b(10, 0, 20, 10), b(30, 0, 50, 20), b(60, 0, 70, 10)],
                 **{"class": ["building", "building", "building", "road"]})  # fmt: skip
    pred = _gdf([b(0, 0, 5, 5), b(30, 0, 50, 20), b(60, 0, 70, 10), b(100, 0, 110, 10)],
                **{"class": ["building", "building", "building", "road"]})  # fmt: skip
    res = object_metrics(pred, truth, bins=(50, 200))
    s = res["by_size"]
    assert list(s) == ["small", "medium", "large"]
    assert (s["small"]["n_truth"], s["small"]["tp_truth"]) == (1, 1)  # 25 m²
    assert (s["medium"]["n_truth"], s["medium"]["tp_truth"], s["medium"]["recall"]) == (2, 0, 0.0)  # 100 m²
    assert (s["medium"]["n_pred"], s["medium"]["tp_pred"]) == (2, 0)  # the road-class box matches nothing
    assert (s["large"]["n_truth"], s["large"]["tp_truth"], s["large"]["precision"]) == (1, 1, 1.0)  # 400 m²
    assert s["large"]["range_m2"] == [200.0, None]
    # class-aware matching: the building-labelled box over the road truth is not a match
    assert res["tp"] == 2
    assert res["by_class"]["road"] == pytest.approx(
        {"n_pred": 1, "n_truth": 1, "tp_pred": 0, "tp_truth": 0, "fp": 1, "fn": 1, "precision": 0.0,
         "recall": 0.0, "f1": 0.0})  # fmt: skip


@pytest.fixture
def prediction(synth, tmp_path):
    """classes.tif 64x64 @ 0.5 m with nodata in the 4 right columns, and its instances.gpkg."""
    lab = np.zeros((64, 64), np.uint8)
    lab[10:30, 10:30] = 1  # object A
    lab[10, 10:30] = 2  # its top rim predicted as boundary (counts as building)
    lab[40:50, 40:50] = 1  # object B (no truth)
    lab[:, 60:] = 255
    d = tmp_path / "pred"
    d.mkdir()
    g = synth.write_probabilities(d / "probabilities.tif", synth.probs_from_labels(np.where(lab == 255, 0, lab)))
    synth.write_classes(d / "classes.tif", lab, g)
    inst = gpd.GeoDataFrame({"class": ["building"] * 2, "class_id": [1, 1], "score": [0.9, 0.9]},
                            geometry=[pixel_box(g, 10, 10, 20, 20), pixel_box(g, 40, 40, 10, 10)],
                            crs=g.crs.to_wkt())  # fmt: skip
    inst.to_file(d / "instances.gpkg", layer="instances", engine="pyogrio")
    return d, g


def test_run_pixel_object_metrics_and_error_map(prediction, tmp_path):
    d, g = prediction
    truth = write_labels(tmp_path / "truth.gpkg",
                         [pixel_box(g, 15, 10, 20, 20), pixel_box(g, 40, 60, 10, 4)],  # 2nd only in nodata
                         g.crs, **{"class": ["building", "building"]})  # fmt: skip
    res = run(EvaluateConfig(predicted=str(d), truth=str(truth), tile_px=16))
    px = res["pixel"]["classes"]["building"]
    # A shifted by 5 rows: 15x20 overlap; FP = 5x20 of A + 10x10 of B; FN = 5x20
    assert (px["tp"], px["fp"], px["fn"]) == (300, 200, 100)
    assert px["iou"] == pytest.approx(300 / 600)
    assert res["pixel"]["pixels"] == 64 * 60  # nodata columns ignored
    assert "boundary" not in res["pixel"]["classes"]
    assert res["pixel"]["foreground"]["iou"] == pytest.approx(0.5)
    o = res["object"]
    assert (o["n_pred"], o["n_truth"], o["tp"]) == (2, 1, 1)  # truth in nodata was clipped away
    assert o["precision"] == 0.5 and o["recall"] == 1.0
    assert o["mean_matched_iou"] == pytest.approx(300 / 500)
    # eval.json next to the prediction, same content
    saved = json.loads((d / "eval.json").read_text())
    assert saved["pixel"]["classes"]["building"]["iou"] == px["iou"] and "geoseg_version" in saved
    # error map: 16 tiles of 16 px with valid pixels; counts add up to the pixel metrics
    err = gpd.read_file(res["error_map"], layer="errors")
    assert len(err) == 16 and err.crs == g.crs
    assert (err["tp"].sum(), err["fp"].sum(), err["fn"].sum()) == (300, 200, 100)
    assert err["pixels"].sum() == 64 * 60
    row = err[(err.row_off == 32) & (err.col_off == 32)].iloc[0]  # holds 8x8 of object B, all FP
    assert (row.tp, row.fp, row.fn) == (0, 64, 0) and row.error_fraction == pytest.approx(64 / 256)
    con = sqlite3.connect(res["error_map"])
    qml = con.execute("SELECT styleQML FROM layer_styles WHERE useAsDefault").fetchone()[0]
    con.close()
    assert 'type="graduatedSymbol"' in qml and 'attr="error_fraction"' in qml


def test_run_with_aoi_and_reprojected_truth(prediction, tmp_path):
    d, g = prediction
    truth = write_labels(tmp_path / "truth.geojson", [pixel_box(g, 15, 10, 20, 20)], g.crs)  # no class field
    truth4326 = tmp_path / "truth4326.gpkg"
    gpd.read_file(truth).to_crs(4326).to_file(truth4326)
    aoi = write_labels(tmp_path / "aoi.gpkg", [pixel_box(g, 0, 0, 64, 32)], g.crs)  # left half only
    res = run(EvaluateConfig(predicted=str(d), truth=str(truth4326), aoi=str(aoi), out=str(tmp_path / "e.json")))
    px = res["pixel"]["classes"]["building"]
    assert px["iou"] == pytest.approx(300 / 500, abs=0.02)  # object B is outside the AOI
    assert res["pixel"]["pixels"] == 64 * 32
    assert (res["object"]["n_pred"], res["object"]["tp"]) == (1, 1)
    assert (tmp_path / "e.json").exists() and (tmp_path / "e_errors.gpkg").exists()


def test_run_on_classes_tif_only(prediction, tmp_path):
    d, g = prediction
    truth = write_labels(tmp_path / "t.gpkg", [pixel_box(g, 10, 10, 20, 20)], g.crs)
    res = run(EvaluateConfig(predicted=str(d / "classes.tif"), truth=str(truth), out=str(tmp_path / "e.json")))
    assert res["pixel"]["classes"]["building"]["recall"] == 1.0
    assert res["object"] is None


def test_cli_evaluate(prediction, tmp_path, capsys):
    d, g = prediction
    truth = write_labels(tmp_path / "t.gpkg", [pixel_box(g, 10, 10, 20, 20)], g.crs, kind=["building"])
    out = tmp_path / "m.json"
    rc = main(["evaluate", str(d), "--truth", str(truth), "--out", str(out), "--class-field", "kind",
               "--size-bins", "10,1000"])  # fmt: skip
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["object"]["tp"] == 1 and list(printed["object"]["by_size"]) == ["small", "medium", "large"]
    assert json.loads(out.read_text())["object"]["by_size"]["medium"]["tp_truth"] == 1  # 100 m²
    bad = write_labels(tmp_path / "bad.gpkg", [pixel_box(g, 10, 10, 20, 20)], g.crs, kind=["tree"])
    rc = main(["evaluate", str(d), "--truth", str(bad), "--class-field", "kind", "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "tree" in err and "building" in err and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()
    rc = main(["evaluate", str(d), "--truth", str(tmp_path / "missing.gpkg")])
    assert rc == 2 and "missing.gpkg" in capsys.readouterr().err
