"""Vector layers: read (GPKG, GeoJSON, Shapefile, GeoParquet), validate, repair, reproject."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from rasterio.crs import CRS

from geoseg.errors import CRSError, InputError, InputNotFoundError, LabelsError, first_line

log = logging.getLogger(__name__)

POLYGONAL = ("Polygon", "MultiPolygon")
# GeoPackage 1.2 for every geoseg GPKG output: read without warnings by older GDALs (QGIS 3.22 ships
# GDAL 3.6; GDAL 3.10 writes 1.4)
GPKG_OPTIONS = {"VERSION": "1.2"}
_POLYGONAL_IDS = [int(shapely.GeometryType.POLYGON), int(shapely.GeometryType.MULTIPOLYGON)]


def read_vector(path: str | Path, *, what: str = "layer", layer: str | None = None) -> gpd.GeoDataFrame:
    """Read a vector file; one-line errors for missing/unreadable/empty/CRS-less layers."""
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"{path}: {what} file not found")
    try:
        if p.suffix.lower() in {".parquet", ".geoparquet"}:
            gdf = gpd.read_parquet(p)
        else:
            kw: dict[str, Any] = {"layer": layer} if layer else {}
            gdf = gpd.read_file(p, engine="pyogrio", **kw)
    except Exception as e:  # pyogrio/arrow raise many types; all mean "cannot read"
        msg = first_line(e)
        raise InputError(f"{path}: not a readable {what} ({msg})") from None
    if len(gdf) == 0:
        raise LabelsError(f"{path}: {what} has no features")
    if gdf.crs is None:
        raise CRSError(f"{path}: {what} has no CRS; set one (e.g. ogr2ogr -a_srs EPSG:4326)")
    return gdf


def clean_polygons(gdf: gpd.GeoDataFrame, *, source: str = "layer") -> tuple[gpd.GeoDataFrame, int]:
    """Repair invalid geometries, keep polygonal parts, explode multi-parts.

    Returns ``(clean frame, number of repaired geometries)``. Empty and non-polygonal geometries
    are dropped: points and lines counted by type in one warning (or, when nothing is left, in
    ``attrs["dropped"]`` for the caller's error), GeometryCollections keep their polygons. Index is
    reset; original row kept in column ``src_index``.
    """
    gdf = gdf[~shapely.is_missing(gdf.geometry.values)].copy()
    gdf["src_index"] = range(len(gdf))
    # what the input holds besides polygons: counted and reported in one line (before any repair)
    types = gdf.geometry.geom_type
    other = types[~types.isin(POLYGONAL) & (types != "GeometryCollection") & ~gdf.geometry.is_empty]
    mixed = sum(
        1 for g in gdf.geometry.values[(types == "GeometryCollection").to_numpy()]
        if any(p.geom_type not in POLYGONAL for p in g.geoms)
    )  # fmt: skip
    invalid = ~gdf.geometry.is_valid
    n_repaired = int(invalid.sum())
    if n_repaired:
        gdf.loc[invalid, gdf.geometry.name] = shapely.make_valid(gdf.geometry[invalid].values)
    # keep polygonal parts only (make_valid may return GeometryCollections)
    geoms = np.array(gdf.geometry.values, dtype=object)
    for i in np.flatnonzero(~np.isin(shapely.get_type_id(geoms), _POLYGONAL_IDS)).tolist():
        geoms[i] = _polygonal_part(geoms[i])  # (polygons, empty or not, stay as they are)
    gdf[gdf.geometry.name] = geoms
    vals = gdf.geometry.values
    gdf = gdf[~shapely.is_empty(vals) & ~shapely.is_missing(vals)]  # (GeoSeries.notna() warns on empties)
    gdf = gdf[gdf.geometry.geom_type.isin(POLYGONAL)]
    counts = ", ".join(f"{n} {t}" for t, n in sorted(other.value_counts().items()))
    if (counts or mixed) and len(gdf):  # (nothing left: the caller's one-line error quotes attrs["dropped"])
        parts = [f"dropped {counts} feature(s) (labels must be polygons)"] if counts else []
        if mixed:
            parts.append(f"kept only the polygons of {mixed} GeometryCollection(s)")
        log.warning("%s: %s", source, "; ".join(parts))
    gdf = gdf.explode(index_parts=False).reset_index(drop=True)
    gdf.attrs["dropped"] = counts
    return gdf, n_repaired


def _polygonal_part(g: Any) -> Any:
    if g is None or g.is_empty:
        return g
    if g.geom_type in POLYGONAL:
        return g
    if g.geom_type == "GeometryCollection":
        polys = [p for p in g.geoms if p.geom_type in POLYGONAL]
        return shapely.unary_union(polys) if polys else shapely.Polygon()
    return shapely.Polygon()


def to_crs(gdf: gpd.GeoDataFrame, crs: CRS) -> gpd.GeoDataFrame:
    """Reproject ``gdf`` to a rasterio CRS (no-op when equal)."""
    target = crs.to_wkt()
    if gdf.crs is not None and gdf.crs.equals(target):
        return gdf
    return gdf.to_crs(target)


def require_field(gdf: gpd.GeoDataFrame, field: str, *, path: str | Path, what: str = "labels") -> None:
    if field not in gdf.columns:
        cols = ", ".join(c for c in gdf.columns if c != gdf.geometry.name) or "(none)"
        raise LabelsError(f"{path}: {what} have no field {field!r}; fields: {cols}")


def read_aoi(path: str | Path | None = None, bbox: str | None = None) -> gpd.GeoDataFrame:
    """AOI from a polygon file or ``--bbox minx,miny,maxx,maxy[,crs]`` (default CRS EPSG:4326)."""
    if bbox:
        parts = [p.strip() for p in bbox.split(",")]
        if len(parts) not in (4, 5):
            raise InputError(f"--bbox {bbox!r}: expected minx,miny,maxx,maxy[,crs]")
        try:
            minx, miny, maxx, maxy = (float(v) for v in parts[:4])
        except ValueError:
            raise InputError(f"--bbox {bbox!r}: coordinates must be numbers") from None
        if not (minx < maxx and miny < maxy):
            raise InputError(f"--bbox {bbox!r}: min must be below max")
        crs = parts[4] if len(parts) == 5 else "EPSG:4326"
        try:
            crs = CRS.from_user_input(crs)
        except Exception:  # rasterio/pyproj raise several CRS error types
            raise CRSError(f"--bbox {bbox!r}: unknown CRS {crs!r}; use e.g. EPSG:4326") from None
        return gpd.GeoDataFrame(geometry=[shapely.box(minx, miny, maxx, maxy)], crs=crs)
    if path is None:
        raise InputError("give --aoi FILE or --bbox minx,miny,maxx,maxy[,crs]")
    gdf = read_vector(path, what="AOI")
    gdf, _ = clean_polygons(gdf, source=str(path))
    if len(gdf) == 0:
        raise InputError(f"{path}: AOI has no polygons")
    return gdf
