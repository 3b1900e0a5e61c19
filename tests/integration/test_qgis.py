"""The outputs open in real QGIS (PyQGIS under the system python, offscreen).

Skipped only when ``/usr/bin/python3 -c "import qgis.core"`` fails.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from geoseg.evaluate import EvaluateConfig
from geoseg.evaluate import run as run_evaluate
from geoseg.qgis import write_project, write_raster_styles
from geoseg.testing import write_labels, write_scene
from geoseg.vectorize import vectorize_prediction

SYS_PY = "/usr/bin/python3"
ROOT = Path(__file__).resolve().parents[2]


def _has_qgis() -> bool:
    try:
        r = subprocess.run([SYS_PY, "-c", "import qgis.core"], capture_output=True, timeout=60,
                           env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


pytestmark = [
    pytest.mark.qgis,
    pytest.mark.skipif(not _has_qgis(), reason="QGIS (python3-qgis) not installed for /usr/bin/python3"),
]

CLASSES = [
    {"id": 0, "name": "background", "color": "#000000"},
    {"id": 1, "name": "building", "color": "#e41a1c"},
    {"id": 2, "name": "road", "color": "#377eb8"},
    {"id": 3, "name": "boundary", "color": "#ffff33"},
]

CHECK = r"""
import json, sys
from qgis.core import (QgsApplication, QgsProject, QgsRasterLayer, QgsVectorLayer, QgsPointXY)
cfg = json.load(open(sys.argv[1]))
app = QgsApplication([], False)
app.initQgis()
res = {}
lay = {}
lay["probabilities"] = QgsRasterLayer(cfg["probabilities"], "probabilities")
lay["classes"] = QgsRasterLayer(cfg["classes"], "classes")
lay["instances"] = QgsVectorLayer(cfg["instances"] + "|layername=instances", "instances", "ogr")
lay["errors"] = QgsVectorLayer(cfg["errors"] + "|layername=errors", "errors", "ogr")
for k, l in lay.items():
    d = {"valid": l.isValid(), "crs": l.crs().authid(), "wkt_ok": l.crs().isValid()}
    if isinstance(l, QgsVectorLayer):
        d["count"] = l.featureCount()
        r = l.renderer()
        d["renderer"] = r.type() if r else None
        if r is not None and r.type() == "categorizedSymbol":
            d["attr"] = r.classAttribute()
            d["categories"] = [str(c.value()) for c in r.categories()]
            d["colors"] = [c.symbol().color().name() for c in r.categories()]
        if r is not None and r.type() == "graduatedSymbol":
            d["attr"] = r.classAttribute()
            d["ranges"] = len(r.ranges())
        d["fields"] = [f.name() for f in l.fields()]
    else:
        r = l.renderer()
        d["renderer"] = r.type() if r else None
        d["extent"] = [l.extent().xMinimum(), l.extent().yMinimum(), l.extent().xMaximum(), l.extent().yMaximum()]
        d["size"] = [l.width(), l.height()]
        if r is not None and r.type() == "paletted":
            d["palette"] = {str(int(c.value)): [c.label, c.color.name(), c.color.alpha()] for c in r.classes()}
        if r is not None and r.type() == "singlebandpseudocolor":
            d["band"] = r.band()
            x, y = cfg["probe_xy"]
            v, ok = l.dataProvider().sample(QgsPointXY(x, y), r.band())
            d["probe"] = v if ok else None
    res[k] = d
del r
lay.clear()
prj = QgsProject.instance()
ok = prj.read(cfg["project"])
res["project"] = {
    "read": bool(ok),
    "crs": prj.crs().authid(),
    "layers": sorted((l.name(), l.isValid(), l.crs().authid()) for l in prj.mapLayers().values()),
    "order": [l.name() for l in prj.layerTreeRoot().layerOrder()],
    "checked": [l.name() for l in prj.layerTreeRoot().checkedLayers()],
}
for l in prj.mapLayers().values():
    if isinstance(l, QgsVectorLayer) and l.name() == "instances":
        res["project"]["instances_renderer"] = l.renderer().type()
        res["project"]["instances_count"] = l.featureCount()
    if isinstance(l, QgsRasterLayer) and l.name() == "classes":
        res["project"]["classes_renderer"] = l.renderer().type()
prj.clear()
print("RESULT " + json.dumps(res))
app.exitQgis()
"""


def _qgis_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    env.setdefault("XDG_RUNTIME_DIR", "/tmp")
    return env


def _make_outputs(tmp: Path, epsg: int) -> dict[str, object]:
    """A scene, a prediction (probabilities, classes, instances, styles, project) and an error map."""
    h, w = 96, 128
    if epsg == 3857:
        origin, res = (3_626_000.0, 38_000.0), 0.3  # Kampala, Web Mercator
    else:
        origin, res = (500_000.0, 40_000.0), 0.5
    rng = np.random.default_rng(0)
    img = (rng.random((3, h, w)) * 80 + 60).astype(np.uint8)
    scene = tmp / "scene.tif"
    grid = write_scene(scene, img, crs=f"EPSG:{epsg}", origin=origin, res=res)
    lab = np.zeros((h, w), np.uint8)
    lab[10:40, 10:40] = 1
    lab[10:40, 40:70] = 1
    lab[10:40, 39:41] = 3  # contact between two touching buildings
    lab[60:90, 20:110] = 2  # a road
    lab[50:70, 80:100] = 1  # a building overlapping the road's edge
    out = tmp / "pred"
    out.mkdir()
    probs = np.full((4, h, w), 0.05, np.float32)
    for k in range(4):
        probs[k][lab == k] = 0.85
    nod = np.zeros((h, w), bool)
    nod[:, 120:] = True  # outside the AOI
    data = np.round(probs * 254).astype(np.uint8)
    data[:, nod] = 255
    prof = dict(driver="GTiff", width=w, height=h, crs=grid.crs, transform=grid.transform, tiled=True,
                blockxsize=32, blockysize=32)  # fmt: skip
    with rasterio.open(out / "probabilities.tif", "w", count=4, dtype="uint8", nodata=255, **prof) as ds:
        ds.write(data)
        ds.scales = (1 / 254,) * 4
        for c in CLASSES:
            ds.set_band_description(c["id"] + 1, c["name"])
    cls = np.where(nod, 255, lab).astype(np.uint8)
    with rasterio.open(out / "classes.tif", "w", count=1, dtype="uint8", nodata=255, **prof) as ds:
        ds.write(cls, 1)
        ds.write_colormap(1, {c["id"]: (*(int(c["color"][i : i + 2], 16) for i in (1, 3, 5)), 255) for c in CLASSES})
        ds.update_tags(CLASS_NAMES=json.dumps({c["id"]: c["name"] for c in CLASSES}))
    n = vectorize_prediction(out / "probabilities.tif", out / "instances.gpkg", classes=CLASSES, boundary_class=3,
                             block_size=32, scene="scene.tif")  # fmt: skip
    write_raster_styles(out / "classes.tif", out / "probabilities.tif", CLASSES)
    write_project(out, [scene], [out / "probabilities.tif", out / "classes.tif"], [out / "instances.gpkg"])
    truth = write_labels(tmp / "truth.gpkg", [grid.footprint.buffer(-5 * res)], f"EPSG:{epsg}", **{"class": ["road"]})
    ev = run_evaluate(EvaluateConfig(predicted=str(out), truth=str(truth), tile_px=32, class_field=None,
                                     out=str(out / "eval.json")))  # fmt: skip
    x, y = grid.transform * (25.5, 25.5)  # inside the first building
    return {"n": n, "grid": grid, "out": out, "scene": scene, "errors": ev["error_map"], "probe_xy": [x, y]}


@pytest.mark.parametrize("epsg", [32636, 3857])
def test_outputs_open_in_qgis(tmp_path, epsg):
    o = _make_outputs(tmp_path, epsg)
    out: Path = o["out"]  # type: ignore[assignment]
    cfg = {
        "probabilities": str(out / "probabilities.tif"),
        "classes": str(out / "classes.tif"),
        "instances": str(out / "instances.gpkg"),
        "errors": o["errors"],
        "project": str(out / "project.qgs"),
        "probe_xy": o["probe_xy"],
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "check.py").write_text(CHECK)
    r = subprocess.run([SYS_PY, str(tmp_path / "check.py"), str(tmp_path / "cfg.json")], capture_output=True,
                       text=True, timeout=300, env=_qgis_env())  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
    res = json.loads(line[len("RESULT ") :])
    want_crs = f"EPSG:{epsg}"
    gdf = gpd.read_file(out / "instances.gpkg", layer="instances", engine="pyogrio")
    assert gdf.crs == CRS.from_epsg(epsg)
    # every layer valid, in the scene CRS
    for k in ("probabilities", "classes", "instances", "errors"):
        assert res[k]["valid"], k
        assert res[k]["crs"] == want_crs, (k, res[k]["crs"])
    # rasters on the scene grid
    grid = o["grid"]
    assert res["classes"]["size"] == [grid.width, grid.height]
    assert res["classes"]["extent"] == pytest.approx(list(grid.bounds))
    # feature count equals geopandas', and matches what vectorize reported
    assert res["instances"]["count"] == len(gdf) == o["n"]
    assert len(gdf) == 4  # two touching buildings, a road, a building on the road's edge
    # the GeoPackage style was applied on open: categorized by class with the class colours
    inst = res["instances"]
    assert inst["renderer"] == "categorizedSymbol" and inst["attr"] == "class"
    assert inst["categories"] == ["building", "road"]
    assert inst["colors"] == ["#e41a1c", "#377eb8"]
    assert {"class", "class_id", "score", "area_m2", "scene", "scene_date"} <= set(inst["fields"])
    # raster sidecar styles were applied: paletted class colours/names; probability pseudocolour
    pal = res["classes"]["palette"]
    assert res["classes"]["renderer"] == "paletted"
    assert pal["1"][:2] == ["building", "#e41a1c"] and pal["2"][:2] == ["road", "#377eb8"]
    assert pal["0"][2] == 0  # background transparent
    assert res["probabilities"]["renderer"] == "singlebandpseudocolor"
    assert res["probabilities"]["band"] == 2  # building = class id 1 = band 2
    assert res["probabilities"]["probe"] == pytest.approx(round(0.85 * 254) / 254, abs=1e-6)  # scale applied
    # error map is graduated on error_fraction
    assert res["errors"]["renderer"] == "graduatedSymbol" and res["errors"]["attr"] == "error_fraction"
    # the project loads all layers valid, imagery at the bottom, polygons on top, scene CRS
    prj = res["project"]
    assert prj["read"] and prj["crs"] == want_crs
    assert [(n, v) for n, v, _ in prj["layers"]] == sorted(
        [("classes", True), ("instances", True), ("probabilities", True), ("scene", True)]
    )
    assert all(c == want_crs for _, _, c in prj["layers"])
    assert prj["order"] == ["instances", "classes", "probabilities", "scene"]
    assert "probabilities" not in prj["checked"] and "scene" in prj["checked"]
    assert prj["instances_renderer"] == "categorizedSymbol" and prj["classes_renderer"] == "paletted"
    assert prj["instances_count"] == len(gdf)
    # the project uses relative paths only
    text = (out / "project.qgs").read_text()
    assert str(tmp_path) not in text


def test_render_script_draws_the_prediction(tmp_path):
    o = _make_outputs(tmp_path, 32636)
    png = tmp_path / "render.png"
    r = subprocess.run([SYS_PY, str(ROOT / "scripts" / "render_qgis.py"), str(o["out"]), "--out", str(png),
                        "--width", "400", "--extent", "all"],
                       capture_output=True, text=True, timeout=300, env=_qgis_env())  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["layers"] == ["instances", "classes", "scene"]
    assert summary["crs"] == "EPSG:32636"
    with rasterio.open(png) as ds:
        rgb = ds.read([1, 2, 3]).astype(int)
    assert rgb.shape[2] == 400
    # the class colours are drawn: building red and road blue pixels present, and imagery grey
    red = (rgb[0] > rgb[1] + 60) & (rgb[0] > rgb[2] + 60)
    blue = (rgb[2] > rgb[0] + 40) & (rgb[2] > rgb[1] + 10)
    assert red.mean() > 0.05 and blue.mean() > 0.05
    # a bare directory (no project.qgs) renders too
    (o["out"] / "project.qgs").unlink()  # type: ignore[operator]
    r = subprocess.run([SYS_PY, str(ROOT / "scripts" / "render_qgis.py"), str(o["out"]), "--out", str(png),
                        "--width", "300", "--imagery", str(o["scene"])],
                       capture_output=True, text=True, timeout=300, env=_qgis_env())  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["layers"] == ["instances", "classes", "scene"]
    # an unusable source: one-line error, exit 2
    r = subprocess.run([SYS_PY, str(ROOT / "scripts" / "render_qgis.py"), str(tmp_path / "nothing"), "--out",
                        str(tmp_path / "x.png")],
                       capture_output=True, text=True, timeout=300, env=_qgis_env())  # fmt: skip
    assert r.returncode == 2 and "no valid layers" in r.stderr
