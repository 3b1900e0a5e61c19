"""The GeoPackage side of the vectorizer: layer ``instances``, its attribute columns, batched appends
through pyogrio, the QGIS style stored in the file. Files are written under a temporary name
(:func:`geoseg.io.output.atomic_path`) and renamed into place by the caller's context."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio.raw
import shapely

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
    ``batch_rows`` rows, whichever comes first, on one background thread (WKB encoding and GDAL's
    inserts overlap the next block row; batches are written in order, at most one waits, so memory
    stays O(objects of two block rows)). An error of a write is raised by the next call."""

    def __init__(self, path: Path, post: Post, *, classes: list[dict], style: bool, batch_rows: int = 20_000):
        self.path = Path(path)
        self.post, self.classes, self.style, self.batch_rows = post, classes, style, batch_rows
        self.buf: list[Objects] = []
        self.n_buf = 0
        self.written = 0
        self.created = False
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gpkg-writer")
        self._pending: Future[None] | None = None

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
        """Hand what is queued to the writing thread (after the previous batch is written)."""
        objs = Objects.concat(self.buf)
        self.buf, self.n_buf = [], 0
        if self.created and not len(objs):
            return
        self._wait()
        self._pending = self._pool.submit(self._write, objs, append=self.created)
        self.created = True
        self.written += len(objs)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _write(self, objs: Objects, *, append: bool) -> None:
        # numpy columns straight to pyogrio (no GeoDataFrame): WKB from shapely, one append per call
        post, n = self.post, len(objs)
        name_of = {c: post.names[c] for c in np.unique(objs.cls).tolist()}
        areas = objs.area_m2 if objs.area_m2 is not None else np.zeros(n)
        date = post.scene_date or None  # null when the scene has no date
        fields = ["class", "class_id", "score", "area_m2", "scene", "scene_date"]
        data = [
            np.array([name_of[c] for c in objs.cls.tolist()], dtype=object),
            objs.cls.astype(np.int32),
            np.asarray(objs.score, np.float64),
            np.asarray(areas, np.float64),
            np.full(n, post.scene, dtype=object),
            np.full(n, date, dtype=object),
        ]
        pyogrio.raw.write(
            self.path, shapely.to_wkb(objs.geoms), data, fields, layer=LAYER, driver="GPKG", geometry_type="Polygon",
            crs=post.crs.to_wkt() if post.crs else None, dataset_options=None if append else GPKG_OPTIONS,
            append=append, nan_as_null=False,
        )  # fmt: skip

    def commit(self) -> int:
        """Write what is buffered and store the style; returns the number of polygons written."""
        self.flush()
        self.close()
        if self.style:
            from geoseg.qgis import style_gpkg

            style_gpkg(self.path, LAYER, self.classes)
        return self.written

    def close(self) -> None:
        """Wait for the writing thread (raising its error, if any) and stop it."""
        try:
            self._wait()
        finally:
            self._pool.shutdown(wait=True)

    def abort(self) -> None:
        """Stop the writing thread after its current batch, ignoring its errors (on a failed run)."""
        self._pending = None
        self._pool.shutdown(wait=True, cancel_futures=True)


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
