"""The GeoPackage side of the vectorizer: layer ``instances``, its attribute columns, batched appends
through pyogrio, the QGIS style stored in the file. Files are written under a temporary name
(:func:`geoseg.io.output.atomic_path`) and renamed into place by the caller's context."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from geoseg.classes import ClassesLike
from geoseg.io.output import atomic_path
from geoseg.io.vectors import GPKG_OPTIONS
from geoseg.vectorize.objects import Objects, Post

__all__ = ["GPKG_OPTIONS", "GPKG_TMP_SUFFIX", "LAYER", "GpkgWriter", "write_instances"]

LAYER = "instances"
GPKG_TMP_SUFFIX = ".tmp.gpkg"  # GDAL's GPKG driver warns about any other extension


class GpkgWriter:
    """Appends batches of finished objects to the GeoPackage ``path`` (a temporary name); ``commit``
    writes the rest and stores the style.

    Rows are written through pyogrio, one append (one open of the file) per block row or per
    ``batch_rows`` rows, whichever comes first."""

    def __init__(self, path: Path, post: Post, *, classes: list[dict], style: bool, batch_rows: int = 20_000):
        self.path = Path(path)
        self.post, self.classes, self.style, self.batch_rows = post, classes, style, batch_rows
        self.buf: list[Objects] = []
        self.n_buf = 0
        self.written = 0
        self.created = False

    def add(self, objs: Objects) -> None:
        """Queue ``objs`` (already in output order); written once ``batch_rows`` are queued or at ``end_row``."""
        self.buf.append(objs)
        self.n_buf += len(objs)
        if self.n_buf >= self.batch_rows:
            self.flush()

    def end_row(self) -> None:
        """Write what is queued (one append per block row keeps memory O(objects of a block row))."""
        if self.n_buf:
            self.flush()

    def flush(self) -> None:
        objs = Objects.concat(self.buf)
        self.buf, self.n_buf = [], 0
        if self.created and not len(objs):
            return
        gdf = self._frame(objs)
        # through Arrow (pyarrow is a dependency): the same rows, about 25% faster than row by row
        gdf.to_file(self.path, driver="GPKG", layer=LAYER, engine="pyogrio", geometry_type="Polygon",
                    dataset_options=GPKG_OPTIONS, append=self.created, use_arrow=True)  # fmt: skip
        self.created = True
        self.written += len(gdf)

    def _frame(self, objs: Objects) -> gpd.GeoDataFrame:
        post, n = self.post, len(objs)
        areas = objs.area_m2 if objs.area_m2 is not None else np.zeros(n)
        gdf = gpd.GeoDataFrame(
            {
                "class": pd.Series([post.names[int(c)] for c in objs.cls], dtype=str),
                "class_id": pd.Series(objs.cls.astype(np.int32), dtype=np.int32),
                "score": pd.Series(objs.score, dtype=np.float64),
                "area_m2": pd.Series(areas, dtype=np.float64),
                "scene": pd.Series([post.scene] * n, dtype=str),
                "scene_date": pd.Series([post.scene_date or ""] * n, dtype=str),
            },
            geometry=gpd.GeoSeries(list(objs.geoms), crs=post.crs.to_wkt() if post.crs else None),
        )
        if post.scene_date is None:
            gdf["scene_date"] = pd.Series([None] * n, dtype=object)
        return gdf

    def commit(self) -> int:
        """Write what is buffered and store the style; returns the number of polygons written."""
        self.flush()
        if self.style:
            from geoseg.qgis import style_gpkg

            style_gpkg(self.path, LAYER, self.classes)
        return self.written


def write_instances(gdf: gpd.GeoDataFrame, out_gpkg: Path, *, classes: ClassesLike, style: bool = True) -> Path:
    """Write ``gdf`` as layer ``instances`` atomically (temp name + rename), styled for QGIS."""
    out_gpkg = Path(out_gpkg)
    with atomic_path(out_gpkg, suffix=GPKG_TMP_SUFFIX) as tmp:
        gdf.to_file(tmp, driver="GPKG", layer=LAYER, engine="pyogrio", geometry_type="Polygon",
                    dataset_options=GPKG_OPTIONS)  # fmt: skip
        if style:
            from geoseg.qgis import style_gpkg

            style_gpkg(tmp, LAYER, classes)
    return out_gpkg
