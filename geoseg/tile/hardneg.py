"""Hard-negative layers of ``geoseg tile --hard-negatives``: the user's look-alikes and geoseg-mined false positives.

A layer is *mined* when it has the column :data:`MINED_FIELD` (``geoseg mine`` writes it into
``false_positives.gpkg``, holding the sha256 of the model's weights); every other polygon layer is a
look-alike layer. Tiles touching mined polygons are the kind ``mined_negative``, tiles touching
look-alikes ``hard_negative`` (the quota rule is in :mod:`geoseg.tile.sampling`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import pandas as pd

from geoseg.io.vectors import clean_polygons, read_vector

#: column that marks a layer written by ``geoseg mine`` (value: sha256 of the mining model's weights)
MINED_FIELD = "geoseg_mined"


@dataclass(frozen=True)
class HardNegativeLayers:
    """The polygons of all ``--hard-negatives`` layers, grouped: look-alikes and mined (None when none)."""

    lookalikes: gpd.GeoDataFrame | None
    mined: gpd.GeoDataFrame | None
    sources: list[dict[str, object]]  # one per layer: path, kind ("look-alike" | "mined"), polygons, model sha


def read_hard_negatives(paths: tuple[str, ...]) -> HardNegativeLayers:
    """Read and clean each layer (one-line errors naming the file); mined layers are recognised by
    :data:`MINED_FIELD`. Empty mined layers are allowed (a model without false positives); an empty
    look-alike layer is an error, as before."""
    look: list[gpd.GeoDataFrame] = []
    mined: list[gpd.GeoDataFrame] = []
    sources: list[dict[str, object]] = []
    for path in paths:
        if _is_empty_mined(path):
            sources.append({"path": str(path), "kind": "mined", "polygons": 0, "model_sha256": None})
            continue
        gdf = read_vector(path, what="hard-negatives layer", layer=_data_layer(path))
        is_mined = MINED_FIELD in gdf.columns
        clean, _ = clean_polygons(gpd.GeoDataFrame(geometry=gdf.geometry.values, crs=gdf.crs), source=str(path))
        if len(clean) == 0 and not is_mined:
            from geoseg.errors import LabelsError

            raise LabelsError(f"{path}: hard-negatives layer has no polygon features")
        sha = str(gdf[MINED_FIELD].iloc[0]) if is_mined and len(gdf) else None
        sources.append({"path": str(path), "kind": "mined" if is_mined else "look-alike", "polygons": len(clean),
                        "model_sha256": sha})  # fmt: skip
        (mined if is_mined else look).append(clean)
    return HardNegativeLayers(_concat(look), _concat(mined), sources)


def _data_layer(path: str) -> str | None:
    """The one data layer of a GeoPackage that also holds QGIS's ``layer_styles`` table (else None: the default)."""
    if Path(path).suffix.lower() != ".gpkg" or not Path(path).is_file():
        return None
    try:
        import pyogrio

        names = [str(n) for n, _ in pyogrio.list_layers(path) if str(n) != "layer_styles"]
    except Exception:  # unreadable: read_vector reports it with a one-line error
        return None
    return names[0] if len(names) == 1 else None


def _is_empty_mined(path: str) -> bool:
    """A mined GeoPackage with no features (read_vector refuses empty layers): recognised by its schema."""
    p = Path(path)
    if p.suffix.lower() != ".gpkg" or not p.is_file():
        return False
    try:
        import pyogrio

        info = pyogrio.read_info(p, layer=_data_layer(path))
    except Exception:  # unreadable: read_vector reports it with a one-line error
        return False
    return int(info.get("features", 0)) == 0 and MINED_FIELD in list(info.get("fields", []))


def _concat(parts: list[gpd.GeoDataFrame]) -> gpd.GeoDataFrame | None:
    parts = [p for p in parts if len(p)]
    if not parts:
        return None
    crs = parts[0].crs
    return gpd.GeoDataFrame(pd.concat([p.to_crs(crs) for p in parts], ignore_index=True), crs=crs)
