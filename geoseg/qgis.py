"""QGIS styling without QGIS: ``.qml`` sidecars, GeoPackage ``layer_styles``, and ``project.qgs``.

Everything here is XML/SQL written from Python (QGIS 3.22 format), so predict needs no QGIS at
run time. QGIS picks up ``NAME.qml`` next to ``NAME.tif`` automatically, applies the default
style of a GeoPackage layer from its ``layer_styles`` table on open, and opens ``project.qgs``
with all outputs over the imagery (paths relative to the project file).
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS

from geoseg.classes import ClassesLike, ClassTable, as_class_dicts, default_color, hex_rgb
from geoseg.io.output import atomic_path

__all__ = [
    "classes_qml",
    "graduated_qml",
    "instances_qml",
    "probability_qml",
    "style_gpkg",
    "write_project",
    "write_raster_styles",
]

QGIS_VERSION = "3.22.0-Białowieża"
_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _hex(color: str) -> str:
    r, g, b = hex_rgb(color)
    return f"#{r:02x}{g:02x}{b:02x}"


def _color(c: dict[str, Any]) -> str:
    return _hex(str(c.get("color") or default_color(int(c["id"]))))


def _foreground(classes: Sequence[dict[str, Any]], boundary_class: int | None = None) -> list[dict[str, Any]]:
    """The object classes (see :attr:`geoseg.classes.ClassTable.foreground`; without ``boundary_class``
    a class named ``boundary`` is the boundary class)."""
    return ClassTable.of(classes, boundary_class, infer_boundary=True).foreground_dicts()


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: Any) -> ET.Element:
    e = ET.SubElement(parent, tag, {k: str(v) for k, v in attrib.items()})
    if text is not None:
        e.text = text
    return e


def _qgis_root(**attrib: Any) -> ET.Element:
    return ET.Element("qgis", {"version": QGIS_VERSION, "styleCategories": "AllStyleCategories", **attrib})


def _to_string(root: ET.Element) -> str:
    ET.indent(root, space="  ")
    return _DOCTYPE + ET.tostring(root, encoding="unicode") + "\n"


def _min_max_origin(parent: ET.Element) -> None:
    mmo = _sub(parent, "minMaxOrigin")
    for tag, text in (
        ("limits", "None"),
        ("extent", "WholeRaster"),
        ("statAccuracy", "Estimated"),
        ("cumulativeCutLower", "0.02"),
        ("cumulativeCutUpper", "0.98"),
        ("stdDevFactor", "2"),
    ):
        _sub(mmo, tag, text)


def _pipe_tail(pipe: ET.Element) -> None:
    _sub(pipe, "brightnesscontrast", gamma=1, brightness=0, contrast=0)
    _sub(pipe, "huesaturation", colorizeStrength=100, colorizeOn=0, colorizeRed=255, colorizeBlue=128,
         colorizeGreen=128, grayscaleMode=0, saturation=0, invertColors=0)  # fmt: skip
    _sub(pipe, "rasterresampler", maxOversampling=2)
    _sub(pipe, "resamplingStage", "resamplingFilter")


def _fill_symbol(parent: ET.Element, name: str, fill_rgba: str, outline_rgba: str, width_mm: float = 0.4) -> None:
    sym = _sub(parent, "symbol", alpha=1, force_rhr=0, type="fill", clip_to_extent=1, name=name)
    lay = ET.SubElement(sym, "layer", {"locked": "0", "pass": "0", "enabled": "1", "class": "SimpleFill"})
    props = {
        "border_width_map_unit_scale": "3x:0,0,0,0,0,0",
        "color": fill_rgba,
        "joinstyle": "bevel",
        "offset": "0,0",
        "offset_map_unit_scale": "3x:0,0,0,0,0,0",
        "offset_unit": "MM",
        "outline_color": outline_rgba,
        "outline_style": "solid",
        "outline_width": str(width_mm),
        "outline_width_unit": "MM",
        "style": "solid",
    }
    opt = _sub(lay, "Option", type="Map")
    for k, v in props.items():
        _sub(opt, "Option", type="QString", value=v, name=k)
    for k, v in props.items():
        _sub(lay, "prop", k=k, v=v)


# ---------------------------------------------------------------------------------------------
# raster styles
# ---------------------------------------------------------------------------------------------
def _classes_pipe(classes: Sequence[dict[str, Any]], opacity: float = 1.0) -> ET.Element:
    pipe = ET.Element("pipe")
    rr = _sub(pipe, "rasterrenderer", band=1, alphaBand=-1, type="paletted", nodataColor="", opacity=opacity)
    _min_max_origin(rr)
    pal = _sub(rr, "colorPalette")
    for c in sorted(classes, key=lambda c: int(c["id"])):
        alpha = 0 if int(c["id"]) == 0 else 255  # background transparent: the imagery shows through
        _sub(pal, "paletteEntry", color=_color(c), label=c["name"], alpha=alpha, value=int(c["id"]))
    _pipe_tail(pipe)
    return pipe


def classes_qml(classes: ClassesLike, opacity: float = 0.5) -> str:
    """Paletted (unique values) style for ``classes.tif``: class colours and names, background clear,
    half transparent so imagery and instance outlines show through."""
    classes = as_class_dicts(classes)
    root = _qgis_root()
    root.append(_classes_pipe(classes, opacity))
    _sub(root, "blendMode", "0")
    return _to_string(root)


def _probability_pipe(cls: dict[str, Any], band: int) -> ET.Element:
    pipe = ET.Element("pipe")
    rr = _sub(pipe, "rasterrenderer", band=band, alphaBand=-1, classificationMin=0, classificationMax=1,
              type="singlebandpseudocolor", nodataColor="", opacity=1)  # fmt: skip
    _min_max_origin(rr)
    sh = _sub(rr, "rastershader")
    crs = _sub(sh, "colorrampshader", colorRampType="INTERPOLATED", classificationMode=1, minimumValue=0,
               labelPrecision=2, clip=0, maximumValue=1)  # fmt: skip
    col = _color(cls)
    for v, a in ((0.0, 0), (0.5, 110), (1.0, 230)):
        _sub(crs, "item", color=col, label=f"{v:g}", alpha=a, value=v)
    _pipe_tail(pipe)
    return pipe


def probability_qml(classes: ClassesLike, boundary_class: int | None = None) -> str:
    """Pseudocolour style for ``probabilities.tif`` showing the first foreground class probability.

    The ramp runs over probabilities 0..1 (QGIS applies the GDAL scale 1/254 of the uint8 file;
    float files hold 0..1): transparent at 0, the class colour at 1.
    """
    if boundary_class is None and isinstance(classes, ClassTable):
        boundary_class = classes.boundary
    classes = as_class_dicts(classes)
    fg = _foreground(classes, boundary_class) or [c for c in classes if int(c["id"]) != 0]
    cls = fg[0]
    root = _qgis_root()
    root.append(_probability_pipe(cls, int(cls["id"]) + 1))
    _sub(root, "blendMode", "0")
    return _to_string(root)


def _atomic_write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_raster_styles(
    classes_tif: Path, probabilities_tif: Path, classes: ClassesLike, *, boundary_class: int | None = None
) -> list[Path]:
    """Write ``classes.qml`` and ``probabilities.qml`` next to the rasters (QGIS loads them on open)."""
    out = []
    if classes_tif is not None:
        out.append(_atomic_write_text(Path(classes_tif).with_suffix(".qml"), classes_qml(classes)))
    if probabilities_tif is not None:
        qml = probability_qml(classes, boundary_class)
        out.append(_atomic_write_text(Path(probabilities_tif).with_suffix(".qml"), qml))
    return out


# ---------------------------------------------------------------------------------------------
# vector styles
# ---------------------------------------------------------------------------------------------
def _instances_renderer(classes: Sequence[dict[str, Any]], attr: str = "class") -> ET.Element:
    rend = ET.Element("renderer-v2", {"enableorderby": "0", "type": "categorizedSymbol", "forceraster": "0",
                                      "attr": attr, "referencescale": "-1", "symbollevels": "0"})  # fmt: skip
    cats = _sub(rend, "categories")
    syms = _sub(rend, "symbols")
    fg = _foreground(classes) or [c for c in classes if int(c["id"]) != 0]
    for i, c in enumerate(fg):
        _sub(cats, "category", label=c["name"], value=c["name"], render="true", symbol=i)
        r, g, b = hex_rgb(_color(c))
        _fill_symbol(syms, str(i), f"{r},{g},{b},60", f"{r},{g},{b},255", 0.6)
    _sub(rend, "rotation")
    _sub(rend, "sizescale")
    return rend


def instances_qml(classes: ClassesLike, attr: str = "class") -> str:
    """Categorized style for instance polygons: one category per foreground class (its name in
    ``attr``), semi-transparent fill in the class colour, opaque outline."""
    classes = as_class_dicts(classes)
    root = _qgis_root()
    root.append(_instances_renderer(classes, attr))
    _sub(root, "blendMode", "0")
    _sub(root, "featureBlendMode", "0")
    _sub(root, "layerOpacity", "1")
    _sub(root, "layerGeometryType", "2")
    return _to_string(root)


def graduated_qml(attr: str, ranges: Sequence[tuple[float, float, str, str]], fill_alpha: int = 150) -> str:
    """Graduated-colour polygon style on ``attr``: ``ranges`` = ``(lower, upper, "#rrggbb", label)``."""
    root = _qgis_root()
    rend = _sub(root, "renderer-v2", graduatedMethod="GraduatedColor", enableorderby=0, type="graduatedSymbol",
                forceraster=0, attr=attr, referencescale=-1, symbollevels=0)  # fmt: skip
    rngs = _sub(rend, "ranges")
    syms = _sub(rend, "symbols")
    for i, (lo, hi, color, label) in enumerate(ranges):
        _sub(rngs, "range", upper=f"{hi:.15f}", label=label, lower=f"{lo:.15f}", render="true", symbol=i)
        r, g, b = hex_rgb(color)
        _fill_symbol(syms, str(i), f"{r},{g},{b},{fill_alpha}", "60,60,60,200", 0.2)
    cm = _sub(rend, "classificationMethod", id="Custom")
    _sub(cm, "symmetricMode", astride=0, symmetrypoint=0, enabled=0)
    _sub(cm, "labelFormat", labelprecision=4, format="%1 - %2", trimtrailingzeroes=1)
    _sub(cm, "parameters")
    _sub(cm, "extraInformation")
    _sub(rend, "rotation")
    _sub(rend, "sizescale")
    _sub(root, "blendMode", "0")
    _sub(root, "featureBlendMode", "0")
    _sub(root, "layerOpacity", "1")
    _sub(root, "layerGeometryType", "2")
    return _to_string(root)


def _instances_sld(classes: Sequence[dict[str, Any]], layer: str, attr: str = "class") -> str:
    rules = []
    for c in _foreground(classes) or [c for c in classes if int(c["id"]) != 0]:
        col = _color(c)
        rules.append(
            f'<se:Rule><se:Name>{c["name"]}</se:Name><ogc:Filter xmlns:ogc="http://www.opengis.net/ogc">'
            f"<ogc:PropertyIsEqualTo><ogc:PropertyName>{attr}</ogc:PropertyName>"
            f"<ogc:Literal>{c['name']}</ogc:Literal></ogc:PropertyIsEqualTo></ogc:Filter>"
            f'<se:PolygonSymbolizer><se:Fill><se:SvgParameter name="fill">{col}</se:SvgParameter>'
            f'<se:SvgParameter name="fill-opacity">0.27</se:SvgParameter></se:Fill>'
            f'<se:Stroke><se:SvgParameter name="stroke">{col}</se:SvgParameter>'
            f'<se:SvgParameter name="stroke-width">1</se:SvgParameter></se:Stroke>'
            f"</se:PolygonSymbolizer></se:Rule>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<StyledLayerDescriptor xmlns="http://www.opengis.net/sld" version="1.1.0" '
        'xmlns:se="http://www.opengis.net/se" xmlns:ogc="http://www.opengis.net/ogc">'
        f"<NamedLayer><se:Name>{layer}</se:Name><UserStyle><se:Name>{layer}</se:Name>"
        f"<se:FeatureTypeStyle>{''.join(rules)}</se:FeatureTypeStyle></UserStyle></NamedLayer>"
        "</StyledLayerDescriptor>"
    )


_LAYER_STYLES_DDL = """
CREATE TABLE IF NOT EXISTS layer_styles (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  f_table_catalog TEXT(256), f_table_schema TEXT(256), f_table_name TEXT(256),
  f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, styleSLD TEXT,
  useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
  update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)"""


def style_gpkg(
    gpkg: Path,
    layer: str,
    classes: ClassesLike,
    *,
    qml: str | None = None,
    sld: str = "",
    style_name: str | None = None,
    description: str = "geoseg instances style",
) -> None:
    """Store a default QGIS style for ``layer`` in the GeoPackage's ``layer_styles`` table.

    Default: categorized by ``class`` with the class colours (see :func:`instances_qml`); pass
    ``qml`` for another style. Idempotent: an earlier style of the same name is replaced, and it
    becomes the layer's only default. The table is registered in ``gpkg_contents`` as
    ``attributes`` (as QGIS does) so the file stays a valid GeoPackage.
    """
    gpkg, classes = Path(gpkg), as_class_dicts(classes)
    name = style_name or layer
    qml_text = qml if qml is not None else instances_qml(classes)
    sld_text = sld if (sld or qml is not None) else _instances_sld(classes, layer)
    con = sqlite3.connect(gpkg)
    try:
        row = con.execute("SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)).fetchone()
        if row is None:
            from geoseg.errors import InputError

            raise InputError(f"{gpkg}: no geometry layer {layer!r} to style")
        geom_col = row[0]
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
        with con:
            con.execute(_LAYER_STYLES_DDL)
            con.execute(
                "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, last_change) "
                "VALUES ('layer_styles', 'attributes', 'layer_styles', ?)",
                (now,),
            )
            con.execute("DELETE FROM layer_styles WHERE f_table_name = ? AND styleName = ?", (layer, name))
            con.execute("UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_name = ?", (layer,))
            con.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, "
                "styleName, styleQML, styleSLD, useAsDefault, description, owner, ui, update_time) "
                "VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, 'geoseg', NULL, ?)",
                (layer, geom_col, name, qml_text, sld_text, description, now),
            )
    finally:
        con.close()


def read_gpkg_style(gpkg: Path, layer: str) -> str | None:
    """The default QML of ``layer`` from ``layer_styles`` (None if there is none)."""
    con = sqlite3.connect(f"file:{Path(gpkg)}?mode=ro", uri=True)
    try:
        row = con.execute(
            "SELECT styleQML FROM layer_styles WHERE f_table_name = ? ORDER BY useAsDefault DESC, id DESC LIMIT 1",
            (layer,),
        ).fetchone()
    except sqlite3.Error:
        row = None
    finally:
        con.close()
    return row[0] if row else None


# ---------------------------------------------------------------------------------------------
# project
# ---------------------------------------------------------------------------------------------
def _srs(parent: ET.Element, crs: CRS) -> None:
    s = _sub(parent, "spatialrefsys")
    epsg = crs.to_epsg()
    _sub(s, "wkt", crs.to_wkt())
    _sub(s, "proj4", crs.to_proj4() or "")
    _sub(s, "srsid", "0")
    _sub(s, "srid", str(epsg or 0))
    _sub(s, "authid", f"EPSG:{epsg}" if epsg else "")
    _sub(s, "description", crs.to_dict().get("proj", "") if not epsg else "")
    _sub(s, "projectionacronym", "")
    _sub(s, "ellipsoidacronym", "")
    _sub(s, "geographicflag", "true" if crs.is_geographic else "false")


def _extent(parent: ET.Element, tag: str, b: tuple[float, float, float, float]) -> None:
    e = _sub(parent, tag)
    for k, v in zip(("xmin", "ymin", "xmax", "ymax"), b, strict=True):
        _sub(e, k, repr(float(v)))


def _imagery_pipe(path: Path) -> ET.Element:
    """Multiband (RGB of bands 1-3) or grey style stretched to the 2-98 % range of a decimated read."""
    with rasterio.open(path) as ds:
        count, dtype = ds.count, ds.dtypes[0]
        f = max(1, int(max(ds.width, ds.height) / 512))
        bands = [1, 2, 3] if count >= 3 else [1]
        shape = (len(bands), max(1, ds.height // f), max(1, ds.width // f))
        # uint8 imagery is shown 0-255; others stretched on a decimated read (uses overviews if any)
        data = None if dtype == "uint8" else ds.read(bands, out_shape=shape, masked=True)
        alpha = count if count >= 4 and ds.colorinterp[count - 1] == rasterio.enums.ColorInterp.alpha else -1
    stretch = []
    for b in range(len(bands)):
        v = np.ma.compressed(data[b]) if data is not None else np.zeros(0)
        if v.size == 0:
            stretch.append((0.0, 255.0))
        else:
            lo, hi = np.percentile(v, [2, 98])
            stretch.append((float(lo), float(hi if hi > lo else lo + 1)))
    pipe = ET.Element("pipe")
    if len(bands) == 3:
        rr = _sub(pipe, "rasterrenderer", type="multibandcolor", redBand=1, greenBand=2, blueBand=3,
                  alphaBand=alpha, opacity=1, nodataColor="")  # fmt: skip
        _min_max_origin(rr)
        for tag, (lo, hi) in zip(("red", "green", "blue"), stretch, strict=True):
            ce = _sub(rr, f"{tag}ContrastEnhancement")
            _sub(ce, "minValue", repr(lo))
            _sub(ce, "maxValue", repr(hi))
            _sub(ce, "algorithm", "StretchToMinimumMaximum")
    else:
        rr = _sub(pipe, "rasterrenderer", type="singlebandgray", grayBand=1, gradient="BlackToWhite",
                  alphaBand=alpha, opacity=1, nodataColor="")  # fmt: skip
        _min_max_origin(rr)
        ce = _sub(rr, "contrastEnhancement")
        _sub(ce, "minValue", repr(stretch[0][0]))
        _sub(ce, "maxValue", repr(stretch[0][1]))
        _sub(ce, "algorithm", "StretchToMinimumMaximum")
    _pipe_tail(pipe)
    return pipe


def _sidecar_pipe(path: Path) -> ET.Element | None:
    qml = Path(path).with_suffix(".qml")
    if not qml.exists():
        return None
    try:
        return ET.fromstring(qml.read_text(encoding="utf-8").split("\n", 1)[1]).find("pipe")
    except (ET.ParseError, IndexError):
        return None


def _vector_layers(path: Path) -> list[tuple[str, str]]:
    """``(layer name, QGIS geometry word)`` for the geometry layers of a vector file."""
    import pyogrio

    out = []
    for name, gtype in pyogrio.list_layers(path):
        if gtype is None or name == "layer_styles":
            continue
        g = str(gtype).replace("Multi", "").replace(" Z", "").replace("25D", "")
        word = {"Polygon": "Polygon", "LineString": "Line", "Point": "Point"}.get(g, "Polygon")
        out.append((str(name), word))
    return out


def _rel(path: Path, base: Path) -> str:
    rel = os.path.relpath(Path(path).resolve(), Path(base).resolve())
    return rel if rel.startswith("..") else f"./{rel}"


def write_project(out_dir: Path, imagery: list[Path], rasters: list[Path], vectors: list[Path]) -> Path:
    """Write ``out_dir/project.qgs`` (QGIS 3.22) drawing, bottom to top: imagery, rasters, vectors.

    Paths are relative to ``out_dir``; the project CRS and initial extent are those of the first
    raster (or the first imagery). Raster styles come from the ``.qml`` sidecars, vector styles
    from the GeoPackage ``layer_styles`` table; imagery gets an RGB/grey 2-98 % stretch.
    Probability rasters start hidden when another raster is present. Written atomically.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first = next(iter([*rasters, *imagery]), None)
    if first is None:
        from geoseg.errors import InputError

        raise InputError(f"{out_dir}: write_project needs at least one raster")
    with rasterio.open(first) as ds:
        pcrs, pbounds = ds.crs, tuple(ds.bounds)

    layers: list[dict[str, Any]] = []  # bottom to top
    for kind, paths in (("imagery", imagery), ("raster", rasters)):
        for p in paths:
            p = Path(p)
            with rasterio.open(p) as ds:
                crs, bounds = ds.crs, tuple(ds.bounds)
            pipe = _imagery_pipe(p) if kind == "imagery" else _sidecar_pipe(p)
            layers.append({"type": "raster", "name": p.stem, "source": _rel(p, out_dir), "provider": "gdal",
                           "crs": crs, "bounds": bounds, "style": pipe, "path": p})  # fmt: skip
    for p in vectors:
        p = Path(p)
        import pyogrio

        for lname, geom in _vector_layers(p):
            info = pyogrio.read_info(p, layer=lname)
            crs = CRS.from_user_input(info["crs"]) if info.get("crs") else pcrs
            b = info.get("total_bounds")
            bounds = tuple(b) if b is not None and np.all(np.isfinite(b)) else pbounds
            qml = read_gpkg_style(p, lname) if p.suffix.lower() == ".gpkg" else None
            rend = None
            if qml:
                try:
                    rend = ET.fromstring(qml.split("\n", 1)[1] if qml.startswith("<!DOCTYPE") else qml).find(
                        "renderer-v2"
                    )
                except ET.ParseError:
                    rend = None
            name = lname if len(_vector_layers(p)) > 1 or lname == p.stem else f"{p.stem}"
            layers.append({"type": "vector", "name": name, "source": f"{_rel(p, out_dir)}|layername={lname}",
                           "provider": "ogr", "crs": crs, "bounds": bounds, "style": rend, "geometry": geom,
                           "path": p})  # fmt: skip
    n_rasters = sum(1 for lay in layers if lay["type"] == "raster")
    names = [lay["name"] for lay in layers]
    for lay in layers:  # several scenes: "classes" -> "scene_a/classes"
        if names.count(lay["name"]) > 1:
            lay["name"] = f"{lay['path'].parent.name}/{lay['name']}"
        lay["id"] = f"{lay['name']}_{uuid.uuid4().hex}"
        hide = lay["type"] == "raster" and "prob" in lay["name"].lower() and n_rasters > 1
        lay["checked"] = "Qt::Unchecked" if hide else "Qt::Checked"

    root = ET.Element("qgis", {"projectname": "geoseg", "version": QGIS_VERSION})
    _sub(root, "homePath", path="")
    _sub(root, "title", "geoseg")
    _srs(_sub(root, "projectCrs"), pcrs)
    tree = _sub(root, "layer-tree-group")
    _sub(_sub(tree, "customproperties"), "Option")
    for lay in reversed(layers):  # legend lists the top layer first
        _sub(tree, "layer-tree-layer", id=lay["id"], name=lay["name"], source=lay["source"],
             providerKey=lay["provider"], checked=lay["checked"], expanded=1, legend_exp="",
             legend_split_behavior=0, patch_size="-1,-1")  # fmt: skip
    co = _sub(tree, "custom-order", enabled=0)
    for lay in layers:
        _sub(co, "item", lay["id"])
    canvas = _sub(root, "mapcanvas", annotationsVisible=1, name="theMapCanvas")
    _sub(canvas, "units", "degrees" if pcrs.is_geographic else "meters")
    _extent(canvas, "extent", pbounds)
    _sub(canvas, "rotation", "0")
    _srs(_sub(canvas, "destinationsrs"), pcrs)
    _sub(canvas, "rendermaptile", "0")

    proj_layers = _sub(root, "projectlayers")
    for lay in layers:
        attrs: dict[str, Any] = {"type": lay["type"], "hasScaleBasedVisibilityFlag": 0, "maxScale": 0,
                                 "minScale": "1e+08", "styleCategories": "AllStyleCategories"}  # fmt: skip
        if lay["type"] == "vector":
            attrs.update(geometry=lay["geometry"], simplifyDrawingHints=0, simplifyLocal=1, labelsEnabled=0,
                         readOnly=0, wkbType=lay["geometry"])  # fmt: skip
        ml = _sub(proj_layers, "maplayer", **attrs)
        _extent(ml, "extent", lay["bounds"])
        _sub(ml, "id", lay["id"])
        _sub(ml, "datasource", lay["source"])
        _sub(ml, "layername", lay["name"])
        _srs(_sub(ml, "srs"), lay["crs"])
        if lay["type"] == "raster":
            _sub(ml, "provider", "gdal")
            style = lay["style"]
            if style is not None:
                ml.append(style)
            else:
                ml.append(_imagery_pipe(lay["path"]))
            _sub(ml, "blendMode", "0")
        else:
            _sub(ml, "provider", "ogr", encoding="UTF-8")
            if lay["style"] is not None:
                ml.append(lay["style"])
            else:
                rend = _sub(ml, "renderer-v2", type="singleSymbol", forceraster=0, symbollevels=0,
                            enableorderby=0, referencescale=-1)  # fmt: skip
                _fill_symbol(_sub(rend, "symbols"), "0", "255,127,0,60", "255,127,0,255")
            _sub(ml, "blendMode", "0")
            _sub(ml, "featureBlendMode", "0")
            _sub(ml, "layerOpacity", "1")
    props = _sub(root, "properties")
    paths_el = _sub(props, "Paths")
    _sub(paths_el, "Absolute", "false", type="bool")
    _sub(_sub(props, "SpatialRefSys"), "ProjectionsEnabled", "1", type="int")
    out = out_dir / "project.qgs"
    return _atomic_write_text(out, _to_string(root))
