"""Post-processing defaults (geoseg.postprocess) and their calibration on validation tiles (geoseg.train.calibrate)."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.errors import ConfigError
from geoseg.postprocess import MIN_OBJECT_PX, derived_min_area_m2, object_area_summary, resolve_postprocess
from geoseg.train.calibrate import calibrate, tile_object_counts, truth_instances

CLASSES = [{"id": 0, "name": "background"}, {"id": 1, "name": "building"}, {"id": 2, "name": "boundary"}]


def _objects(areas: list[float], res: float = 0.5) -> dict:
    return object_area_summary({1: areas}, res)


def test_area_summary_quantiles_and_derived_rule() -> None:
    areas = list(np.linspace(10.0, 200.0, 100))
    obj = _objects(areas)
    q = obj["per_class"]["1"]["area_m2"]
    assert obj["per_class"]["1"]["count"] == 100
    assert q["p50"] == pytest.approx(np.quantile(areas, 0.5)) and q["p02"] == pytest.approx(np.quantile(areas, 0.02))
    value, source = derived_min_area_m2(obj, 0.5, [1])
    assert source == "derived" and value == pytest.approx(0.5 * np.quantile(areas, 0.02))
    # tiny labels: the floor of MIN_OBJECT_PX pixels wins, so no object is ever a few isolated pixels
    value, _ = derived_min_area_m2(_objects([0.1, 0.2, 0.3]), 0.5, [1])
    assert value == pytest.approx(MIN_OBJECT_PX * 0.25)
    # no label statistics: the floor, marked as a generic default
    assert derived_min_area_m2(None, 0.3, [1]) == (pytest.approx(MIN_OBJECT_PX * 0.09), "default")


def test_resolution_order_option_calibrated_derived_default() -> None:
    mcfg = {"resolution_m": 0.5, "objects": _objects([20.0] * 50), "classes": CLASSES}
    p = resolve_postprocess(mcfg, fg_classes=[1])
    assert p.source == {"threshold": "default", "core_boundary_max": "default", "min_area_m2": "derived",
                        "fill_holes_m2": "derived", "simplify_px": "default"}  # fmt: skip
    assert (p.threshold, p.min_area_m2, p.fill_holes_m2) == (0.5, 10.0, 10.0)
    mcfg["postprocess"] = {"calibrated": True, "params": {"threshold": 0.35, "min_area_m2": 6.0}}
    p = resolve_postprocess(mcfg, fg_classes=[1], min_area_m2=2.0)
    assert (p.threshold, p.source["threshold"]) == (0.35, "calibrated")
    assert (p.min_area_m2, p.source["min_area_m2"]) == (2.0, "option")
    assert (p.fill_holes_m2, p.source["fill_holes_m2"]) == (10.0, "derived")
    with pytest.raises(ConfigError, match="threshold"):
        resolve_postprocess(mcfg, fg_classes=[1], threshold=1.5)


def _box(a: np.ndarray, r: int, c: int, h: int, w: int, v: int) -> None:
    a[r : r + h, c : c + w] = v


def test_tile_object_counts_scores_only_whole_objects() -> None:
    truth = np.zeros((40, 40), np.int32)
    pred = np.zeros((40, 40), np.int32)
    _box(truth, 5, 5, 8, 8, 1)  # matched by pred 1
    _box(pred, 5, 5, 8, 9, 1)
    _box(truth, 20, 5, 8, 8, 2)  # missed: FN
    _box(pred, 25, 25, 6, 6, 2)  # nothing there: FP
    _box(truth, 0, 30, 6, 6, 3)  # cut by the tile edge: not scored ...
    _box(pred, 1, 31, 6, 6, 3)  # ... nor the prediction overlapping it
    _box(pred, 35, 5, 1, 2, 4)  # 2-px speckle: FP unless the minimum size drops it
    ignore = np.zeros((40, 40), bool)
    counts = tile_object_counts(pred, np.ones(4, np.int16), truth, np.ones(3, np.int16), ignore, [1, 4])
    assert counts.tolist() == [[1, 2, 1], [1, 1, 1]]  # TP, FP, FN for min size 1 px and 4 px
    ignore[18:30, 0:5] = True  # now truth 2 touches ignore: not scored
    counts = tile_object_counts(pred, np.ones(4, np.int16), truth, np.ones(3, np.int16), ignore, [4])
    assert counts.tolist() == [[1, 1, 0]]


def test_truth_instances_split_touching_objects_by_the_boundary_class() -> None:
    mask = np.zeros((20, 30), np.uint8)
    _box(mask, 4, 4, 10, 20, 2)  # two touching buildings burned with a 1-px rim...
    _box(mask, 5, 5, 8, 8, 1)
    _box(mask, 5, 15, 8, 8, 1)
    labels, classes = truth_instances(mask, [1], 2)
    assert classes.tolist() == [1, 1]
    assert set(np.unique(labels[4:14, 4:24]).tolist()) == {1, 2}  # rim pixels joined to the nearest object


def _synthetic_probs(n_tiles: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tiles with 2-4 separate squares; p(building) 0.62 inside, 0.45 in a halo around, speckle at 0.56."""
    rng = np.random.default_rng(seed)
    t = 64
    probs = np.zeros((n_tiles, 3, t, t), np.float32)
    masks = np.zeros((n_tiles, t, t), np.uint8)
    for i in range(n_tiles):
        p = np.full((t, t), 0.1, np.float32)
        for k in range(rng.integers(2, 5)):
            r, c = 6 + 28 * (k // 2), 6 + 28 * (k % 2)
            masks[i, r : r + 16, c : c + 16] = 1
            p[r - 2 : r + 18, c - 2 : c + 18] = np.maximum(p[r - 2 : r + 18, c - 2 : c + 18], 0.45)  # blurred halo
            p[r : r + 16, c : c + 16] = 0.62
        speck = rng.random((t, t)) < 0.01
        p[speck & (masks[i] == 0)] = 0.56  # isolated confident pixels: noise
        probs[i, 1] = p
        probs[i, 2] = 0.05
        probs[i, 0] = 1 - p - 0.05
    return np.rint(probs * 254).astype(np.uint8), masks


def test_calibrate_finds_threshold_and_area_that_make_objects_right() -> None:
    probs, masks = _synthetic_probs(12)
    mcfg = {"classes": CLASSES[:2], "boundary_class": None, "resolution_m": 0.5, "ignore_index": 255,
            "objects": _objects([64.0] * 40)}  # fmt: skip
    block = calibrate(probs, masks, model_cfg=mcfg)
    assert block["calibrated"] and block["scores"]["f1"] == 1.0
    assert 0.45 < block["params"]["threshold"] <= 0.6  # above the halo, not above the objects
    assert block["params"]["min_area_m2"] > 0.25  # speckle (1 px = 0.25 m²) dropped
    assert block["scored_truth_objects"] >= 24


def test_calibrate_declines_with_too_few_objects() -> None:
    probs, masks = _synthetic_probs(2)
    masks[:, :, :] = 0
    mcfg = {"classes": CLASSES[:2], "boundary_class": None, "resolution_m": 0.5}
    block = calibrate(probs, masks, model_cfg=mcfg)
    assert block["calibrated"] is False and "scored validation objects" in block["reason"]


def test_validation_tiles_are_stitched_into_their_areas() -> None:
    """Overlapping val tiles of one block become one mosaic (an object across tile edges is whole again);
    tiles of another scene or far away stay separate areas."""
    from geoseg.train.calibrate import mosaic_tiles

    t = 16
    full = np.zeros((2, 40, 40), np.uint8)
    full[1, 10:22, 10:22] = 200  # an object across the tile edges at 16 and 24
    truth = np.zeros((40, 40), np.uint8)
    truth[10:22, 10:22] = 1
    offs = [(0, r, c) for r in (0, 8, 16, 24) for c in (0, 8, 16, 24)] + [(1, 0, 0), (0, 200, 200)]
    probs = np.stack([full[:, r : r + t, c : c + t] if s == 0 and r < 40 else full[:, :t, :t] for s, r, c in offs])
    masks = np.stack([truth[r : r + t, c : c + t] if s == 0 and r < 40 else truth[:t, :t] for s, r, c in offs])
    areas = mosaic_tiles(probs, masks, np.array(offs), 255)
    assert sorted(a.shape for a, _ in areas) == [(2, 16, 16), (2, 16, 16), (2, 40, 40)]
    big_p, big_m = next((a, m) for a, m in areas if a.shape[1] == 40)
    np.testing.assert_array_equal(big_p, full)
    np.testing.assert_array_equal(big_m, truth)
    labels, _ = truth_instances(big_m, [1], None)
    assert labels.max() == 1  # one whole, scorable object
