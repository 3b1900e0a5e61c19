"""Scene access: validated opening, acquisition dates, windowed reads with validity masks.

Nothing here reads a whole scene: every read is a window, memory is bounded by the window.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from geoseg.errors import CRSError, InputNotFoundError, RasterReadError, first_line
from geoseg.grid import Grid
from geoseg.io.dates import date_from_name, date_from_tags, parse_date


@dataclass(frozen=True)
class SceneInfo:
    """What geoseg needs to know about a scene, without reading its pixels."""

    path: str
    grid: Grid
    count: int
    dtype: str
    nodata: float | None
    date: dt.date | None
    band_names: tuple[str, ...]
    has_mask: bool

    @property
    def name(self) -> str:
        return Path(self.path).name

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "date": self.date.isoformat() if self.date else None,
            "count": self.count,
            "dtype": self.dtype,
            "nodata": self.nodata,
            "band_names": list(self.band_names),
            "grid": self.grid.to_dict(),
            "resolution_m": self.grid.resolution_m(),
        }


def open_raster(path: str | Path) -> rasterio.DatasetReader:
    """Open a raster with one-line errors for missing or unreadable files."""
    p = Path(path)
    if not str(path).startswith(("/vsi", "http://", "https://", "s3://")) and not p.exists():
        raise InputNotFoundError(f"{path}: scene not found")
    try:
        return rasterio.open(path)
    except RasterioIOError as e:
        raise RasterReadError(f"{path}: not a readable raster ({first_line(e)})") from None


def scene_info(path: str | Path, date: Any = None) -> SceneInfo:
    """Validate a scene and read its metadata. ``date`` overrides tag/file-name dates.

    Raises :class:`CRSError` for a scene without CRS and :class:`RasterReadError` when the header
    or the first block cannot be decoded.
    """
    with open_raster(path) as ds:
        if ds.crs is None:
            raise CRSError(f"{path}: scene has no CRS; assign one (e.g. gdal_edit.py -a_srs EPSG:XXXX)")
        if ds.transform.is_identity:
            raise CRSError(f"{path}: scene has no georeferencing (identity transform)")
        try:  # decode one small window so a truncated/corrupt file fails here, not mid-run
            ds.read(1, window=Window(0, 0, min(ds.width, 16), min(ds.height, 16)))
        except RasterioIOError as e:
            raise RasterReadError(f"{path}: corrupt raster data ({first_line(e)})") from None
        if date is not None:
            d = parse_date(date, source=f"--scene-date for {path}")
        else:
            d = date_from_tags(ds.tags(), source=str(path)) or date_from_name(path)
        has_mask = any(  # mask_flag_enums: one list of MaskFlags per band
            f in (rasterio.enums.MaskFlags.per_dataset, rasterio.enums.MaskFlags.alpha)
            for f in (ds.mask_flag_enums[0] if ds.count else [])
        )
        names = tuple(ds.descriptions[i] or f"band{i + 1}" for i in range(ds.count))
        return SceneInfo(
            path=str(path),
            grid=Grid.from_dataset(ds),
            count=ds.count,
            dtype=str(ds.dtypes[0]),
            nodata=ds.nodata,
            date=d,
            band_names=names,
            has_mask=bool(has_mask) or ds.nodata is not None,
        )


def read_window(
    ds: rasterio.DatasetReader, window: Window, indexes: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``window`` (may extend past the scene): ``(data (C, H, W) scene dtype, valid (H, W) bool)``.

    Outside the scene: nodata (or 0) and invalid. A pixel is valid where the dataset's mask flags say
    so for every band read (nodata value, internal/per-dataset mask, alpha); NaN is always invalid.
    Only the part inside the scene is read (no boundless VRT: measured 13x slower).
    Memory: O(C * H * W) for this window only.
    """
    idx = list(indexes) if indexes else list(range(1, ds.count + 1))
    h, w = int(window.height), int(window.width)
    nd = ds.nodata
    fill = nd if nd is not None and not (isinstance(nd, float) and math.isnan(nd)) else 0
    r0, c0 = int(window.row_off), int(window.col_off)
    ir0, ic0 = max(r0, 0), max(c0, 0)
    ir1, ic1 = min(r0 + h, ds.height), min(c0 + w, ds.width)
    if (ir0, ic0, ir1, ic1) == (r0, c0, r0 + h, c0 + w):
        data = ds.read(idx, window=window)
        return data, _valid(ds, data, window, idx)
    data = np.full((len(idx), h, w), fill, dtype=ds.dtypes[idx[0] - 1])
    valid = np.zeros((h, w), bool)
    if ir1 > ir0 and ic1 > ic0:
        inner = Window(ic0, ir0, ic1 - ic0, ir1 - ir0)
        sub = ds.read(idx, window=inner)
        sl = (slice(ir0 - r0, ir1 - r0), slice(ic0 - c0, ic1 - c0))
        data[(slice(None), *sl)] = sub
        valid[sl] = _valid(ds, sub, inner, idx)
    return data, valid


def _valid(ds: rasterio.DatasetReader, data: np.ndarray, window: Window, idx: list[int]) -> np.ndarray:
    """Validity of ``data`` (read from ``window``, bands ``idx``) from the cheapest source that is exact."""
    flags = [ds.mask_flag_enums[i - 1] for i in idx]
    if all(MaskFlags.all_valid in f for f in flags):
        valid = np.ones(data.shape[1:], bool)
    elif all(MaskFlags.nodata in f for f in flags) and ds.nodata is not None:
        nd = ds.nodata
        valid = ~np.any(np.isnan(data) if isinstance(nd, float) and math.isnan(nd) else data == nd, axis=0)
    elif any((MaskFlags.per_dataset in f) or (MaskFlags.alpha in f) for f in flags):
        valid = ds.read_masks(idx[0], window=window) > 0
    else:
        valid = np.all(ds.read_masks(idx, window=window) > 0, axis=0)
    if data.dtype.kind == "f":
        valid &= ~np.any(np.isnan(data), axis=0)
    return valid
