"""Scene access: validated opening, acquisition dates, windowed reads with validity masks.

Nothing here reads a whole scene: every read is a window, memory is bounded by the window.

A SCENE reference is a local GeoTIFF path, an ``http(s)://`` GeoTIFF URL (read through GDAL's
``/vsicurl/`` with range requests, settings in :mod:`geoseg.io.gdal_env`), a GDAL ``/vsi…`` path, or a
STAC Item (local ``.json`` file or URL, via ``pystac``: ``geoseg[stac]``). :func:`resolve_scene`
turns it into the GDAL path every stage opens, the scene name used in outputs (STAC: the item id)
and the STAC acquisition date (``properties.datetime``, else ``start_datetime``).
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

from geoseg.errors import CRSError, InputError, InputNotFoundError, RasterReadError, first_line
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
    label: str | None = None  # scene name from its source (STAC item id); default: the file name

    @property
    def name(self) -> str:
        return self.label or _basename(self.path)

    @property
    def stem(self) -> str:
        """Name without extension: per-scene output folders."""
        return self.label or Path(_basename(self.path)).stem

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


_URL = ("http://", "https://")
_IMAGE_TYPES = ("image/tiff", "image/vnd.stac.geotiff", "image/x.geotiff", "image/jp2")


@dataclass(frozen=True)
class SceneRef:
    """A resolved SCENE: ``path`` for GDAL, ``name`` for outputs (None: the file name), STAC date."""

    path: str
    name: str | None = None
    date: dt.date | None = None
    source: str = ""


def is_remote(path: str | Path) -> bool:
    """True for URLs and GDAL virtual file systems (no local file to stat or resolve)."""
    return str(path).startswith(("/vsi", *_URL, "s3://", "gs://"))


def scene_key(path: str | Path) -> str:
    """An absolute, stable reference: remote paths as given, local ones resolved."""
    return str(path) if is_remote(path) else str(Path(path).resolve())


def _basename(path: str) -> str:
    return Path(path.split("?", 1)[0].rstrip("/")).name


def _gdal_href(href: str) -> str:
    return f"/vsicurl/{href}" if href.startswith(_URL) else href


def _is_stac(ref: str) -> bool:
    return ref.split("?", 1)[0].lower().endswith((".json", ".geojson"))


def resolve_scene(ref: str | Path, asset: str | None = None) -> SceneRef:
    """Turn a SCENE reference into a :class:`SceneRef` (see the module docstring).

    STAC: ``asset`` names the asset (default: the first with role ``data`` and an image media type,
    else the first image asset, else the first ``.tif`` href). Unreadable items, unknown assets and
    HTTP failures raise one-line :class:`InputError` subclasses naming ``ref``.
    """
    s = str(ref)
    if not _is_stac(s):
        return SceneRef(_gdal_href(s), None, None, s)
    try:
        import pystac
    except ImportError:
        raise InputError(f"{s}: STAC Items need the optional extra: pip install 'geoseg[stac]'") from None
    if not s.startswith(_URL) and not Path(s).exists():
        raise InputNotFoundError(f"{s}: STAC Item not found")
    try:
        item = pystac.Item.from_file(s)
    except Exception as e:  # urllib HTTPError/URLError, JSON errors, pystac's own (untyped) errors
        raise InputError(f"{s}: not a readable STAC Item ({_root_cause(e)})") from None
    assets = item.get_assets()
    if asset is not None:
        if asset not in assets:
            raise InputError(f"{s}: no asset {asset!r}; the item has {', '.join(assets) or 'none'}")
        chosen = assets[asset]
    else:
        chosen = _default_asset(assets)
        if chosen is None:
            raise InputError(f"{s}: no image asset (GeoTIFF); choose one with --asset ({', '.join(assets) or 'none'})")
    props = item.properties
    when = item.datetime or props.get("start_datetime")
    date = parse_date(when, source=f"{s} properties.datetime") if when else None
    return SceneRef(_gdal_href(chosen.get_absolute_href() or chosen.href), item.id, date, s)


def _default_asset(assets: dict[str, Any]) -> Any:
    def image(a: Any) -> bool:
        mt = (a.media_type or "").lower()
        return mt.startswith(_IMAGE_TYPES) or (not mt and a.href.split("?")[0].lower().endswith((".tif", ".tiff")))

    for cond in (lambda a: "data" in (a.roles or []) and image(a), image):
        for a in assets.values():
            if cond(a):
                return a
    return None


def open_raster(path: str | Path, what: str = "scene") -> rasterio.DatasetReader:
    """Open a raster with one-line errors for missing (``PATH: <what> not found``) or unreadable files
    (HTTP failures included)."""
    p = Path(path)
    if not is_remote(path) and not p.exists():
        raise InputNotFoundError(f"{path}: {what} not found")
    try:
        return rasterio.open(path)
    except RasterioIOError as e:
        what = "cannot read over HTTP" if str(path).startswith(("/vsicurl/", *_URL)) else "not a readable raster"
        raise RasterReadError(f"{path}: {what} ({first_line(e)})") from None


def scene_info(path: str | Path, date: Any = None, *, asset: str | None = None) -> SceneInfo:
    """Validate a scene (any SCENE reference, see :func:`resolve_scene`) and read its metadata.

    Date priority: ``date`` (``--scene-date``), the STAC Item's datetime, GeoTIFF tags, the file name.
    ``SceneInfo.path`` is the GDAL path (``/vsicurl/…`` for URLs) every later read opens.
    Raises :class:`CRSError` for a scene without CRS and :class:`RasterReadError` when the header
    or the first block cannot be decoded.
    """
    ref = resolve_scene(path, asset)
    path = ref.path
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
        elif ref.date is not None:
            d = ref.date
        else:
            d = date_from_tags(ds.tags(), source=str(path)) or date_from_name(_basename(str(path)))
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
            label=ref.name,
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


def _root_cause(e: BaseException) -> str:
    """The innermost cause's first line (an HTTP status where there is one)."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    code = getattr(e, "code", None)
    return f"HTTP {code} {getattr(e, 'reason', '')}".strip() if isinstance(code, int) else first_line(e)


def read_probabilities(ds: rasterio.DatasetReader, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """``(probs, valid)`` of a geoseg probabilities raster (``probabilities.tif``) in ``window``.

    ``probs``: (C, H, W) raw values (uint8 ``p * 254`` with nodata 255, or float32 probabilities;
    non-finite float values set to 0); ``valid``: (H, W) bool, False where any band is nodata (or
    non-finite). Raw units: multiply by :func:`probability_scale` for probabilities. Memory O(C x window).
    """
    data = ds.read(window=window)
    nod = ds.nodata
    if np.issubdtype(data.dtype, np.floating):
        invalid = ~np.isfinite(data).all(axis=0)
        if nod is not None and np.isfinite(nod):
            invalid |= (data == nod).any(axis=0)
        data = np.where(np.isfinite(data), data, 0).astype(np.float32, copy=False)
    else:
        invalid = (data == (255 if nod is None else nod)).any(axis=0)
    return data, ~invalid


def probability_scale(ds: rasterio.DatasetReader) -> float:
    """Probability per raw unit of a probabilities raster: its GDAL scale if set, 1/254 for the
    integer contract, 1 for floats."""
    if np.issubdtype(np.dtype(ds.dtypes[0]), np.floating):
        return 1.0
    s = ds.scales[0] if ds.scales else 1.0
    return float(s) if s and s != 1.0 else 1.0 / 254.0
