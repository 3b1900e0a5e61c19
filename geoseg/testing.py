"""Tiny georeferenced test data (cf. odc-geo ``testutils``): scenes whose pixels encode their own
coordinates, and label layers. Used by the test-suite and the benchmarks; small and dependency-free.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from shapely.geometry import Polygon, box

from geoseg.grid import Grid


def xy_image(height: int, width: int, count: int = 3, dtype: str = "uint16") -> np.ndarray:
    """``(count, H, W)`` image where band 0 = column, band 1 = row, band 2.. = (row * W + col) % k.

    Any shift, flip or off-by-one in tiling/stitching shows up as a numeric mismatch.
    """
    rows, cols = np.mgrid[0:height, 0:width]
    bands = [cols, rows] + [(rows * width + cols + 7 * i) for i in range(max(count - 2, 0))]
    arr = np.stack(bands[:count]).astype(np.float64)
    info = np.iinfo(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else None
    if info is not None:
        arr = np.mod(arr, float(info.max) - 1) + (1 if info.min == 0 else 0)
    return arr.astype(dtype)


def write_scene(
    path: str | Path,
    data: np.ndarray,
    *,
    crs: Any = "EPSG:32636",
    origin: tuple[float, float] = (500_000.0, 40_000.0),
    res: float = 0.5,
    nodata: float | None = None,
    tiled: bool = True,
    blocksize: int = 64,
    compress: str | None = "deflate",
    date: dt.date | None = None,
    mask: np.ndarray | None = None,
    transform: Affine | None = None,
) -> Grid:
    """Write ``data`` (C, H, W) as a GeoTIFF; returns its :class:`Grid`.

    ``transform`` (any affine, e.g. rotated or sheared) replaces the north-up ``origin`` + ``res`` one.
    ``tiled=False`` writes a striped file. ``mask`` (H, W bool, True = valid) writes an internal
    per-dataset mask. ``date`` is written as ``TIFFTAG_DATETIME``.
    """
    count, height, width = data.shape
    transform = transform if transform is not None else Affine(res, 0, origin[0], 0, -res, origin[1])
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": str(data.dtype),
        "crs": CRS.from_user_input(crs),
        "transform": transform,
        "nodata": nodata,
    }
    if compress:
        profile["compress"] = compress
    if tiled:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    else:
        profile.update(tiled=False, blockysize=max(1, min(16, height)))
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data)
            if date is not None:
                ds.update_tags(TIFFTAG_DATETIME=date.strftime("%Y:%m:%d 00:00:00"))
            if mask is not None:
                ds.write_mask(mask.astype(np.uint8) * 255)
    return Grid(profile["crs"], transform, width, height)


def pixel_box(grid: Grid, row: float, col: float, h: float, w: float) -> Any:
    """Shapely box covering pixels ``[row, row + h) x [col, col + w)`` of ``grid`` (in its CRS)."""
    x0, y0 = grid.transform * (col, row)
    x1, y1 = grid.transform * (col + w, row + h)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def write_labels(path: str | Path, geoms: list[Any], crs: Any, **columns: list[Any]) -> Path:
    """Write polygons + attribute columns to any OGR format chosen by suffix (or GeoParquet)."""
    gdf = gpd.GeoDataFrame(dict(columns), geometry=list(geoms), crs=crs)
    path = Path(path)
    if path.suffix == ".parquet":
        gdf.to_parquet(path)
    else:
        gdf.to_file(path)
    return path


def rasterised_footprints(
    n_cells: int = 6, cell: int = 64, *, seed: int = 0, sizes: tuple[int, int] = (8, 40)
) -> tuple[list[Any], list[str], list[Any]]:
    """Synthetic buildings rasterised and traced back, in pixel coordinates (x = col, y = row).

    A ``n_cells`` x ``n_cells`` grid of ``cell``-pixel cells; each holds a rotated rectangle, an
    L-shape or a pair of rectangles sharing a wall (sides drawn from ``sizes`` pixels, any angle).
    Returns ``(truth, kinds, traced)``: the true polygons, their kind (``rect``, ``L``, ``pair``),
    and each one's 4-connected pixel outline (pixel centres inside; the largest part).
    """
    import rasterio.features
    import shapely
    from shapely import affinity

    rng = np.random.default_rng(seed)
    truth: list[Any] = []
    kinds: list[str] = []
    lo, hi = sizes
    for r in range(n_cells):
        for c in range(n_cells):
            cx, cy = (c + 0.5) * cell + rng.uniform(-2, 2), (r + 0.5) * cell + rng.uniform(-2, 2)
            ang = float(rng.uniform(0, 90))
            kind = ("rect", "L", "pair")[(r * n_cells + c) % 3]
            if kind == "pair":
                w1, w2 = (float(v) for v in rng.uniform(lo, max(lo, hi / 2), 2))
                h = float(rng.uniform(lo, min(hi, cell * 0.6)))
                shapes = [box(-w1, -h / 2, 0, h / 2), box(0, -h / 2, w2, h / 2)]
            elif kind == "L":
                w, h = (float(v) for v in rng.uniform(max(lo, 14), hi, 2))
                shapes = [box(-w / 2, -h / 2, w / 2, h / 2).difference(box(0, 0, w / 2, h / 2))]
            else:
                w, h = (float(v) for v in rng.uniform(lo, hi, 2))
                shapes = [box(-w / 2, -h / 2, w / 2, h / 2)]
            for s in shapes:
                truth.append(affinity.translate(affinity.rotate(s, ang, origin=(0, 0)), cx, cy))
                kinds.append(kind)
    size = n_cells * cell
    label = rasterio.features.rasterize(
        [(g, i + 1) for i, g in enumerate(truth)], out_shape=(size, size), dtype="int32"
    )  # fmt: skip
    parts: dict[int, list[Any]] = {}
    for geom, val in rasterio.features.shapes(label, mask=label > 0, connectivity=4):
        parts.setdefault(int(val), []).append(shapely.geometry.shape(geom))
    traced = [max(parts.get(i + 1, [Polygon()]), key=lambda p: p.area) for i in range(len(truth))]
    traced = list(shapely.simplify(shapely.normalize(np.array(traced, dtype=object)), 0.0, preserve_topology=True))
    return truth, kinds, traced


def write_buildings_scene(
    folder: str | Path,
    *,
    height: int = 768,
    width: int = 768,
    res: float = 0.3,
    seed: int = 0,
    crs: Any = "EPSG:32636",
    date: dt.date | None = None,
    attempts: int = 4000,
    slab_share: float = 0.2,
) -> dict[str, Any]:
    """A synthetic town: rectangular buildings (alone, in touching pairs and rows), look-alike slabs.

    Buildings have varied roof colours (red, grey, blue, white), a lighter ridge and a dark
    shadow on two sides; touching neighbours differ in colour and meet at a dark seam. Slabs have
    the same colours but no ridge, no shadow and a speckled texture, so only the shape cues tell
    them apart. Writes ``scene.tif`` (3-band uint8), ``buildings.gpkg`` (field ``class`` =
    ``building``) and ``slabs.gpkg``; returns their paths, the grid, and per-building
    ``group`` ids (buildings of one touching pair/row share a group). ``attempts`` random placements
    (fewer: a sparser town), each a slab with probability ``slab_share``.
    """
    from scipy import ndimage

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = np.array([[170, 60, 50], [150, 150, 155], [70, 90, 150], [215, 215, 205]], float)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), 6) * 40
    img = np.stack([90 + noise, 110 + noise, 60 + 0.7 * noise]) + rng.normal(0, 6, (3, height, width))
    occupied = np.zeros((height, width), bool)
    buildings: list[Any] = []
    groups: list[int] = []
    slabs: list[Any] = []

    def free(r: int, c: int, h: int, w: int, margin: int = 4) -> bool:
        r0, c0 = max(0, r - margin), max(0, c - margin)
        inside = r >= 2 and c >= 2 and r + h < height - 2 and c + w < width - 2
        return bool(inside and not occupied[r0 : r + h + margin, c0 : c + w + margin].any())

    def paint(r: int, c: int, h: int, w: int, colour: np.ndarray, *, building: bool) -> None:
        sl = (slice(r, r + h), slice(c, c + w))
        for b in range(3):
            img[b][sl] = colour[b] + rng.normal(0, 4 if building else 14, (h, w))
        if building:
            if w >= h:
                img[:, r + h // 2, c : c + w] += 35  # ridge
            else:
                img[:, r : r + h, c + w // 2] += 35
            img[:, r + h : r + h + 2, c + 1 : c + w + 2] *= 0.45  # shadow below and to the right
            img[:, r + 1 : r + h + 2, c + w : c + w + 2] *= 0.45
        occupied[max(0, r - 1) : r + h + 2, max(0, c - 1) : c + w + 2] = True

    group = 0
    weights = np.array([0.45, 0.25, 0.1]) / 0.8 * (1 - slab_share)
    for _ in range(attempts):
        kind = rng.choice(["single", "pair", "row", "slab"], p=[*weights, slab_share])
        h, w = (int(v) for v in rng.integers(10, 26, 2))
        n = {"single": 1, "pair": 2, "row": 3, "slab": 1}[str(kind)]
        horizontal = bool(rng.integers(0, 2))
        th, tw = (h, w * n) if horizontal else (h * n, w)
        r, c = int(rng.integers(0, height - th)), int(rng.integers(0, width - tw))
        if not free(r, c, th + 2, tw + 2):
            continue
        if kind == "slab":
            paint(r, c, th, tw, palette[rng.integers(0, 4)], building=False)
            slabs.append(pixel_box_rc(r, c, th, tw, res, crs))
            continue
        colours = rng.permutation(4)
        for k in range(n):
            rr, cc = (r, c + k * w) if horizontal else (r + k * h, c)
            paint(rr, cc, h, w, palette[colours[k % 4]], building=True)
            buildings.append(pixel_box_rc(rr, cc, h, w, res, crs))
            groups.append(group)
        if n > 1:  # dark seams between touching neighbours
            for k in range(1, n):
                if horizontal:
                    img[:, r : r + h, c + k * w] *= 0.6
                else:
                    img[:, r + k * h, c : c + w] *= 0.6
        group += 1
    data = np.clip(img, 0, 255).astype(np.uint8)
    grid = write_scene(folder / "scene.tif", data, crs=crs, res=res, origin=_ORIGIN, date=date)
    b = write_labels(folder / "buildings.gpkg", buildings, crs, **{"class": ["building"] * len(buildings)})
    s = write_labels(folder / "slabs.gpkg", slabs, crs, kind=["slab"] * len(slabs))
    return {"scene": folder / "scene.tif", "labels": b, "slabs": s, "grid": grid, "groups": groups,
            "buildings": buildings}  # fmt: skip


_ORIGIN = (500_000.0, 40_000.0)


def pixel_box_rc(r: int, c: int, h: int, w: int, res: float, crs: Any, origin: tuple[float, float] = _ORIGIN) -> Any:
    """Box of pixels ``[r, r + h) x [c, c + w)`` of a north-up grid at ``origin`` with pixel size ``res``."""
    x0, y0 = origin
    return box(x0 + c * res, y0 - (r + h) * res, x0 + (c + w) * res, y0 - r * res)


def write_random_model(
    path: str | Path,
    *,
    in_channels: int = 3,
    tile_size: int = 64,
    seed: int = 0,
    head_gain: float | None = None,
    mean: float = 100.0,
    std: float = 50.0,
    postprocess: dict[str, Any] | None = None,
) -> Path:
    """A real, untrained 2-class model directory (Unet + EfficientNet-Lite0, weights seeded by ``seed``)
    for tests that need a model but no training: classes background / building, 0.5 m, normalisation
    ``mean``/``std`` on every band. ``head_gain`` scales the segmentation head's weights (e.g. 20: class 1
    wins in patches, so predictions hold instances); ``postprocess`` is stored as calibrated values."""
    import torch

    from geoseg.modeldir import build_model, save_model

    torch.manual_seed(seed)
    net = build_model("unet", "tu-tf_efficientnet_lite0", in_channels, 2)
    if head_gain is not None:
        with torch.no_grad():
            head: Any = net.segmentation_head  # smp's head: a Sequential whose first layer is the conv
            head[0].weight.mul_(head_gain)
    cfg: dict[str, Any] = {
        "arch": "unet", "encoder": "tu-tf_efficientnet_lite0", "in_channels": in_channels, "num_classes": 2,
        "classes": [{"id": 0, "name": "background", "color": "#000000"},
                    {"id": 1, "name": "building", "color": "#e31a1c"}],
        "boundary_class": None, "ignore_index": 255, "bands": ["r", "g", "b"][:in_channels],
        "normalisation": {"mean": [mean] * in_channels, "std": [std] * in_channels}, "tile_size": tile_size,
        "resolution_m": 0.5, "dataset": "synthetic", "date_range": None,
    }  # fmt: skip
    if postprocess is not None:
        cfg["postprocess"] = postprocess
    return save_model(Path(path), net, cfg)
