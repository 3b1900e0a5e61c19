"""Processing algorithms "Predict buildings" and "Evaluate": thin wrappers over ``geoseg predict/evaluate``.

Each builds a geoseg command line from its parameters, runs it with :func:`runner.run_geoseg`
(progress and errors in the Processing log) and returns the output paths (and, for Evaluate,
headline metrics). Vector inputs that geoseg cannot read directly (memory layers, selections,
filtered layers, one layer of a multi-layer GeoPackage) are exported to a temporary GeoPackage.
"""

import json
import os
from pathlib import Path
from typing import ClassVar

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)

from .runner import run_geoseg

OGR_EXTS = ["gpkg", "geojson", "json", "shp", "fgb", "parquet"]


def _executable():
    from .provider import geoseg_executable

    return geoseg_executable()


def _vector_path(alg, parameters, name, context, feedback):
    """A file path geoseg can read for feature-source parameter ``name`` (exported when needed), or None."""
    if parameters.get(name) in (None, ""):
        return None
    path, layer = alg.parameterAsCompatibleSourceLayerPathAndLayerName(
        parameters, name, context, OGR_EXTS, "gpkg", feedback
    )
    if not path:
        return None
    if layer:  # one layer of a multi-layer file: geoseg reads the first layer, so export this one
        path = alg.parameterAsCompatibleSourceLayerPath(parameters, name, context, ["fgb"], "gpkg", feedback)
        if "|" in path:
            raise QgsProcessingException(f"{name}: {path}: cannot export the layer for geoseg")
    return path


def _raster_path(layer):
    """The GDAL source of a raster layer as geoseg takes it (path or https:// URL)."""
    if layer.providerType() != "gdal":
        raise QgsProcessingException(f"SCENE: {layer.name()}: not a GDAL raster (provider {layer.providerType()})")
    src = layer.source()
    if src.startswith("/vsicurl/"):
        src = src[len("/vsicurl/") :]
    return src


class _DefaultStyle(QgsProcessingLayerPostProcessorInterface):
    """Applies a loaded result layer's own style (classes.qml beside classes.tif, the default style stored
    in instances.gpkg / the error map): Processing loads result layers without their default style."""

    def postProcessLayer(self, layer, context, feedback):
        _, ok = layer.loadDefaultStyle()
        if not ok:
            feedback.pushInfo(f"{layer.source()}: no stored style; using the Processing default")
        layer.triggerRepaint()


_KEEP = []  # post-processors must outlive the algorithm (the GUI calls them after it returns)


def _load_on_completion(context, path, name, output, raster):
    details = QgsProcessingContext.LayerDetails(name, context.project(), output)
    details.layerTypeHint = QgsProcessingUtils.LayerHint.Raster if raster else QgsProcessingUtils.LayerHint.Vector
    pp = _DefaultStyle()
    _KEEP.append(pp)
    del _KEEP[:-16]
    details.setPostProcessor(pp)
    context.addLayerToLoadOnCompletion(path, details)


def _fail(what, rc, errors):
    last = errors[-1] if errors else f"exit code {rc}"
    raise QgsProcessingException(f"geoseg {what} failed (exit {rc}): {last}")


class _Base(QgsProcessingAlgorithm):
    def group(self):
        return "geoseg"

    def groupId(self):
        return "geoseg"

    def createInstance(self):
        return type(self)()


class PredictBuildingsAlgorithm(_Base):
    SCENE, AOI, EXTENT, MODEL, OUTPUT = "SCENE", "AOI", "EXTENT", "MODEL", "OUTPUT"
    DEVICE, TILE_SIZE, TTA, EXTRA = "DEVICE", "TILE_SIZE", "TTA", "EXTRA_ARGS"

    def name(self):
        return "predict"

    def displayName(self):
        return "Predict buildings"

    def shortHelpString(self):
        return (
            "Runs <b>geoseg predict</b> (the executable set in Processing options > Providers > geoseg) on a scene "
            "over an area of interest (a polygon layer, else an extent) with a trained geoseg model folder. "
            "Writes probabilities.tif and classes.tif (COGs), instances.gpkg (building polygons) and QGIS styles "
            "into the output folder; from the GUI the styled instances and classes are added to the project."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.SCENE, "Scene (GeoTIFF)"))
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.AOI, "Area of interest (polygons)", [QgsProcessing.TypeVectorPolygon], optional=True
            )
        )
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Area of interest as an extent (no AOI layer)",
                                                       optional=True))  # fmt: skip
        self.addParameter(QgsProcessingParameterFile(self.MODEL, "Model folder (geoseg run or its model/)",
                                                     behavior=QgsProcessingParameterFile.Folder))  # fmt: skip
        advanced = [
            QgsProcessingParameterString(self.DEVICE, "Device (auto, cpu, cuda, cuda:N)", defaultValue="auto"),
            QgsProcessingParameterNumber(
                self.TILE_SIZE,
                "Window size in pixels (blank: the model's)",
                QgsProcessingParameterNumber.Integer,
                optional=True,
                minValue=16,
            ),
            QgsProcessingParameterBoolean(self.TTA, "Test-time augmentation (8x slower)", defaultValue=False),
            QgsProcessingParameterString(self.EXTRA, "Further geoseg predict options", optional=True),
        ]
        for p in advanced:
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(p)
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Prediction folder"))
        self.addOutput(
            QgsProcessingOutputVectorLayer("INSTANCES", "Building polygons", QgsProcessing.TypeVectorPolygon)
        )
        self.addOutput(QgsProcessingOutputRasterLayer("CLASSES", "Classes"))
        self.addOutput(QgsProcessingOutputRasterLayer("PROBABILITIES", "Probabilities"))
        self.addOutput(QgsProcessingOutputFile("PROJECT", "QGIS project of the prediction"))
        self.addOutput(QgsProcessingOutputNumber("POLYGONS", "Number of polygons"))

    def processAlgorithm(self, parameters, context, feedback):
        scene = self.parameterAsRasterLayer(parameters, self.SCENE, context)
        if scene is None:
            raise QgsProcessingException("SCENE: no raster layer given")
        model = self.parameterAsFile(parameters, self.MODEL, context)
        out = self.parameterAsString(parameters, self.OUTPUT, context)
        out = self.parameterAsFileOutput(parameters, self.OUTPUT, context) or out
        args = ["predict", _raster_path(scene), "--model", model, "--out", out]
        aoi = _vector_path(self, parameters, self.AOI, context, feedback)
        if aoi:
            args += ["--aoi", aoi]
        elif parameters.get(self.EXTENT) not in (None, ""):
            crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
            if not crs.isValid():  # an extent given without CRS (and no project CRS): the scene's
                crs = scene.crs()
            if not crs.isValid() or not crs.authid():  # a custom CRS has no code geoseg can parse
                crs = QgsCoordinateReferenceSystem("EPSG:4326")
            r = self.parameterAsExtent(parameters, self.EXTENT, context, crs)
            args += ["--bbox", f"{r.xMinimum()!r},{r.yMinimum()!r},{r.xMaximum()!r},{r.yMaximum()!r},{crs.authid()}"]
        else:
            raise QgsProcessingException("give an area of interest: an AOI polygon layer or an extent")
        device = self.parameterAsString(parameters, self.DEVICE, context).strip() or "auto"
        args += ["--device", device]
        if parameters.get(self.TILE_SIZE) not in (None, ""):
            args += ["--tile-size", self.parameterAsInt(parameters, self.TILE_SIZE, context)]
        if self.parameterAsBool(parameters, self.TTA, context):
            args.append("--tta")
        extra = self.parameterAsString(parameters, self.EXTRA, context).strip()
        if extra:
            import shlex

            args += shlex.split(extra)
        rc, _, errors = run_geoseg(_executable(), args, feedback)
        if feedback.isCanceled():
            raise QgsProcessingException("cancelled")
        if rc != 0:
            _fail("predict", rc, errors)
        outp = Path(out)
        res = {
            self.OUTPUT: str(outp),
            "INSTANCES": str(outp / "instances.gpkg") + "|layername=instances",
            "CLASSES": str(outp / "classes.tif"),
            "PROBABILITIES": str(outp / "probabilities.tif"),
            "PROJECT": str(outp / "project.qgs"),
            "POLYGONS": _polygon_count(outp),
        }
        for p in ("classes.tif", "instances.gpkg"):
            if not (outp / p).exists():
                raise QgsProcessingException(f"{outp / p}: geoseg predict exited 0 but wrote no {p}")
        # the GUI loads these when the algorithm finishes (qgis_process ignores it); the styles come with
        # the files: classes.qml beside classes.tif, the default style stored in instances.gpkg
        stem = Path(_raster_path(scene)).stem
        _load_on_completion(context, res["CLASSES"], f"{stem} classes", "CLASSES", raster=True)
        _load_on_completion(context, res["INSTANCES"], f"{stem} buildings", "INSTANCES", raster=False)
        return res


def _polygon_count(out):
    try:
        import sqlite3

        with sqlite3.connect(f"file:{out / 'instances.gpkg'}?mode=ro", uri=True) as con:
            return int(con.execute('SELECT COUNT(*) FROM "instances"').fetchone()[0])
    except Exception:
        return -1


class EvaluateAlgorithm(_Base):
    PREDICTION, TRUTH, AOI, CLASS_FIELD, OUTPUT = "PREDICTION", "TRUTH", "AOI", "CLASS_FIELD", "OUTPUT"
    IOU = "IOU"
    HEADLINE: ClassVar[dict] = {  # output name -> (description, path in the metrics JSON)
        "PIXEL_MEAN_IOU": ("Pixel mean IoU (foreground classes)", ("pixel", "mean_iou")),
        "PIXEL_FOREGROUND_F1": ("Pixel F1, all foreground", ("pixel", "foreground", "f1")),
        "OBJECT_PRECISION": ("Object precision", ("object", "precision")),
        "OBJECT_RECALL": ("Object recall", ("object", "recall")),
        "OBJECT_F1": ("Object F1", ("object", "f1")),
        "N_PREDICTED": ("Predicted objects", ("object", "n_pred")),
        "N_TRUTH": ("Truth objects", ("object", "n_truth")),
    }

    def name(self):
        return "evaluate"

    def displayName(self):
        return "Evaluate"

    def shortHelpString(self):
        return (
            "Runs <b>geoseg evaluate</b> on a prediction folder (classes.tif + instances.gpkg) against truth "
            "polygons: pixel IoU/F1 per class and one-to-one object precision/recall/F1. Writes the metrics JSON "
            "and a per-tile error map (GeoPackage); returns the headline numbers as outputs."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile(self.PREDICTION, "Prediction folder",
                                                     behavior=QgsProcessingParameterFile.Folder))  # fmt: skip
        self.addParameter(QgsProcessingParameterFeatureSource(self.TRUTH, "Truth polygons",
                                                              [QgsProcessing.TypeVectorPolygon]))  # fmt: skip
        polygons = [QgsProcessing.TypeVectorPolygon]
        self.addParameter(QgsProcessingParameterFeatureSource(self.AOI, "Evaluate only inside (polygons)", polygons,
                                                              optional=True))  # fmt: skip
        self.addParameter(QgsProcessingParameterField(self.CLASS_FIELD, "Truth class field (blank: `class` if present)",
                                                      parentLayerParameterName=self.TRUTH, optional=True))  # fmt: skip
        iou = QgsProcessingParameterNumber(self.IOU, "IoU for an object match", QgsProcessingParameterNumber.Double,
                                           defaultValue=0.5, minValue=0.01, maxValue=1.0)  # fmt: skip
        iou.setFlags(iou.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(iou)
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, "Metrics JSON", "JSON files (*.json)"))
        self.addOutput(QgsProcessingOutputVectorLayer("ERROR_MAP", "Error map", QgsProcessing.TypeVectorPolygon))
        for key, (desc, _) in self.HEADLINE.items():
            self.addOutput(QgsProcessingOutputNumber(key, desc))

    def processAlgorithm(self, parameters, context, feedback):
        pred = self.parameterAsFile(parameters, self.PREDICTION, context)
        truth = _vector_path(self, parameters, self.TRUTH, context, feedback)
        if not truth:
            raise QgsProcessingException("TRUTH: no layer given")
        out = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        args = ["evaluate", pred, "--truth", truth, "--out", out,
                "--iou", repr(self.parameterAsDouble(parameters, self.IOU, context))]  # fmt: skip
        aoi = _vector_path(self, parameters, self.AOI, context, feedback)
        if aoi:
            args += ["--aoi", aoi]
        field = self.parameterAsFields(parameters, self.CLASS_FIELD, context)
        if field:
            args += ["--class-field", field[0]]
        rc, _, errors = run_geoseg(_executable(), args, feedback, stdout_to_log=False)  # stdout: the JSON again
        if feedback.isCanceled():
            raise QgsProcessingException("cancelled")
        if rc != 0:
            _fail("evaluate", rc, errors)
        try:
            with open(out, encoding="utf-8") as f:
                metrics = json.load(f)
        except (OSError, ValueError) as e:
            raise QgsProcessingException(f"{out}: cannot read the metrics geoseg wrote: {e}") from None
        res = {self.OUTPUT: out, "ERROR_MAP": metrics.get("error_map")}
        for key, (desc, path) in self.HEADLINE.items():
            v = metrics
            for k in path:
                v = v.get(k) if isinstance(v, dict) else None
            res[key] = v
            if v is not None:
                feedback.pushInfo(f"{desc}: {v:.4g}" if isinstance(v, float) else f"{desc}: {v}")
        if res["ERROR_MAP"]:
            _load_on_completion(context, res["ERROR_MAP"], "evaluation errors", "ERROR_MAP", raster=False)
        return res
