"""ClassTable: one reader/writer of the class table (dataset.json, model config, GeoTIFF tags)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from geoseg.classes import BOUNDARY_COLOR, PALETTE, ClassTable, default_color
from geoseg.errors import ConfigError
from geoseg.grid import Grid
from geoseg.predict.stitch import RowsOut
from geoseg.predict.writer import ChunkStore, assemble_cogs
from geoseg.qgis import _foreground
from geoseg.tile.labels import class_table
from geoseg.train.metrics import score_classes
from geoseg.vectorize import read_prediction_classes


def _write_classes_tif(out_dir, table: ClassTable):
    """classes.tif written by geoseg predict's own writer (tags + colour table) from one row chunk."""
    grid = Grid(CRS.from_epsg(32633), from_origin(500000, 6000000, 1, 1), 8, 8)
    store = ChunkStore(out_dir / "work")
    k = table.num_classes
    store.write(RowsOut(0, 0, np.zeros((k, 8, 8), np.uint8), np.zeros((8, 8), np.uint8)))
    _, cls_tif = assemble_cogs(store, grid, out_dir, classes=table, float_output=False, tags={"MODEL": "/nowhere"})
    return cls_tif


@pytest.mark.parametrize("boundary", [True, False])
def test_round_trip_dataset_model_tags(tmp_path, boundary):
    """dataset.json -> model config -> classes.tif tags (+ colour table) -> back: the same table."""
    info = {"classes": class_table(["building", "tree"], boundary), "boundary_class": 3 if boundary else None}
    ds_table = ClassTable.from_dataset_json(info)
    assert ds_table.to_json() == info["classes"]  # the on-disk form is unchanged
    assert ds_table.foreground == (1, 2)
    assert ds_table.boundary == (3 if boundary else None)
    model_cfg = {"classes": ds_table.to_json(), "boundary_class": ds_table.boundary, "num_classes": 4}
    m_table = ClassTable.from_model_config(model_cfg)
    assert m_table == ds_table
    tif = _write_classes_tif(tmp_path, m_table)
    with rasterio.open(tif) as src:
        colors = {i: "#{:02x}{:02x}{:02x}".format(*rgba[:3]) for i, rgba in src.colormap(1).items() if i < 255}
        t_table = ClassTable.from_tags(src.tags(), colors)
    assert t_table == ds_table
    classes, bnd = read_prediction_classes(tif)  # the reader evaluate/vectorize use
    assert ClassTable.of(classes, bnd) == ds_table


def test_dataset_json_adds_missing_background_and_boundary():
    t = ClassTable.from_dataset_json({"classes": [{"id": 1, "name": "building", "color": "#ff0000"}],
                                      "boundary_class": 2})  # fmt: skip
    assert t.ids == (0, 1, 2)
    assert t.names == {0: "background", 1: "building", 2: "boundary"}
    assert t.colors[2] == BOUNDARY_COLOR and t.colors[0] == "#000000"
    assert t.foreground == (1,)
    with pytest.raises(ConfigError, match="no 'classes' list"):
        ClassTable.from_dataset_json({"classes": []})


def test_default_colours_are_one_palette():
    t = ClassTable.of([{"id": 0, "name": "background"}, {"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    assert t.colors == {0: "#000000", 1: PALETTE[0], 2: PALETTE[1]}
    assert default_color(17) == PALETTE[0]  # wraps around
    assert ClassTable.of(t.to_json()) == t


def test_foreground_and_boundary_inference():
    rows = [{"id": 0, "name": "background"}, {"id": 1, "name": "house"}, {"id": 2, "name": "Boundary"}]
    assert ClassTable.of(rows).foreground == (1, 2)  # no boundary unless told or inferred
    assert ClassTable.of(rows, infer_boundary=True).boundary == 2
    assert ClassTable.of(rows, 2).foreground == (1,)
    # qgis: a class merely named like an edge is an object class (it used to be dropped from styles)
    edge = [{"id": 0, "name": "background"}, {"id": 1, "name": "edge"}, {"id": 2, "name": "boundary"}]
    assert [c["id"] for c in _foreground(edge)] == [1]
    assert score_classes(4, 3) == [1, 2] and score_classes(2, None) == [1]


def test_tags_without_class_names_and_bad_tables():
    assert ClassTable.from_tags({"MODEL": "x"}) is None
    assert ClassTable.from_tags({"CLASS_NAMES": "not json"}) is None
    t = ClassTable.from_tags({"class_names": '{"0": "background", "1": "a"}', "BOUNDARY_CLASS": "1"})
    assert t is not None and t.boundary == 1 and t.foreground == ()
    with pytest.raises(ConfigError, match="duplicate"):
        ClassTable.of([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])
    with pytest.raises(ConfigError, match="boundary class 5"):
        ClassTable.of([{"id": 0, "name": "background"}], 5)


def test_functions_taking_classes_accept_a_table():
    from geoseg.qgis import classes_qml, instances_qml, probability_qml

    info = {"classes": class_table(["building", "tree"], True), "boundary_class": 3}
    t = ClassTable.from_dataset_json(info)
    rows = info["classes"]
    assert classes_qml(t) == classes_qml(rows)
    assert instances_qml(t) == instances_qml(rows)
    assert probability_qml(t) == probability_qml(rows, 3)
    assert 'value="building"' in instances_qml(t) and 'value="boundary"' not in instances_qml(t)
