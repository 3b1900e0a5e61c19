"""QGIS styles and project written as XML/SQL from Python (the real QGIS check is in tests/integration)."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET

import geopandas as gpd
import numpy as np
import pyogrio
import shapely

from geoseg.qgis import classes_qml, instances_qml, probability_qml, style_gpkg, write_project, write_raster_styles
from geoseg.testing import write_scene

LAYER_STYLES_COLUMNS = [
    "id", "f_table_catalog", "f_table_schema", "f_table_name", "f_geometry_column", "styleName", "styleQML",
    "styleSLD", "useAsDefault", "description", "owner", "ui", "update_time",
]  # fmt: skip


def _xml(text: str) -> ET.Element:
    assert text.startswith("<!DOCTYPE qgis")
    return ET.fromstring(text.split("\n", 1)[1])


def test_raster_qml(synth, tmp_path):
    cl = _xml(classes_qml(synth.CLASSES))
    rr = cl.find("pipe/rasterrenderer")
    assert rr.get("type") == "paletted" and rr.get("band") == "1"
    entries = {e.get("value"): (e.get("label"), e.get("color"), e.get("alpha")) for e in rr.iter("paletteEntry")}
    assert entries == {"0": ("background", "#000000", "0"), "1": ("building", "#e41a1c", "255"),
                       "2": ("boundary", "#ffff33", "255")}  # fmt: skip
    pr = _xml(probability_qml(synth.CLASSES)).find("pipe/rasterrenderer")
    assert pr.get("type") == "singlebandpseudocolor" and pr.get("band") == "2"  # building, not boundary
    items = pr.findall("rastershader/colorrampshader/item")
    assert [float(i.get("value")) for i in items] == [0.0, 0.5, 1.0] and items[0].get("alpha") == "0"
    lab = np.zeros((8, 8), np.uint8)
    g = synth.write_probabilities(tmp_path / "probabilities.tif", synth.probs_from_labels(lab))
    synth.write_classes(tmp_path / "classes.tif", lab, g)
    paths = write_raster_styles(tmp_path / "classes.tif", tmp_path / "probabilities.tif", synth.CLASSES)
    assert [p.name for p in paths] == ["classes.qml", "probabilities.qml"]


def test_instances_style_in_gpkg_is_default_and_idempotent(synth, tmp_path):
    gpkg = tmp_path / "inst.gpkg"
    gdf = gpd.GeoDataFrame({"class": ["building"]}, geometry=[shapely.box(0, 0, 1, 1)], crs="EPSG:32636")
    gdf.to_file(gpkg, layer="instances", engine="pyogrio")
    style_gpkg(gpkg, "instances", synth.CLASSES)
    style_gpkg(gpkg, "instances", synth.CLASSES)  # again: replaces, does not duplicate
    con = sqlite3.connect(gpkg)
    cols = [r[1] for r in con.execute("PRAGMA table_info(layer_styles)")]
    rows = con.execute("SELECT f_table_name, f_geometry_column, useAsDefault, styleQML, styleSLD FROM layer_styles")
    rows = rows.fetchall()
    contents = con.execute("SELECT data_type FROM gpkg_contents WHERE table_name = 'layer_styles'").fetchall()
    con.close()
    assert cols == LAYER_STYLES_COLUMNS
    assert len(rows) == 1 and rows[0][:3] == ("instances", "geom", 1)
    rend = _xml(rows[0][3]).find("renderer-v2")
    assert rend.get("type") == "categorizedSymbol" and rend.get("attr") == "class"
    assert [c.get("value") for c in rend.iter("category")] == ["building"]  # not background/boundary
    assert "PolygonSymbolizer" in rows[0][4]
    assert contents == [("attributes",)]
    # still a readable GeoPackage with the same features
    assert len(gpd.read_file(gpkg, layer="instances")) == 1
    assert "instances" in [name for name, _ in pyogrio.list_layers(gpkg)]
    assert instances_qml(synth.CLASSES) == rows[0][3]


def test_project_xml(synth, tmp_path):
    scene = tmp_path / "scenes" / "scene.tif"
    scene.parent.mkdir()
    grid = write_scene(scene, np.zeros((3, 32, 32), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    lab = np.zeros((32, 32), np.uint8)
    synth.write_probabilities(out / "probabilities.tif", synth.probs_from_labels(lab))
    synth.write_classes(out / "classes.tif", lab, grid)
    write_raster_styles(out / "classes.tif", out / "probabilities.tif", synth.CLASSES)
    gdf = gpd.GeoDataFrame({"class": ["building"]}, geometry=[grid.footprint.buffer(-2)], crs=grid.crs.to_wkt())
    gdf.to_file(out / "instances.gpkg", layer="instances", engine="pyogrio")
    style_gpkg(out / "instances.gpkg", "instances", synth.CLASSES)
    p = write_project(out, [scene], [out / "probabilities.tif", out / "classes.tif"], [out / "instances.gpkg"])
    root = ET.fromstring(p.read_text().split("\n", 1)[1])
    tree = [e.get("name") for e in root.iter("layer-tree-layer")]
    assert tree == ["instances", "classes", "probabilities", "scene"]  # legend: top first
    sources = {e.get("name"): e.get("source") for e in root.iter("layer-tree-layer")}
    assert sources["scene"] == "../scenes/scene.tif" and sources["classes"] == "./classes.tif"
    assert sources["instances"] == "./instances.gpkg|layername=instances"
    assert str(tmp_path) not in p.read_text()
    assert root.find("projectCrs/spatialrefsys/authid").text == "EPSG:32636"
    layers = {m.find("layername").text: m for m in root.iter("maplayer")}
    assert layers["classes"].find("pipe/rasterrenderer").get("type") == "paletted"
    assert layers["scene"].find("pipe/rasterrenderer").get("type") == "multibandcolor"
    assert layers["instances"].find("renderer-v2").get("type") == "categorizedSymbol"
    assert not list(out.glob(".*tmp"))


def test_project_with_several_scenes_names_layers_by_folder(synth, tmp_path):
    out = tmp_path / "out"
    rasters = []
    for name in ("a", "b"):
        (out / name).mkdir(parents=True)
        lab = np.zeros((16, 16), np.uint8)
        g = synth.write_probabilities(out / name / "probabilities.tif", synth.probs_from_labels(lab))
        synth.write_classes(out / name / "classes.tif", lab, g)
        rasters += [out / name / "probabilities.tif", out / name / "classes.tif"]
    p = write_project(out, [], rasters, [])
    root = ET.fromstring(p.read_text().split("\n", 1)[1])
    names = [e.get("name") for e in root.iter("layer-tree-layer")]
    assert names == ["b/classes", "b/probabilities", "a/classes", "a/probabilities"]
    sources = [e.get("source") for e in root.iter("layer-tree-layer")]
    assert sources[0] == "./b/classes.tif"


def test_project_stretches_non_byte_imagery(tmp_path):
    from geoseg.testing import xy_image

    scene = tmp_path / "scene16.tif"
    write_scene(scene, xy_image(64, 64, 3, "uint16") * 10)
    p = write_project(tmp_path, [scene], [], [])
    root = ET.fromstring(p.read_text().split("\n", 1)[1])
    rr = root.find("projectlayers/maplayer/pipe/rasterrenderer")
    lo = float(rr.find("redContrastEnhancement/minValue").text)
    hi = float(rr.find("redContrastEnhancement/maxValue").text)
    assert 0 < lo < 100 < hi < 640  # band 1 = column * 10 (+10): a 2-98 % stretch, not 0-255
