"""The two task kinds of ``geoseg tile``, run in-process or on dask workers.

* :func:`scan_chunk` reads one chunk (``k x k`` tiles) at full resolution with one windowed read,
  rasterizes its labels, and returns per-tile fractions and spectral features. It writes nothing.
* :func:`extract_chunk` reads the selected tiles of one chunk again, burns their masks (with the
  boundary class) and writes each tile to its own zarr chunk ``images[i]`` / ``masks[i]``. Every
  zarr chunk is written by exactly one task. It returns exact per-tile fractions and band
  statistics (histograms for 8/16-bit integers, sums + a pixel sample otherwise).

Memory per task: O(bands x chunk pixels) for the image plus the same in uint8 for the mask, where a
chunk is at most ~32 MB of pixels; never the scene. Reads are never "boundless" in the rasterio
sense (that goes through a VRT and is >10x slower): the in-scene part is read and pasted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.windows import Window

from geoseg.grid import Grid
from geoseg.io.gdal_env import gdal_env
from geoseg.io.rasters import open_raster
from geoseg.tile.labels import IGNORE, SceneLabels, burn_mask

HIST_DTYPES = {"uint8": (0, 256), "uint16": (0, 65536), "int16": (-32768, 65536), "int8": (-128, 256)}
SAMPLE_PER_TILE = 256  # pixels per tile kept for float percentiles


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def read_block(ds: rasterio.DatasetReader, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Read ``window`` (may extend past the scene): ``(data (C, H, W), valid (H, W) bool)``.

    Outside the scene: nodata (or 0) and invalid. Validity follows the dataset's mask flags
    (nodata value, internal/per-dataset mask, alpha); NaN is always invalid.
    """
    h, w = int(window.height), int(window.width)
    fill = ds.nodata if ds.nodata is not None and not (isinstance(ds.nodata, float) and math.isnan(ds.nodata)) else 0
    r0, c0 = int(window.row_off), int(window.col_off)
    ir0, ic0 = max(r0, 0), max(c0, 0)
    ir1, ic1 = min(r0 + h, ds.height), min(c0 + w, ds.width)
    if ir0 == r0 and ic0 == c0 and ir1 == r0 + h and ic1 == c0 + w:
        data = ds.read(window=window)
        valid = _valid(ds, data, window)
        return data, valid
    data = np.full((ds.count, h, w), fill, dtype=ds.dtypes[0])
    valid = np.zeros((h, w), bool)
    if ir1 > ir0 and ic1 > ic0:
        inner = Window(ic0, ir0, ic1 - ic0, ir1 - ir0)
        sub = ds.read(window=inner)
        sl = (slice(ir0 - r0, ir1 - r0), slice(ic0 - c0, ic1 - c0))
        data[(slice(None), *sl)] = sub
        valid[sl] = _valid(ds, sub, inner)
    return data, valid


def _valid(ds: rasterio.DatasetReader, data: np.ndarray, window: Window) -> np.ndarray:
    flags = ds.mask_flag_enums
    if all(MaskFlags.all_valid in f for f in flags):
        valid = np.ones(data.shape[1:], bool)
    elif all(MaskFlags.nodata in f for f in flags) and ds.nodata is not None:
        nd = ds.nodata
        valid = ~np.any(np.isnan(data) if isinstance(nd, float) and math.isnan(nd) else data == nd, axis=0)
    elif any((MaskFlags.per_dataset in f) or (MaskFlags.alpha in f) for f in flags):
        valid = ds.read_masks(1, window=window) > 0
    else:
        valid = np.all(ds.read_masks(window=window) > 0, axis=0)
    if data.dtype.kind == "f":
        valid &= ~np.any(np.isnan(data), axis=0)
    return valid


def gdal_cache_mb(info_width: int, block_shape: tuple[int, int], count: int, itemsize: int, chunk: int) -> int:
    """GDAL block cache per worker: enough for one chunk-high band of strips (striped files need a
    whole strip decoded), small for tiled files. Bounded by 512 MB."""
    bh, bw = block_shape
    if bw >= info_width:  # striped: one row of chunks re-reads the same strips
        need = info_width * (chunk + bh) * count * itemsize * 1.25
    else:  # one row of blocks across a chunk, all bands, twice
        need = (chunk + bw) * bh * count * itemsize * 2
    return int(min(512, max(32, need / 2**20)))


# --------------------------------------------------------------------------------------------
# scan
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanTask:
    path: str
    grid: Grid  # the scene grid
    window: Window  # chunk window, tile-aligned, may extend past the scene
    tiles: tuple[tuple[int, int], ...]  # (row_off, col_off) of tiles, scene pixel coordinates
    tile_size: int
    labels: SceneLabels
    cache_mb: int = 64


@dataclass
class ScanResult:
    rows: np.ndarray
    cols: np.ndarray
    label_fraction: np.ndarray
    nodata_fraction: np.ndarray
    unusable_fraction: np.ndarray
    features: np.ndarray  # (n, 2C): per-band mean then per-band std of valid pixels (subsampled)


def scan_chunk(task: ScanTask) -> ScanResult:
    """Per-tile fractions and features of one chunk (one full-resolution windowed read)."""
    t = task.tile_size
    with gdal_env(cache_mb=task.cache_mb, GDAL_NUM_THREADS="1"), open_raster(task.path) as ds:
        data, valid = read_block(ds, task.window)
    mask = burn_mask(task.grid[task.window], task.labels)
    mask[~valid] = IGNORE
    h, w = valid.shape
    ny, nx = h // t, w // t
    npx = float(t * t)
    iy = (np.array([r for r, _ in task.tiles]) - int(task.window.row_off)) // t
    ix = (np.array([c_ for _, c_ in task.tiles]) - int(task.window.col_off)) // t

    def per_tile(a: np.ndarray, size: int, dtype: Any = None) -> np.ndarray:  # (.., ny*s, nx*s) -> (.., ny, nx)
        lead = a.shape[:-2]
        return a.reshape(*lead, ny, size, nx, size).sum(axis=(-3, -1), dtype=dtype)

    labelled = per_tile((mask > 0) & (mask < IGNORE), t, np.int64)
    unusable = per_tile(mask == IGNORE, t, np.int64)
    invalid = per_tile(~valid, t, np.int64)
    # spectral features on a regular subsample (~64 x 64 per tile)
    step = max(d for d in range(1, max(1, t // 64) + 1) if t % d == 0)
    ts = t // step
    vs = valid[::step, ::step]
    sub = np.where(vs, data[:, ::step, ::step], 0).astype(np.float64)
    n = per_tile(vs, ts, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = per_tile(sub, ts) / n
        var = per_tile(sub * sub, ts) / n - mean * mean
    std = np.sqrt(np.maximum(var, 0.0))
    feats = np.concatenate([mean, std], axis=0)[:, iy, ix].T  # (n tiles, 2C); NaN where no valid pixel
    return ScanResult(
        rows=np.array([r for r, _ in task.tiles], np.int64),
        cols=np.array([c_ for _, c_ in task.tiles], np.int64),
        label_fraction=labelled[iy, ix] / npx,
        nodata_fraction=invalid[iy, ix] / npx,
        unusable_fraction=unusable[iy, ix] / npx,
        features=np.ascontiguousarray(feats),
    )


# --------------------------------------------------------------------------------------------
# extract
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExtractTask:
    path: str
    grid: Grid
    tiles: tuple[tuple[int, int, int], ...]  # (zarr index, row_off, col_off)
    tile_size: int
    labels: SceneLabels
    zarr_path: str
    dtype: str
    boundary_class: int | None = None
    boundary_width: int = 0
    cache_mb: int = 64


@dataclass
class ExtractResult:
    index: np.ndarray
    label_fraction: np.ndarray
    nodata_fraction: np.ndarray
    unusable_fraction: np.ndarray
    class_pixels: np.ndarray  # (256,) int64 bincount of the written masks
    valid_pixels: np.ndarray  # (C,) int64
    hist: np.ndarray | None = None  # (C, nbins) int64 for 8/16-bit integers
    sums: np.ndarray | None = None  # (C, 2) float64 sum, sum of squares (other dtypes)
    sample: np.ndarray | None = None  # (C, n) float64 pixel sample (other dtypes)
    extra: dict[str, Any] = field(default_factory=dict)


def extract_chunk(task: ExtractTask) -> ExtractResult:
    """Read, mask and write the tiles of one chunk; each tile goes to its own zarr chunk."""
    t = task.tile_size
    rows = [r for _, r, _ in task.tiles]
    cols = [c for _, _, c in task.tiles]
    r0, c0 = min(rows), min(cols)
    bound = Window(c0, r0, max(cols) + t - c0, max(rows) + t - r0)
    dense = len(task.tiles) * t * t >= 0.25 * bound.width * bound.height
    images = ChunkWriter(task.zarr_path, "images")
    masks = ChunkWriter(task.zarr_path, "masks")
    n = len(task.tiles)
    res = ExtractResult(
        index=np.array([i for i, _, _ in task.tiles], np.int64),
        label_fraction=np.zeros(n),
        nodata_fraction=np.zeros(n),
        unusable_fraction=np.zeros(n),
        class_pixels=np.zeros(256, np.int64),
        valid_pixels=np.zeros(0, np.int64),
    )
    with gdal_env(cache_mb=task.cache_mb, GDAL_NUM_THREADS="1"), open_raster(task.path) as ds:
        cnt = ds.count
        res.valid_pixels = np.zeros(cnt, np.int64)
        hist_spec = HIST_DTYPES.get(task.dtype)
        if hist_spec:
            res.hist = np.zeros((cnt, hist_spec[1]), np.int64)
        else:
            res.sums = np.zeros((cnt, 2), np.float64)
            samples = []
        if dense:
            data_b, valid_b = read_block(ds, bound)
            mask_b = burn_mask(
                task.grid[bound], task.labels, boundary_class=task.boundary_class, boundary_width=task.boundary_width
            )
        run_start, run_imgs, run_masks = 0, [], []
        for k, (idx, r, c) in enumerate(task.tiles):
            win = Window(c, r, t, t)
            if dense:
                sl = (slice(r - r0, r - r0 + t), slice(c - c0, c - c0 + t))
                data, valid, mask = data_b[(slice(None), *sl)], valid_b[sl], mask_b[sl].copy()
            else:
                data, valid = read_block(ds, win)
                mask = burn_mask(
                    task.grid[win], task.labels, boundary_class=task.boundary_class, boundary_width=task.boundary_width
                )
            mask[~valid] = IGNORE
            if run_imgs and (idx != run_start + len(run_imgs) or len(run_imgs) >= 32):
                _flush(images, masks, run_start, run_imgs, run_masks)
            if not run_imgs:
                run_start = idx
            run_imgs.append(data.astype(task.dtype, copy=False))
            run_masks.append(mask)
            npx = float(t * t)
            res.label_fraction[k] = np.count_nonzero((mask > 0) & (mask < IGNORE)) / npx
            res.unusable_fraction[k] = np.count_nonzero(mask == IGNORE) / npx
            res.nodata_fraction[k] = 1.0 - np.count_nonzero(valid) / npx
            res.class_pixels += np.bincount(mask.ravel(), minlength=256)
            all_valid = bool(valid.all())
            px = data.reshape(cnt, -1) if all_valid else data[:, valid]  # (C, n valid)
            res.valid_pixels += px.shape[1]
            if hist_spec:
                off, nb = hist_spec
                for b in range(cnt):
                    v = px[b] if off == 0 else px[b].astype(np.int32) - off
                    res.hist[b] += np.bincount(v, minlength=nb)
            elif px.shape[1]:
                pf = px.astype(np.float64)
                res.sums[:, 0] += pf.sum(axis=1)
                res.sums[:, 1] += (pf * pf).sum(axis=1)
                step = max(1, pf.shape[1] // SAMPLE_PER_TILE)
                samples.append(pf[:, ::step])
        _flush(images, masks, run_start, run_imgs, run_masks)
        if not hist_spec:
            res.sample = np.concatenate(samples, axis=1) if samples else np.zeros((cnt, 0))
    return res


class ChunkWriter:
    """Write whole chunks of one zarr v3 array straight to their files (one file per tile).

    Encodes with the array's own codec chain when it is the one :func:`store.create_arrays` makes
    (little-endian bytes + Blosc), which skips zarr's per-call async machinery (~2 ms a call);
    any other chain falls back to ``array[i] = block``. Each chunk is written by exactly one task.
    """

    def __init__(self, zarr_path: str, name: str) -> None:
        import sys

        import numcodecs
        import zarr
        from zarr.codecs import BloscCodec, BytesCodec

        self.array = zarr.open_array(store=f"{zarr_path}/{name}", mode="r+")
        self.root = f"{zarr_path}/{name}"
        codecs = self.array.metadata.codecs
        self.codec = None
        self._dirs: set[str] = set()
        if (
            sys.byteorder == "little"
            and len(codecs) == 2
            and isinstance(codecs[0], BytesCodec)
            and isinstance(codecs[1], BloscCodec)
        ):
            b = codecs[1]
            shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[str(b.shuffle.value)]
            self.codec = numcodecs.Blosc(cname=str(b.cname.value), clevel=b.clevel, shuffle=shuffle, blocksize=0)

    def write(self, start: int, blocks: np.ndarray) -> None:
        """Write ``blocks[k]`` as chunk ``start + k`` (each block is exactly one chunk)."""
        import os

        if self.codec is None:
            self.array[start : start + len(blocks)] = blocks
            return
        zeros = (0,) * (blocks.ndim - 1)
        for k in range(len(blocks)):
            key = self.array.metadata.encode_chunk_key((start + k, *zeros))
            path = f"{self.root}/{key}"
            folder = os.path.dirname(path)
            if folder not in self._dirs:
                os.makedirs(folder, exist_ok=True)
                self._dirs.add(folder)
            with open(path, "wb") as f:
                f.write(self.codec.encode(np.ascontiguousarray(blocks[k])))


def _flush(images: Any, masks: Any, start: int, imgs: list[np.ndarray], msks: list[np.ndarray]) -> None:
    """Write a run of consecutive tiles ``start ..`` (one chunk per tile)."""
    if not imgs:
        return
    images.write(start, np.stack(imgs))
    masks.write(start, np.stack(msks))
    imgs.clear()
    msks.clear()
