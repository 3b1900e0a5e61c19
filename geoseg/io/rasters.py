"""Scene access: validated opening, acquisition dates, windowed reads with validity masks.

Nothing here reads a whole scene: every read is a window, memory is bounded by the window.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from geoseg.errors import CRSError, InputNotFoundError, RasterReadError
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
        raise RasterReadError(f"{path}: not a readable raster ({_first_line(e)})") from None


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
            raise RasterReadError(f"{path}: corrupt raster data ({_first_line(e)})") from None
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
    ds: rasterio.DatasetReader, window: Window, *, indexes: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``window`` (boundless: pixels outside the scene are invalid).

    Returns ``(data (C, H, W) in the scene dtype, valid (H, W) bool)``. A pixel is valid where the
    dataset mask (nodata value, internal mask or alpha) says so for every band.
    Memory: O(C * H * W) for this window only.
    """
    fill = ds.nodata if ds.nodata is not None else 0
    data = ds.read(indexes, window=window, boundless=True, fill_value=fill)
    masks = ds.read_masks(indexes, window=window, boundless=True)
    if masks.ndim == 2:
        masks = masks[None]
    valid = np.all(masks > 0, axis=0)
    if data.ndim == 2:
        data = data[None]
    return data, valid


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
