"""geoseg evaluate: pixel metrics, one-to-one object matching, size bins, AOI clipping, error map, CLI."""

from __future__ import annotations

import json
import sqlite3

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geoseg.cli import main
from geoseg.evaluate import EvaluateConfig, merges_splits, object_metrics, object_scores, pixel_metrics, run
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


# --- IoU thresholds, merges and splits (pure functions on geometry arrays) -------------------
def test_object_scores_differ_by_iou_threshold():
    b = shapely.box
    truth = np.array([b(0, 0, 10, 10), b(20, 0, 30, 10), b(40, 0, 50, 10), b(60, 0, 70, 10)])
    pred = np.array([
        b(0, 0, 10, 9),    # IoU 0.9
        b(20, 0, 30, 6),   # IoU 0.6
        b(40, 0, 50, 3),   # IoU 0.3
        b(60, 0, 70, 2),   # IoU 0.2: no match at any threshold
    ])  # fmt: skip
    res = object_scores(pred, truth)
    assert list(res) == ["0.25", "0.5", "0.75"]
    assert [res[k]["tp"] for k in res] == [3, 2, 1]
    assert res["0.25"]["f1"] == pytest.approx(3 / 4) and res["0.75"]["recall"] == pytest.approx(1 / 4)
    assert res["0.5"]["mean_matched_iou"] == pytest.approx((0.9 + 0.6) / 2)
    # one-to-one at a low threshold: one prediction over two truths (IoU 0.5 and 0.25) matches one only
    two = object_scores(np.array([b(0, 0, 20, 10)]), np.array([b(0, 0, 10, 10), b(15, 0, 20, 10)]), (0.25,))
    assert (two["0.25"]["tp"], two["0.25"]["fn"]) == (1, 1)
    # classes: a road-labelled prediction never matches a building truth
    cls = object_scores(pred[:1], truth[:1], (0.5,), pred_classes=["road"], truth_classes=["building"])
    assert cls["0.5"]["tp"] == 0 and cls["0.5"]["by_class"]["building"]["fn"] == 1
    # empty inputs: defined counts, undefined ratios
    e = object_scores(np.array([], dtype=object), truth, (0.5,))["0.5"]
    assert (e["n_pred"], e["fn"], e["precision"], e["recall"]) == (0, 4, None, 0.0)


def test_merges_and_splits_on_hand_made_polygons():
    b = shapely.box
    truth = np.array([
        b(0, 0, 10, 10), b(12, 0, 22, 10),   # merged by one prediction
        b(40, 0, 50, 10),                    # split in two halves
        b(60, 0, 70, 10), b(70, 0, 80, 10),  # one prediction covers all of the first and 5 % of the second
        b(100, 0, 110, 10),                  # two predictions, one covering only 5 %
    ])  # fmt: skip
    pred = np.array([
        b(0, 0, 22, 10),
        b(40, 0, 45, 10), b(45, 0, 50, 10),
        b(60, 0, 70.5, 10),
        b(100, 0, 109.5, 10), b(109.5, 0, 120, 10),
    ])  # fmt: skip
    ms = merges_splits(pred, truth)
    assert (ms["merges"], ms["merged_truths"], ms["splits"], ms["split_preds"]) == (1, 2, 1, 2)
    assert (ms["n_pred"], ms["n_truth"], ms["min_cover"]) == (6, 6, 0.1)
    # 10 % exactly counts (inclusive); below does not
    edge = merges_splits(np.array([b(0, 0, 11, 10)]), np.array([b(0, 0, 10, 10), b(10, 0, 20, 10)]))
    assert edge["merges"] == 1
    assert merges_splits(np.array([b(0, 0, 10.9, 10)]), np.array([b(0, 0, 10, 10), b(10, 0, 20, 10)]))["merges"] == 0
    # a stricter min_cover drops the merge made with 10-50 % covers; classes separate pairs
    assert merges_splits(pred, truth, min_cover=0.6)["splits"] == 0
    cls = merges_splits(pred[:1], truth[:2], pred_classes=["building"], truth_classes=["building", "road"])
    assert cls["merges"] == 0 and cls["by_class"]["road"]["n_truth"] == 1


def test_object_scores_scale_to_tens_of_thousands():
    # 20,000 truths on a grid, predictions shifted by 10 % and every 10th pair merged: pairs stay O(n)
    n = 20_000
    x, y = (np.arange(n) % 200) * 10.0, (np.arange(n) // 200) * 10.0
    truth = shapely.box(x, y, x + 8, y + 8)
    pred = shapely.box(x + 0.8, y, x + 8.8, y + 8)
    res = object_scores(pred, truth, (0.5, 0.75))
    assert res["0.5"]["tp"] == n and res["0.75"]["tp"] == n  # IoU 7.2/8.8 = 0.82
    wide = shapely.box(x[::10], y[::10], x[::10] + 18, y[::10] + 8)  # covers truths i and i+1
    ms = merges_splits(wide, truth)
    assert ms["merges"] == n // 10 and ms["merged_truths"] == 2 * (n // 10)


def test_run_reports_by_iou_and_merges_splits(prediction, tmp_path):
    d, g = prediction
    truth = write_labels(tmp_path / "t.gpkg", [pixel_box(g, 10, 10, 20, 10), pixel_box(g, 10, 20, 20, 10)], g.crs)
    res = run(EvaluateConfig(predicted=str(d), truth=str(truth), out=str(tmp_path / "e.json")))
    o = res["object"]
    assert o["iou_threshold"] == 0.5 and o["tp"] == 1  # object A (20x20) has IoU 0.5 with each half
    assert list(o["by_iou"]) == ["0.25", "0.5", "0.75"] and o["by_iou"]["0.75"]["tp"] == 0
    assert set(o["by_iou"]["0.5"]["by_size"]) == {"small", "medium", "large"}
    ms = o["merges_splits"]
    assert (ms["merges"], ms["merged_truths"], ms["splits"]) == (1, 2, 0)
    assert ms["by_size"]["medium"]["merged_truths"] == 2 and ms["by_size"]["medium"]["merges"] == 1  # 50, 100 m²
    assert ms["by_class"]["building"]["merges"] == 1


# --- --sweep ----------------------------------------------------------------------------------
@pytest.fixture
def sweep_prediction(synth, tmp_path):
    """A 96x96 prediction whose best threshold is 0.6: false positives at p 0.57, half the truths at
    p 0.62, the other half at 0.9 joined by a p 0.42 bridge (a merge below 0.45), and a 1 m² p 0.9
    speck that only run.json's min_area (2 m²) removes."""
    fg = np.zeros((96, 96), np.float32)
    fg[8:20, 8:20] = 0.9  # A
    fg[8:20, 30:42] = 0.9  # B
    fg[12:16, 20:30] = 0.42  # bridge A-B
    fg[40:52, 8:20] = 0.62  # C
    fg[40:52, 40:52] = 0.62  # D
    fg[70:82, 8:20] = 0.57  # E: no truth
    fg[90:92, 90:92] = 0.9  # speck: 4 px = 1 m²
    probs = np.stack([np.where(fg > 0, (1 - fg) / 2, 0.9), np.where(fg > 0, fg, 0.05)])
    probs = np.concatenate([probs, np.where(fg > 0, (1 - fg) / 2, 0.05)[None]]).astype(np.float32)
    probs[2, 12:16, 20:30] = 0.05  # the bridge is a confident core (low boundary probability): it merges A and B
    d = tmp_path / "pred"
    d.mkdir()
    g = synth.write_probabilities(d / "probabilities.tif", probs)
    synth.write_classes(d / "classes.tif", np.argmax(probs, 0), g)
    (d / "run.json").write_text(json.dumps({"stage": "predict", "config": {"min_area": 2.0, "threshold": 0.5}}))
    truth = write_labels(tmp_path / "truth.gpkg", [pixel_box(g, r, c, 12, 12) for r, c in
                                                   ((8, 8), (8, 30), (40, 8), (40, 40))], g.crs)  # fmt: skip
    return d, truth


def test_sweep_table_and_plot(sweep_prediction, tmp_path, capsys):
    d, truth = sweep_prediction
    rc = main(["evaluate", str(d), "--truth", str(truth), "--sweep", "--out", str(tmp_path / "ev.json")])
    assert rc == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    sw = res["sweep"]
    assert sw["thresholds"] == pytest.approx([0.3 + 0.05 * i for i in range(11)])
    assert sw["min_area_m2"] == 2.0 and "config.min_area" in sw["min_area_source"]
    assert sw["best_object_f1"]["threshold"] == pytest.approx(0.6) and sw["best_object_f1"]["object_f1"] == 1.0
    assert sw["best_pixel_iou"]["threshold"] == pytest.approx(0.6)
    rows = {round(r["threshold"], 2): r for r in sw["rows"]}
    assert rows[0.6]["pixel_iou"]["building"] == pytest.approx(4 * 144 / (4 * 144 + 4))  # only the speck is FP
    assert (rows[0.4]["merges"], rows[0.4]["merged_truths"], rows[0.45]["merges"]) == (1, 2, 0)
    assert rows[0.55]["object_precision"] == pytest.approx(4 / 5) and rows[0.65]["object_recall"] == 0.5
    assert list(rows[0.6]["object_f1_by_iou"]) == ["0.25", "0.5", "0.75"]
    assert "<- best object F1" in cap.err and "0.60" in cap.err  # the table on stderr
    png = tmp_path / "ev_sweep.png"
    assert sw["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".geoseg-sweep-*"))  # temporary instances removed
    # explicit thresholds and min area override run.json: the speck now counts as a false positive
    res = run(EvaluateConfig(predicted=str(d), truth=str(truth), out=str(tmp_path / "e2.json"), sweep=True,
                             sweep_thresholds=(0.6,), sweep_min_area=0.0))  # fmt: skip
    assert res["sweep"]["rows"][0]["object_precision"] == pytest.approx(4 / 5)
    assert (tmp_path / "e2_sweep.png").exists()


def test_sweep_errors(sweep_prediction, tmp_path, capsys):
    d, truth = sweep_prediction
    rc = main(["evaluate", str(d), "--truth", str(truth), "--sweep-thresholds", "0.5,1.2", "--out",
               str(tmp_path / "x.json")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "1.2" in err and err.count("\n") == 1
    (d / "probabilities.tif").unlink()
    rc = main(["evaluate", str(d), "--truth", str(truth), "--sweep", "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "probabilities.tif" in err
    assert not (tmp_path / "x.json").exists()
