"""The QGIS Processing plugin (qgis_plugin/geoseg_processing) runs geoseg headless in real QGIS.

``qgis_process.bin`` (QGIS 3.22) runs "Predict buildings" and "Evaluate" on the sample AOI scene
with a tiny real model (random weights); a PyQGIS script runs Predict the way the GUI does
(``processing.runAndLoadResults``) and checks the styled layers land in the project.
Skipped only when QGIS (``qgis_process.bin`` and python3-qgis) is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
import shapely
import torch

from geoseg.train.model import build_model, save_model

SYS_PY = "/usr/bin/python3"
QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
ROOT = Path(__file__).resolve().parents[2]
SAMPLE_SCENE = ROOT / "sample_aoi" / "kampala_z20_cluster0.tif"
TRUTH = ROOT / "sample_aoi" / "buildings.geojson"
HOLDOUT = ROOT / "sample_aoi" / "holdout_aoi.geojson"


def _has_qgis() -> bool:
    if not os.access(QGIS_PROCESS, os.X_OK):
        return False
    try:
        r = subprocess.run([SYS_PY, "-c", "import qgis.core"], capture_output=True, timeout=60,
                           env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


pytestmark = [
    pytest.mark.qgis,
    pytest.mark.skipif(not _has_qgis(), reason="QGIS (qgis_process.bin, python3-qgis) not installed"),
]

PROGRESS = re.compile(r"^predict: (\d+)/(\d+) windows")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """QGIS environment: offscreen, a fresh profile (HOME), the plugin folder, geoseg of this checkout."""
    tmp = tmp_path_factory.mktemp("qgis_plugin")
    exe = tmp / "geoseg"  # this test's Python and checkout, whatever PYTHONPATH QGIS runs with
    exe.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m geoseg.cli "$@"\n')
    exe.chmod(0o755)
    (tmp / "home").mkdir()
    (tmp / "run").mkdir(mode=0o700)
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    e.update(QT_QPA_PLATFORM="offscreen", HOME=str(tmp / "home"), XDG_RUNTIME_DIR=str(tmp / "run"),
             QGIS_PLUGINPATH=str(ROOT / "qgis_plugin"), GEOSEG_EXECUTABLE=str(exe))  # fmt: skip
    r = subprocess.run([QGIS_PROCESS, "plugins", "enable", "geoseg_processing"], capture_output=True, text=True,
                       timeout=300, env=e)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return e


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample AOI scene, copied out of the repository (QGIS writes .aux.xml statistics beside scenes)."""
    return Path(shutil.copy(SAMPLE_SCENE, tmp_path_factory.mktemp("scene") / SAMPLE_SCENE.name))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real geoseg model directory: tiny smp Unet, random weights, 3 bands -> background/building, tile 64."""
    torch.manual_seed(0)
    net = build_model("unet", "tu-tf_efficientnet_lite0", 3, 2)
    cfg = {"arch": "unet", "encoder": "tu-tf_efficientnet_lite0", "in_channels": 3, "num_classes": 2,
           "classes": [{"id": 0, "name": "background", "color": "#000000"},
                       {"id": 1, "name": "building", "color": "#e31a1c"}],
           "boundary_class": None, "ignore_index": 255, "bands": ["red", "green", "blue"],
           "normalisation": {"mean": [128.0] * 3, "std": [64.0] * 3}, "tile_size": 64, "resolution_m": 0.15,
           "dataset": "synthetic", "date_range": None}  # fmt: skip
    return save_model(tmp_path_factory.mktemp("model") / "model", net, cfg)


@pytest.fixture(scope="module")
def aoi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small square (a sixth of the holdout AOI's width) at the holdout AOI's centre, in the scene CRS."""
    with rasterio.open(SAMPLE_SCENE) as ds:
        crs = ds.crs
    hold = gpd.read_file(HOLDOUT).to_crs(crs).geometry.union_all()
    c = hold.centroid
    half = (hold.bounds[2] - hold.bounds[0]) / 6
    path = tmp_path_factory.mktemp("aoi") / "aoi.gpkg"
    gpd.GeoDataFrame({"name": ["test"]}, geometry=[shapely.box(c.x - half, c.y - half, c.x + half, c.y + half)],
                     crs=crs).to_file(path)  # fmt: skip
    return path


def _run(env: dict[str, str], alg: str, **params: object) -> tuple[subprocess.CompletedProcess[str], dict]:
    cmd = [QGIS_PROCESS, "--json", "run", f"geoseg:{alg}", "--", *(f"{k}={v}" for k, v in params.items())]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    try:
        out = json.loads(r.stdout)
    except ValueError:
        out = {}
    return r, out


def test_predict_and_evaluate_with_qgis_process(tmp_path, env, scene, model, aoi):
    pred = tmp_path / "pred"
    r, out = _run(env, "predict", SCENE=scene, AOI=aoi, MODEL=model, OUTPUT=pred, DEVICE="cpu")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = out["results"]
    assert Path(res["OUTPUT"]) == pred
    # the outputs exist and open, on the scene's grid and CRS
    with rasterio.open(scene) as ds:
        scene_crs, scene_res = ds.crs, ds.res
    with rasterio.open(res["CLASSES"]) as ds:
        assert ds.crs == scene_crs and ds.res == pytest.approx(scene_res)
        classes = ds.read(1)
    assert set(map(int, set(classes.ravel().tolist()))) <= {0, 1, 255}
    with rasterio.open(res["PROBABILITIES"]) as ds:
        assert ds.count == 2
    gdf = gpd.read_file(pred / "instances.gpkg", layer="instances")
    assert gdf.crs == scene_crs
    assert len(gdf) == res["POLYGONS"] > 0
    assert res["INSTANCES"] == f"{pred / 'instances.gpkg'}|layername=instances"
    # geoseg's line progress reached the Processing log: several lines, ending at total/total
    log = out["log"]["info"]
    prog = [tuple(map(int, m.groups())) for m in map(PROGRESS.match, log) if m]
    assert len(prog) >= 2, log
    assert prog[-1][0] == prog[-1][1] and [n for n, _ in prog] == sorted(n for n, _ in prog)
    assert any(ln.split()[1:2] == ["predict"] for ln in log), log  # the geoseg command line is logged

    metrics = tmp_path / "eval" / "metrics.json"
    r, out = _run(env, "evaluate", PREDICTION=pred, TRUTH=TRUTH, AOI=aoi, OUTPUT=metrics)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = out["results"]
    m = json.loads(metrics.read_text())
    assert Path(res["OUTPUT"]) == metrics
    assert res["PIXEL_MEAN_IOU"] == pytest.approx(m["pixel"]["mean_iou"])
    assert res["OBJECT_F1"] == pytest.approx(m["object"]["f1"])
    assert res["N_PREDICTED"] == len(gdf)
    assert res["N_TRUTH"] == m["object"]["n_truth"] > 0
    assert 0.0 <= res["PIXEL_FOREGROUND_F1"] <= 1.0
    assert len(gpd.read_file(res["ERROR_MAP"], layer="errors")) > 0


def test_geoseg_errors_reach_the_log(tmp_path, env, scene, aoi):
    (tmp_path / "empty").mkdir()
    r, _out = _run(env, "predict", SCENE=scene, AOI=aoi, MODEL=tmp_path / "empty", OUTPUT=tmp_path / "pred")
    assert r.returncode != 0
    text = r.stdout + r.stderr
    assert "geoseg predict failed (exit 2): geoseg: error:" in text and "not a geoseg model directory" in text
    # a missing executable is one clear error, not a traceback
    bad = {**env, "GEOSEG_EXECUTABLE": str(tmp_path / "no-such-geoseg")}
    r, _ = _run(bad, "evaluate", PREDICTION=tmp_path, TRUTH=TRUTH, OUTPUT=tmp_path / "m.json")
    assert r.returncode != 0 and "cannot start geoseg" in r.stdout + r.stderr


GUI = r"""
import json, sys
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsVectorLayer
cfg = json.load(open(sys.argv[1]))
app = QgsApplication([], False)
app.initQgis()
sys.path.insert(0, "/usr/share/qgis/python/plugins")
from processing.core.Processing import Processing
Processing.initialize()
import processing
sys.path.insert(0, cfg["plugins"])
import geoseg_processing
from qgis.core import QgsProcessingException, QgsProcessingFeedback
from processing.core.ProcessingConfig import ProcessingConfig
plugin = geoseg_processing.classFactory(None)
plugin.initProcessing()
res = {"default_exe": ProcessingConfig.getSetting("GEOSEG_EXECUTABLE"), "layers": {}}
ProcessingConfig.setSettingValue("GEOSEG_EXECUTABLE", cfg["exe"])  # the Processing option, as in the dialog


class CancelAtFirstProgress(QgsProcessingFeedback):
    errors = []
    def setProgress(self, p):
        super().setProgress(p)
        if p > 0:
            self.cancel()
    def reportError(self, msg, fatal=False):
        self.errors.append(msg)
        super().reportError(msg, fatal)


fb = CancelAtFirstProgress()
try:
    processing.run("geoseg:predict", cfg["cancel_params"], feedback=fb)
    res["cancel"] = "finished"
except QgsProcessingException as e:
    res["cancel"] = str(e)
res["cancel_errors"] = fb.errors
out = processing.runAndLoadResults("geoseg:predict", cfg["params"])
res["output"] = out["OUTPUT"]
for lay in QgsProject.instance().mapLayers().values():
    d = {"valid": lay.isValid(), "renderer": lay.renderer().type() if lay.renderer() else None}
    if isinstance(lay, QgsVectorLayer):
        d["count"] = lay.featureCount()
        d["attr"] = lay.renderer().classAttribute() if d["renderer"] == "categorizedSymbol" else None
    res["layers"][lay.name()] = d
del lay
QgsProject.instance().clear()
plugin.unload()
print("RESULT " + json.dumps(res))
app.exitQgis()
"""


def test_predict_loads_styled_layers_like_the_gui(tmp_path, env, scene, model):
    with rasterio.open(scene) as ds:  # an extent (no AOI layer) of 96 x 96 pixels inside the holdout area
        b, px = ds.bounds, ds.res[0]
    hold = gpd.read_file(HOLDOUT).to_crs(3857).geometry.union_all().centroid
    x0, y0 = hold.x, hold.y
    ext = f"{x0},{x0 + 96 * px},{y0},{y0 + 96 * px} [EPSG:3857]"
    assert b.left < x0 < b.right and b.bottom < y0 < b.top
    pred = tmp_path / "pred"
    params = {"SCENE": str(scene), "EXTENT": ext, "MODEL": str(model), "OUTPUT": str(pred), "DEVICE": "cpu"}
    cancel = {**params, "EXTENT": None, "AOI": str(HOLDOUT), "OUTPUT": str(tmp_path / "cancelled")}
    cfg = {"plugins": str(ROOT / "qgis_plugin"), "params": params, "cancel_params": cancel,
           "exe": env["GEOSEG_EXECUTABLE"]}  # fmt: skip
    # the executable comes from the Processing option only (not the environment), in a fresh profile
    env = {k: v for k, v in env.items() if k != "GEOSEG_EXECUTABLE"}
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "gui.py").write_text(GUI)
    r = subprocess.run([SYS_PY, str(tmp_path / "gui.py"), str(tmp_path / "cfg.json")], capture_output=True,
                       text=True, timeout=600, env=env)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT ") :])
    assert res["default_exe"] != cfg["exe"]
    # Cancel stops geoseg (SIGTERM: it reports "terminated") and fails the algorithm; nothing half-written
    assert res["cancel"] == "cancelled", res
    assert any("geoseg: terminated" in e for e in res["cancel_errors"]), res
    assert not (tmp_path / "cancelled" / "classes.tif").exists()
    lays = res["layers"]
    stem = scene.stem
    assert set(lays) == {f"{stem} classes", f"{stem} buildings"}, lays
    # the styles geoseg wrote were applied: paletted classes, buildings categorized by class
    assert lays[f"{stem} classes"]["valid"] and lays[f"{stem} classes"]["renderer"] == "paletted"
    bld = lays[f"{stem} buildings"]
    assert bld["valid"] and bld["renderer"] == "categorizedSymbol" and bld["attr"] == "class"
    assert bld["count"] == len(gpd.read_file(pred / "instances.gpkg", layer="instances")) > 0
