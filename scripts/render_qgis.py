#!/usr/bin/python3
"""Render a geoseg prediction as QGIS draws it, headless, to a PNG or JPEG (e.g. ``docs/qgis_render.jpg``).

Runs with the *system* Python that has PyQGIS (not the geoseg virtualenv)::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 scripts/render_qgis.py sample_run/predict \\
        --out docs/qgis_render.jpg [--width 1400] [--extent instances|classes|all] [--imagery SCENE.tif]

``SOURCE`` is a ``project.qgs`` or a prediction directory (its ``project.qgs`` is used when
present, else ``classes.tif`` + ``instances.gpkg`` with their stored styles, over ``--imagery``).
The visible layers of the project's layer tree are drawn in their order with the styles geoseg
wrote (``.qml`` sidecars, GeoPackage ``layer_styles``). Prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="project.qgs or a prediction directory")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--width", type=int, default=1400, help="image width in pixels (height follows the extent)")
    ap.add_argument("--extent", default="instances", help="zoom to the layer whose name contains this, or 'all'")
    ap.add_argument("--imagery", type=Path, action="append", default=[], help="imagery under a bare directory")
    ap.add_argument("--margin", type=float, default=0.03, help="extent margin (fraction)")
    ap.add_argument("--dpi", type=int, default=96)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        from qgis.core import (
            QgsApplication,
            QgsCoordinateTransform,
            QgsMapRendererParallelJob,
            QgsMapSettings,
            QgsProject,
            QgsRasterLayer,
            QgsRectangle,
            QgsVectorLayer,
        )
        from qgis.PyQt.QtCore import QSize
        from qgis.PyQt.QtGui import QColor
    except ImportError:
        print("render_qgis: PyQGIS not found; run with the system python3 that has QGIS", file=sys.stderr)
        return 2

    app = QgsApplication([], False)
    app.initQgis()
    project = QgsProject.instance()
    summary: dict[str, object] = {}
    rc = 0
    try:
        src = args.source
        proj_file = src if src.suffix == ".qgs" else src / "project.qgs"
        if proj_file.exists():
            if not project.read(str(proj_file)):
                raise RuntimeError(f"{proj_file}: QGIS could not read the project")
            layers = project.layerTreeRoot().checkedLayers()  # top first
        else:
            layers = []
            for p in reversed(args.imagery):
                layers.append(QgsRasterLayer(str(p), p.stem))
            if (src / "classes.tif").exists():
                layers.append(QgsRasterLayer(str(src / "classes.tif"), "classes"))
            if (src / "instances.gpkg").exists():
                layers.append(QgsVectorLayer(f"{src / 'instances.gpkg'}|layername=instances", "instances", "ogr"))
            for lay in layers:
                project.addMapLayer(lay)
            layers = list(reversed(layers))
            if layers:
                project.setCrs(layers[-1].crs())
        layers = [lay for lay in layers if lay.isValid()]
        if not layers:
            raise RuntimeError(f"{src}: no valid layers to render")
        crs = project.crs() if project.crs().isValid() else layers[-1].crs()

        def extent_of(lay: object) -> QgsRectangle:
            ct = QgsCoordinateTransform(lay.crs(), crs, project)
            return ct.transformBoundingBox(lay.extent())

        pick = [lay for lay in layers if args.extent != "all" and args.extent.lower() in lay.name().lower()]
        if pick and isinstance(pick[0], QgsVectorLayer) and pick[0].featureCount() == 0:
            pick = []  # nothing detected: show the whole prediction instead
        ext = None
        for lay in pick or [lay for lay in layers if "prob" not in lay.name().lower()] or layers:
            e = extent_of(lay)
            if ext is None:
                ext = QgsRectangle(e)
            else:
                ext.combineExtentWith(e)
        ext = ext.buffered(max(ext.width(), ext.height()) * args.margin)
        width = int(args.width)
        height = max(1, round(width * ext.height() / max(ext.width(), 1e-12)))

        settings = QgsMapSettings()
        settings.setLayers(layers)
        settings.setDestinationCrs(crs)
        settings.setExtent(ext)
        settings.setOutputSize(QSize(width, height))
        settings.setOutputDpi(args.dpi)
        settings.setBackgroundColor(QColor(255, 255, 255))
        job = QgsMapRendererParallelJob(settings)
        job.start()
        job.waitForFinished()
        img = job.renderedImage()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fmt = "JPG" if args.out.suffix.lower() in (".jpg", ".jpeg") else "PNG"
        tmp = args.out.with_name(f".{args.out.stem}.tmp{args.out.suffix or '.png'}")
        if not img.save(str(tmp), fmt, 88 if fmt == "JPG" else -1):
            raise RuntimeError(f"{args.out}: could not write the {fmt} image")
        os.replace(tmp, args.out)
        summary = {
            "out": str(args.out),
            "size": [width, height],
            "crs": crs.authid(),
            "extent": [ext.xMinimum(), ext.yMinimum(), ext.xMaximum(), ext.yMaximum()],
            "layers": [lay.name() for lay in layers],
            "errors": [str(e.message) for e in job.errors()],
        }
        del job, settings, img, layers, pick
    except RuntimeError as e:
        print(f"render_qgis: error: {e}", file=sys.stderr)
        rc = 2
    finally:
        project.clear()  # drop every layer reference before exitQgis (it segfaults otherwise)
        app.exitQgis()
    if rc == 0:
        print(json.dumps(summary))
    return rc


if __name__ == "__main__":
    sys.exit(main())
