"""Streaming output: row chunks on disk (the resume checkpoints), then tiled GTiff -> COG.

Finished rows from the stitcher go through one background writer per row range
(:class:`RowRangeWriter`; a row range is the rows one task writes, :class:`geoseg.predict.plan.RowRange`)
into small ``.npz`` chunks; after each strip a per-range ``range_NNNN.json`` records the rows done
(written after the chunks it covers, in the same queue). When every range of a scene is done,
:func:`assemble_cogs` streams the chunks into tiled GTiffs and converts them to Cloud-Optimized
GeoTIFFs with overviews. Every file is written through :func:`geoseg.io.output.atomic_path`
(temporary sibling, then rename), so a file with a final name is always complete.
Memory: one chunk (strip height x plan width x K) at a time.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.shutil import copy as rio_copy
from rasterio.windows import Window

from geoseg.classes import ClassesLike, ClassTable, as_class_dicts, hex_rgb
from geoseg.grid import Grid
from geoseg.io.output import atomic_path
from geoseg.predict.stitch import NODATA_U8, RowsOut

PROBABILITIES = "probabilities.tif"
CLASSES = "classes.tif"


class ChunkStore:
    """A scene's work folder: row chunks + per-row-range progress (resume state)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _chunk(self, row0: int) -> Path:
        return self.root / f"rows_{row0:09d}.npz"

    def write(self, rows: RowsOut) -> Path:
        dst = self._chunk(rows.row0)
        with atomic_path(dst) as tmp, open(tmp, "wb") as f:
            np.savez(f, probs=rows.probs, classes=rows.classes, pos=np.array([rows.row0, rows.col0]))
        return dst

    def _progress(self, index: int) -> Path:
        return self.root / f"range_{index:04d}.json"

    def rows_done(self, index: int) -> int:
        """Rows below this were finished for row range ``index`` (0 when it never checkpointed)."""
        p = self._progress(index)
        if not p.exists():
            return 0
        try:
            return int(json.loads(p.read_text())["rows_done"])
        except (OSError, ValueError, KeyError):
            return 0

    def mark(self, index: int, rows_done: int, *, finished: bool = False) -> None:
        """Record that row range ``index`` has every row below ``rows_done`` on disk (atomically)."""
        with atomic_path(self._progress(index)) as tmp:
            tmp.write_text(json.dumps({"rows_done": int(rows_done), "finished": finished}))

    def range_finished(self, index: int) -> bool:
        p = self._progress(index)
        try:
            return bool(json.loads(p.read_text()).get("finished"))
        except (OSError, ValueError):
            return False

    def chunks(self) -> Iterator[RowsOut]:
        """Every chunk in row order (one in memory at a time)."""
        for p in sorted(self.root.glob("rows_*.npz")):
            with np.load(p) as z:
                row0, col0 = (int(v) for v in z["pos"])
                yield RowsOut(row0, col0, z["probs"], z["classes"])


class RowRangeWriter:
    """One background thread writing a row range's chunks and checkpoints in order.

    ``rows``/``done`` block when two items are pending (bounded memory); ``close`` re-raises a write error.
    """

    def __init__(self, store: ChunkStore, index: int) -> None:
        self.store, self.index = store, index
        self._q: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self._error is not None:
                continue
            try:
                if isinstance(item, RowsOut):
                    self.store.write(item)
                else:
                    self.store.mark(self.index, item)
            except BaseException as e:
                self._error = e

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def rows(self, rows: RowsOut) -> None:
        self._check()
        self._q.put(rows)

    def done(self, rows_done: int) -> None:
        self._check()
        self._q.put(int(rows_done))

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        self._check()


def assemble_cogs(
    store: ChunkStore,
    grid: Grid,
    out_dir: str | Path,
    *,
    classes: ClassesLike,
    float_output: bool,
    tags: dict[str, str],
    compress: str = "ZSTD",
    blocksize: int = 512,
) -> tuple[Path, Path]:
    """Write ``probabilities.tif`` and ``classes.tif`` (COGs on ``grid``) into ``out_dir`` from the chunks.

    Rows/columns without chunk data are nodata. Each COG is built from a tiled temporary GTiff,
    written under a temporary name and renamed (:func:`atomic_path`), so a file with the final name
    is always complete.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, classes = ClassTable.of(classes), as_class_dicts(classes)
    k = len(classes)
    base: dict[str, Any] = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "crs": grid.crs,
        "transform": grid.transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "ZSTD",
        "ZSTD_LEVEL": 1,
        "BIGTIFF": "IF_SAFER",
    }
    p_tmp = store.root / "probabilities.gtiff.tmp"
    c_tmp = store.root / "classes.gtiff.tmp"
    p_profile = {
        **base,
        "count": k,
        "dtype": "float32" if float_output else "uint8",
        "nodata": float("nan") if float_output else NODATA_U8,
        "interleave": "pixel",
    }
    c_profile = {**base, "count": 1, "dtype": "uint8", "nodata": NODATA_U8}
    names = [str(c.get("name", c["id"])) for c in classes]
    p_fill: float = float("nan") if float_output else NODATA_U8
    p_dtype = np.float32 if float_output else np.uint8
    itemsize = 4 if float_output else 1
    cache = int(min(max(grid.width * (k * itemsize + 1) * 2 * blocksize, 64 * 2**20), 2**30))  # a block row, bytes
    with (
        rasterio.Env(GDAL_CACHEMAX=cache),
        rasterio.open(p_tmp, "w", **p_profile) as pds,
        rasterio.open(c_tmp, "w", **c_profile) as cds,
    ):

        def put(row0: int, probs: np.ndarray, cls: np.ndarray) -> None:
            win = Window(0, row0, grid.width, cls.shape[0])
            pds.write(probs, window=win)
            cds.write(cls, 1, window=win)

        def gap(r0: int, r1: int) -> None:  # rows no window covered: explicit nodata, in bounded pieces
            for a in range(r0, r1, 256):
                h = min(256, r1 - a)
                put(a, np.full((k, h, grid.width), p_fill, p_dtype), np.full((h, grid.width), NODATA_U8, np.uint8))

        row = 0
        for rows in store.chunks():  # every pixel is written explicitly (GDAL fills unwritten blocks unevenly)
            h, w = rows.classes.shape
            gap(row, rows.row0)
            probs = np.full((k, h, grid.width), p_fill, p_dtype)
            cls = np.full((h, grid.width), NODATA_U8, np.uint8)
            probs[:, :, rows.col0 : rows.col0 + w] = rows.probs
            cls[:, rows.col0 : rows.col0 + w] = rows.classes
            put(rows.row0, probs, cls)
            row = rows.row0 + h
        gap(row, grid.height)
        pds.update_tags(**tags)
        cds.update_tags(**tags, **table.to_tags())
        for i, name in enumerate(names, start=1):
            pds.set_band_description(i, name)
            pds.update_tags(i, CLASS_ID=str(classes[i - 1]["id"]), CLASS_NAME=name)
        cds.set_band_description(1, "class")
        if not float_output:
            pds.scales = tuple([1.0 / 254.0] * k)
            pds.offsets = tuple([0.0] * k)
        cmap = {i: (*hex_rgb(col), 255) for i, col in table.colors.items()}
        cmap[NODATA_U8] = (0, 0, 0, 0)
        cds.write_colormap(1, cmap)
    outs = []
    with rasterio.Env(GDAL_CACHEMAX=cache):
        for src, name, resampling in ((p_tmp, PROBABILITIES, "average"), (c_tmp, CLASSES, "mode")):
            dst = out_dir / name
            with atomic_path(dst) as tmp:
                rio_copy(
                    src,
                    tmp,
                    driver="COG",
                    compress=compress,
                    overview_resampling=resampling,
                    blocksize=blocksize,
                    BIGTIFF="IF_SAFER",
                    **({"PREDICTOR": "YES"} if compress != "NONE" else {}),
                )
            src.unlink()
            outs.append(dst)
    return outs[0], outs[1]
