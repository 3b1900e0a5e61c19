"""Objects a mapper would accept, on a synthetic town nobody tuned on (issue 9, "Show it works").

A scene made here (rectangular buildings alone, in touching pairs and rows, look-alike slabs; a
size and ground resolution used nowhere else) goes through tile -> train -> predict with default
options, except the tile size and the epoch budget, which keep the test within a CPU minute or two.
The instances must score object F1 >= 0.8 at IoU 0.5, contain no polygon below the derived minimum
area, and touching pairs must come out as two polygons.
"""

from __future__ import annotations

import json
from collections import defaultdict

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geoseg.cli import main
from geoseg.testing import write_buildings_scene

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("town")
    d = write_buildings_scene(tmp / "data", height=896, width=1152, res=0.4, seed=7)
    assert main(["tile", str(d["scene"]), "--labels", str(d["labels"]), "--out", str(tmp / "ds"),
                 "--tile-size", "128", "--no-progress"]) == 0  # fmt: skip
    assert main(["train", str(tmp / "ds"), "--out", str(tmp / "run"), "--epochs", "15", "--no-progress"]) == 0
    g = d["grid"]
    x0, y0, x1, y1 = g.bounds
    bbox = f"{x0},{y0},{x1},{y1},{g.crs.to_string()}"
    assert main(["predict", str(d["scene"]), "-m", str(tmp / "run"), "--bbox", bbox, "--out", str(tmp / "pred"),
                 "--no-progress"]) == 0  # fmt: skip
    return {**d, "tmp": tmp}


def _matches(pred: np.ndarray, truth: list) -> dict[int, int]:
    """truth index -> predicted index with IoU >= 0.5 (unique at that threshold)."""
    tree = shapely.STRtree(pred)
    out = {}
    for i, t in enumerate(truth):
        for j in tree.query(t, predicate="intersects"):
            p = pred[j]
            if shapely.area(shapely.intersection(p, t)) / shapely.area(shapely.union(p, t)) >= 0.5:
                out[i] = int(j)
    return out


def test_default_pipeline_objects_f1_min_area_and_touching_pairs(town: dict) -> None:
    tmp = town["tmp"]
    ev = json.loads((tmp / "pred" / "run.json").read_text())
    post = ev["postprocess"]
    assert post["source"]["min_area_m2"] in ("calibrated", "derived")
    cfg = json.loads((tmp / "run" / "model" / "config.json").read_text())
    assert cfg["objects"]["per_class"]["1"]["count"] == len(town["buildings"])

    pred = gpd.read_file(tmp / "pred" / "instances.gpkg", layer="instances")
    assert len(pred) > 0
    assert pred["area_m2"].min() >= post["min_area_m2"] - 1e-9  # no speckle below the derived minimum
    assert post["min_area_m2"] >= 4 * 0.4**2  # never fewer than 4 pixels

    geoms = pred.geometry.values
    truth = town["buildings"]
    m = _matches(np.asarray(geoms), truth)
    tp = len(m)
    precision, recall = tp / len(pred), tp / len(truth)
    f1 = 2 * precision * recall / (precision + recall)
    assert f1 >= 0.8, f"object F1 {f1:.3f} (P {precision:.3f}, R {recall:.3f}, {len(pred)} polygons, {len(truth)} true)"

    groups: dict[int, list[int]] = defaultdict(list)
    for i, gid in enumerate(town["groups"]):
        groups[gid].append(i)
    pairs = [g for g in groups.values() if len(g) == 2]
    assert len(pairs) >= 10
    separated = sum(1 for a, b in pairs if a in m and b in m and m[a] != m[b])
    merged = sum(1 for a, b in pairs if shapely.area(shapely.intersection(geoms, truth[a])).max() > 0
                 and np.argmax(shapely.area(shapely.intersection(geoms, truth[a])))
                 == np.argmax(shapely.area(shapely.intersection(geoms, truth[b]))))  # fmt: skip
    assert separated / len(pairs) >= 0.8, f"{separated} of {len(pairs)} touching pairs separated, {merged} merged"
