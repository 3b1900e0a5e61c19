"""Class metadata of an existing prediction: which class each probability band is, and which one is
the boundary class. Every source is read into a :class:`geoseg.classes.ClassTable`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import rasterio

from geoseg.classes import ClassTable
from geoseg.errors import ConfigError, RasterReadError, first_line
from geoseg.vectorize.writer import LAYER

__all__ = ["read_prediction_classes"]


def read_prediction_classes(raster: Path, model: Path | None = None) -> tuple[list[dict], int | None]:
    """``(classes, boundary_class)`` of a prediction raster.

    Looked up in order: ``model`` (a model or run directory), the raster's tags (``CLASS_NAMES`` as
    geoseg predict writes on ``classes.tif``; older ``classes`` JSON list and ``boundary_class``),
    the sibling ``run.json``, the sibling ``instances.gpkg`` (class names/ids), then band
    descriptions (a band named ``boundary`` is the boundary class), then a colour table.
    """
    raster = Path(raster)
    if model is not None:
        from geoseg.modeldir import read_model_config

        table = ClassTable.from_model_config(read_model_config(model))
        return table.to_json(), table.boundary
    try:
        with rasterio.open(raster) as ds:
            tags = {**ds.tags(), **{k.lower(): v for k, v in ds.tags().items()}}
            desc, count = list(ds.descriptions), ds.count
            cmap = None
            if count == 1:
                try:
                    cmap = ds.colormap(1)
                except ValueError:
                    cmap = None
    except rasterio.errors.RasterioIOError as e:
        raise RasterReadError(f"{raster}: not a readable raster ({first_line(e)})") from None
    colors = _colormap_colors(raster)
    tagged = ClassTable.from_tags(tags, colors)  # CLASS_NAMES, written by geoseg predict on classes.tif
    if tagged is not None:
        return tagged.to_json(), tagged.boundary
    found = _from_json_tags(tags) or _from_run_json(raster.parent / "run.json")
    if found is None and count == 1:
        found = _from_instances(raster.parent / "instances.gpkg")
    if found is not None:
        return found
    if count > 1:
        names = [d or ("background" if i == 0 else f"class{i}") for i, d in enumerate(desc)]
        banded = ClassTable.of([{"id": i, "name": n, "color": colors.get(i)} for i, n in enumerate(names)],
                               infer_boundary=True)  # fmt: skip
        return banded.to_json(), banded.boundary
    if cmap:
        ids = [i for i, rgba in cmap.items() if i < 255 and (i == 0 or any(rgba[:3]))]
        return _norm_classes([{"id": i, "name": "background" if i == 0 else f"class{i}"} for i in ids]), None
    raise ConfigError(f"{raster}: no class information found; pass --model RUN_OR_MODEL_DIR")


def _from_json_tags(tags: dict[str, str]) -> tuple[list[dict], int | None] | None:
    """A ``classes`` (or ``geoseg_classes``) JSON tag with a ``boundary_class`` tag (older writers)."""
    for key in ("classes", "geoseg_classes"):
        if key in tags:
            try:
                cls = _norm_classes(json.loads(tags[key]))
                bc = tags.get("boundary_class")
                return cls, (int(bc) if bc not in (None, "", "None", "null") else None)
            except (ValueError, TypeError, KeyError):
                pass
    return None


def _from_run_json(run_json: Path) -> tuple[list[dict], int | None] | None:
    """The first ``classes`` list (of dicts) anywhere in a ``run.json``."""
    if not run_json.exists():
        return None
    try:
        return _find_classes(json.loads(run_json.read_text()))
    except (OSError, ValueError):
        return None


def _from_instances(gpkg: Path) -> tuple[list[dict], int | None] | None:
    """Class ids and names of the polygons of an ``instances.gpkg`` (no boundary class)."""
    if not gpkg.exists():
        return None
    try:
        df = gpd.read_file(gpkg, layer=LAYER, engine="pyogrio", ignore_geometry=True)
        pairs = dict(zip(df["class_id"].astype(int), df["class"].astype(str), strict=True))
        if pairs:
            pairs.setdefault(0, "background")
            return _norm_classes([{"id": i, "name": n} for i, n in sorted(pairs.items())]), None
    except Exception:  # any failure means "not usable here"
        pass
    return None


def _colormap_colors(raster: Path) -> dict[int, str]:
    """``{class id: "#rrggbb"}`` from the colour table of ``raster`` or of its sibling classes.tif."""
    for p in (raster, raster.parent / "classes.tif"):
        try:
            with rasterio.open(p) as ds:
                if ds.count != 1:
                    continue
                cmap = ds.colormap(1)
        except (rasterio.errors.RasterioIOError, ValueError):
            continue
        return {int(i): "#{:02x}{:02x}{:02x}".format(*rgba[:3]) for i, rgba in cmap.items() if i < 255}
    return {}


def _find_classes(data: Any) -> tuple[list[dict], int | None] | None:
    if isinstance(data, dict):
        if isinstance(data.get("classes"), list) and data["classes"] and isinstance(data["classes"][0], dict):
            return _norm_classes(data["classes"]), data.get("boundary_class")
        for v in data.values():
            found = _find_classes(v)
            if found is not None:
                return found
    return None


def _norm_classes(classes: list[Any]) -> list[dict]:
    return ClassTable.of(classes).to_json()
