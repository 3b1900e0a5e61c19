"""The two task kinds of ``geoseg tile``, run in-process or on dask workers.

* :func:`scan_chunk` reads one chunk (``k x k`` tiles) at full resolution with one windowed read,
  rasterizes its labels once (with the boundary class), and returns per-tile fractions and spectral
  features. With a ``stash`` path it also writes the chunk's tiles, encoded exactly as their zarr
  chunks will be, to that one file: the mask of every tile and the image of every tile that is
  certain to be sampled (a positive: every positive is selected unless the split's gap drops it).
* :func:`extract_chunk` writes the selected tiles of one chunk, each to its own zarr chunk
  ``images[i]`` / ``masks[i]``: stashed bytes are copied (and decoded for the statistics), the other
  images (negatives) are read again. Every zarr chunk is written by exactly one task. It returns
  exact per-tile fractions and band statistics (histograms for 8/16-bit integers, sums + a pixel
  sample otherwise).

Memory per task: O(bands x chunk pixels) for the image plus the same in uint8 for the mask, where a
chunk is at most ~32 MB of pixels; never the scene. The stash is on disk (in the output's staging
folder, removed after the extract), at most the positives' images plus every candidate's mask,
compressed. Reads are never "boundless" in the rasterio sense (that goes through a VRT and is >10x
slower): the in-scene part is read and pasted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.windows import Window

from geoseg.grid import Grid
from geoseg.io.gdal_env import gdal_env
from geoseg.io.rasters import open_raster, read_window
from geoseg.tile.labels import IGNORE, SceneLabels, burn_mask, burn_masks

HIST_DTYPES = {"uint8": (0, 256), "uint16": (0, 65536), "int16": (-32768, 65536), "int8": (-128, 256)}
SAMPLE_PER_TILE = 256  # pixels per tile kept for float percentiles
#: the zarr arrays' compressor (:func:`geoseg.tile.store.create_arrays`); the scan's stash encodes with it too
TILE_BLOSC: dict[str, Any] = {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}
#: columns of :attr:`ScanResult.stash`: byte offset and length in the stash file of each tile's encoded image
#: (length 0: not stashed), packed validity bits (length 0: every pixel valid) and encoded mask
STASH_COLUMNS = ("img_off", "img_len", "valid_off", "valid_len", "mask_off", "mask_len")


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def read_chunk(ds: rasterio.DatasetReader, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`geoseg.io.rasters.read_window`, except that ``valid`` is None when every pixel is
    valid (window inside the scene, no nodata/mask/alpha, not float), saving the all-True array."""
    if _inside(ds, window) and _all_valid(ds):
        return ds.read(window=window), None
    return read_window(ds, window)


def read_tiles(
    ds: rasterio.DatasetReader, bound: Window, tiles: list[tuple[int, int]], t: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Like ``read_chunk(ds, bound)`` but decodes only the internal blocks under ``tiles``.

    ``tiles`` are ``(row_off, col_off)`` of ``t x t`` tiles inside ``bound``; pixels of ``bound``
    under no tile are left undefined. Selected tiles are often scattered (negatives), and
    GDAL decodes whole blocks, so reading the bounding window decoded ~2.5x the tile pixels.
    """
    if not (_inside(ds, bound) and _all_valid(ds)):
        return read_chunk(ds, bound)
    bh, bw = ds.block_shapes[0]
    r0, c0 = int(bound.row_off), int(bound.col_off)
    h, w = int(bound.height), int(bound.width)
    cells: set[tuple[int, int]] = set()
    for r, c in tiles:
        for br in range(r // bh, (r + t - 1) // bh + 1):
            for bc in range(c // bw, (c + t - 1) // bw + 1):
                cells.add((br, bc))
    data = np.empty((ds.count, h, w), ds.dtypes[0])
    by_row: dict[int, list[int]] = {}
    for br, bc in sorted(cells):
        by_row.setdefault(br, []).append(bc)
    for br, bcs in by_row.items():
        y0, y1 = max(br * bh, r0), min((br + 1) * bh, r0 + h)
        run = [bcs[0]]
        for nxt in [*bcs[1:], None]:  # one read per run of adjacent blocks in a block row
            if nxt is not None and nxt == run[-1] + 1:
                run.append(nxt)
                continue
            x0, x1 = max(run[0] * bw, c0), min((run[-1] + 1) * bw, c0 + w)
            win = Window(x0, y0, x1 - x0, y1 - y0)
            ds.read(window=win, out=data[:, y0 - r0 : y1 - r0, x0 - c0 : x1 - c0])
            run = [nxt] if nxt is not None else []
    return data, None


def _inside(ds: rasterio.DatasetReader, window: Window) -> bool:
    return (
        window.row_off >= 0
        and window.col_off >= 0
        and window.row_off + window.height <= ds.height
        and window.col_off + window.width <= ds.width
    )


def _all_valid(ds: rasterio.DatasetReader) -> bool:
    flags_ok = all(MaskFlags.all_valid in f for f in ds.mask_flag_enums)
    return flags_ok and all(np.dtype(d).kind != "f" for d in ds.dtypes)


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
    # the labels near the window; or (geoseg.tile.run, local threads) a callable that waits for them and returns
    # the completed task, called once the chunk is decoded
    labels: SceneLabels | Callable[[ScanTask], ScanTask] | None
    cache_mb: int = 64
    # with a stash file: write every tile's final mask there, and the image of every positive
    stash: str | None = None
    dtype: str | None = None  # the dataset dtype (stashed images are cast to it)
    boundary_class: int | None = None
    boundary_width: int = 0
    positive: tuple[float, float] = (0.01, 0.5)  # min_positive_fraction, max_unusable_fraction (sampling)


@dataclass
class ScanResult:
    rows: np.ndarray
    cols: np.ndarray
    label_fraction: np.ndarray
    nodata_fraction: np.ndarray
    unusable_fraction: np.ndarray
    features: np.ndarray  # (n, 2C): per-band mean then per-band std of valid pixels (subsampled)
    stash_path: str | None = None
    stash: np.ndarray | None = None  # (n, 6) int64, :data:`STASH_COLUMNS` per tile


def scan_chunk(task: ScanTask) -> ScanResult:
    """Per-tile fractions and features of one chunk (one full-resolution windowed read); with
    ``task.stash``, the chunk's encoded masks and positive images written to that file.

    The fractions are of the mask without the boundary class (boundary pixels count as the class
    they cover, contact gaps as background), which is what the selection rules read."""
    t = task.tile_size
    with gdal_env(cache_mb=task.cache_mb, GDAL_NUM_THREADS="1"), open_raster(task.path) as ds:
        data, valid = read_chunk(ds, task.window)
    if callable(task.labels):
        task = task.labels(task)
    if not isinstance(task.labels, SceneLabels):
        raise TypeError("ScanTask.labels must be SceneLabels (or a callable returning a task with them)")
    if task.stash is None:
        plain = final = burn_mask(task.grid[task.window], task.labels)
    else:
        grid = task.grid[task.window]
        plain, final = burn_masks(
            grid, task.labels, boundary_class=task.boundary_class, boundary_width=task.boundary_width
        )
    if valid is not None:
        plain[~valid] = IGNORE
        if final is not plain:
            final[~valid] = IGNORE
    mask = plain
    h, w = mask.shape
    ny, nx = h // t, w // t
    npx = float(t * t)
    iy = (np.array([r for r, _ in task.tiles]) - int(task.window.row_off)) // t
    ix = (np.array([c_ for _, c_ in task.tiles]) - int(task.window.col_off)) // t

    def per_tile(a: np.ndarray, size: int, dtype: Any = None) -> np.ndarray:  # (.., ny*s, nx*s) -> (.., ny, nx)
        lead = a.shape[:-2]
        return a.reshape(*lead, ny, size, nx, size).sum(axis=(-3, -1), dtype=dtype)

    labelled = tile_counts((mask - np.uint8(1)) < np.uint8(IGNORE - 1), t)  # 1 <= class id < 255
    unusable = tile_counts(mask == IGNORE, t)
    invalid = np.zeros((ny, nx), np.int64) if valid is None else tile_counts(~valid, t)
    # spectral features on a regular subsample (~64 x 64 per tile)
    step = max(d for d in range(1, max(1, t // 64) + 1) if t % d == 0)
    ts = t // step
    square = EXACT_SQUARE.get(data.dtype.name)
    if valid is None and square is not None:
        # all valid, 8/16-bit integers: every sum below is an exact integer in float64, so this
        # equals the general branch bit for bit (in any summation order) without float64 temporaries
        sub = data[:, ::step, ::step]
        n = np.full((ny, nx), float(ts * ts))
        s1 = per_tile(sub, ts, np.float64)
        sq = sub.astype(square)
        sq *= sq
        s2 = per_tile(sq, ts, np.float64)
    else:
        vs = np.ones((h // step, w // step), bool) if valid is None else valid[::step, ::step]
        sub = np.where(vs, data[:, ::step, ::step], 0).astype(np.float64)
        n = per_tile(vs, ts, np.float64)
        s1 = per_tile(sub, ts)
        s2 = per_tile(sub * sub, ts)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / n
        var = s2 / n - mean * mean
    std = np.sqrt(np.maximum(var, 0.0))
    feats = np.concatenate([mean, std], axis=0)[:, iy, ix].T  # (n tiles, 2C); NaN where no valid pixel
    res = ScanResult(
        rows=np.array([r for r, _ in task.tiles], np.int64),
        cols=np.array([c_ for _, c_ in task.tiles], np.int64),
        label_fraction=labelled[iy, ix] / npx,
        nodata_fraction=invalid[iy, ix] / npx,
        unusable_fraction=unusable[iy, ix] / npx,
        features=np.ascontiguousarray(feats),
    )
    if task.stash is not None:
        from geoseg.tile.sampling import is_positive

        pos = is_positive(res.label_fraction, res.unusable_fraction, *task.positive)
        res.stash_path = task.stash
        res.stash = _write_stash(task, task.stash, data, valid, final, pos)
    return res


def _write_stash(
    task: ScanTask, path: str, data: np.ndarray, valid: np.ndarray | None, mask: np.ndarray, images: np.ndarray
) -> np.ndarray:
    """Write the chunk's tiles to ``task.stash`` (one file, written once): per tile the encoded image
    (where ``images``) and its packed validity (when the chunk has invalid pixels), then the encoded
    mask. Returns the :data:`STASH_COLUMNS` table."""
    t = task.tile_size
    codec = tile_codec()
    r0, c0 = int(task.window.row_off), int(task.window.col_off)
    dtype = np.dtype(task.dtype or data.dtype)
    refs = np.zeros((len(task.tiles), len(STASH_COLUMNS)), np.int64)
    off = 0
    blobs = []
    for k, (r, c) in enumerate(task.tiles):
        sl = (slice(r - r0, r - r0 + t), slice(c - c0, c - c0 + t))
        parts = []
        if images[k]:
            img = np.ascontiguousarray(data[(slice(None), *sl)], dtype=dtype)
            parts.append(("img", codec.encode(img)))
            if valid is not None:
                parts.append(("valid", np.packbits(valid[sl]).tobytes()))
        parts.append(("mask", codec.encode(np.ascontiguousarray(mask[sl]))))
        for name, b in parts:
            j = STASH_COLUMNS.index(f"{name}_off")
            refs[k, j], refs[k, j + 1] = off, len(b)
            blobs.append(b)
            off += len(b)
    write_file(path, blobs)
    return refs


def tile_codec() -> Any:
    """The numcodecs Blosc equal to :data:`TILE_BLOSC` (the chunk bytes zarr writes with it)."""
    return _blosc(**TILE_BLOSC)


def _blosc(cname: str, clevel: int, shuffle: str) -> Any:
    import numcodecs

    code = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[shuffle]
    return numcodecs.Blosc(cname=cname, clevel=clevel, shuffle=code, blocksize=0)


EXACT_SQUARE = {"uint8": np.uint16, "int8": np.int16, "uint16": np.uint32, "int16": np.int32}


def tile_counts(flags: np.ndarray, t: int) -> np.ndarray:
    """True pixels per ``t x t`` tile of a bool ``(ny * t, nx * t)`` array: ``(ny, nx)`` int64.

    Rows of each tile are summed along the contiguous axis first (~5x faster than one 4-D sum).
    """
    h, w = flags.shape
    rows = flags.view(np.uint8).reshape(h, w // t, t).sum(axis=2, dtype=np.uint16 if t < 2**16 else np.int64)
    return rows.reshape(h // t, t, w // t).sum(axis=1, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# extract
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExtractTask:
    path: str
    grid: Grid
    tiles: tuple[tuple[int, int, int], ...]  # (zarr index, row_off, col_off)
    tile_size: int
    zarr_path: str
    dtype: str
    # the scan's stash: its files, and per tile (file index, *STASH_COLUMNS); every tile's mask is there
    stash_paths: tuple[str, ...]
    stash: np.ndarray
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
    """Write the tiles of one chunk (each to its own zarr chunk) from the scan's stash, reading the images
    that are not stashed; returns their exact fractions and band statistics."""
    t = task.tile_size
    npx = float(t * t)
    rows = [r for _, r, _ in task.tiles]
    cols = [c for _, _, c in task.tiles]
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
    refs = task.stash
    stashed = refs[:, 1 + STASH_COLUMNS.index("img_len")] > 0
    todo = [k for k in range(n) if not stashed[k]]  # tiles whose image is read from the scene
    codec = tile_codec()
    with (
        gdal_env(cache_mb=task.cache_mb, GDAL_NUM_THREADS="1"),
        open_raster(task.path) as ds,
        _Stash(task.stash_paths, refs) as stash,
    ):
        cnt = ds.count
        res.valid_pixels = np.zeros(cnt, np.int64)
        hist_spec = HIST_DTYPES.get(task.dtype)
        if hist_spec:
            res.hist = np.zeros((cnt, hist_spec[1]), np.int64)
        else:
            res.sums = np.zeros((cnt, 2), np.float64)
            samples = []
        dense = False
        if todo:
            # one read for the tiles to read when only the blocks under them are decoded (see read_tiles), or
            # when they cover enough of their window; else tile by tile
            r0, c0 = min(rows[k] for k in todo), min(cols[k] for k in todo)
            bound = Window(c0, r0, max(cols[k] for k in todo) + t - c0, max(rows[k] for k in todo) + t - r0)
            dense = (_inside(ds, bound) and _all_valid(ds)) or len(todo) * t * t >= 0.25 * bound.width * bound.height
            if dense:
                data_b, valid_b = read_tiles(ds, bound, [(rows[k], cols[k]) for k in todo], t)
        for start, stop in _runs([i for i, _, _ in task.tiles]):
            m = stop - start
            imgs = np.empty((m, cnt, t, t), task.dtype)
            msks = np.empty((m, t, t), np.uint8)
            valids: list[np.ndarray | None] = []
            img_bytes: list[memoryview | bytes | None] = []
            mask_bytes: list[memoryview | bytes] = []
            for j, k in enumerate(range(start, stop)):
                _, r, c = task.tiles[k]
                valid: np.ndarray | None = None
                if stashed[k]:
                    ib = stash.read(refs[k], "img")
                    codec.decode(ib, out=imgs[j])
                    img_bytes.append(ib)
                    vb = stash.read(refs[k], "valid")
                    if vb:
                        valid = np.unpackbits(np.frombuffer(vb, np.uint8), count=t * t).view(bool).reshape(t, t)
                elif dense:
                    sl = (slice(r - r0, r - r0 + t), slice(c - c0, c - c0 + t))
                    imgs[j] = data_b[(slice(None), *sl)]
                    valid = None if valid_b is None else valid_b[sl]
                    img_bytes.append(None)
                else:
                    win = Window(c, r, t, t)
                    imgs[j], valid = read_chunk(ds, win)
                    img_bytes.append(None)
                valids.append(valid)
                mb = stash.read(refs[k], "mask")  # (nodata pixels are ignore in it already)
                codec.decode(mb, out=msks[j])
                mask_bytes.append(mb)
            # whole-run statistics (vectorised; histograms by OpenCV, which releases the GIL)
            flat = msks.reshape(m, t * t)
            res.class_pixels += hist_u8(flat)
            res.label_fraction[start:stop] = np.count_nonzero((flat - np.uint8(1)) < np.uint8(IGNORE - 1), axis=1) / npx
            res.unusable_fraction[start:stop] = np.count_nonzero(flat == IGNORE, axis=1) / npx
            if all(v is None for v in valids):
                vstack = None
                res.nodata_fraction[start:stop] = 0.0
                res.valid_pixels += m * t * t
            else:
                vstack = np.stack([np.ones((t, t), bool) if v is None else v for v in valids]).reshape(m, t * t)
                n_ok = np.count_nonzero(vstack, axis=1)
                res.nodata_fraction[start:stop] = np.where(n_ok == t * t, 0.0, 1.0 - n_ok / npx)
                res.valid_pixels += int(n_ok.sum())
            if hist_spec:
                assert res.hist is not None  # allocated above for histogram dtypes
                px_all = imgs.reshape(m, cnt, t * t)
                for b in range(cnt):
                    res.hist[b] += band_hist(px_all[:, b], vstack, hist_spec)
            else:
                assert res.sums is not None  # allocated above for the other dtypes
                for j in range(m):  # per tile, in order: float sums and the sample stay bit-identical
                    v = None if vstack is None else vstack[j].reshape(t, t)
                    px = imgs[j].reshape(cnt, -1) if v is None or v.all() else imgs[j][:, v]
                    if px.shape[1]:
                        pf = px.astype(np.float64)
                        res.sums[:, 0] += pf.sum(axis=1)
                        res.sums[:, 1] += (pf * pf).sum(axis=1)
                        step = max(1, pf.shape[1] // SAMPLE_PER_TILE)
                        samples.append(pf[:, ::step])
            first = task.tiles[start][0]
            images.write(first, imgs, img_bytes)
            masks.write(first, msks, mask_bytes)
        if not hist_spec:
            res.sample = np.concatenate(samples, axis=1) if samples else np.zeros((cnt, 0))
    return res


class _Stash:
    """The parts of the scan's stash files one extract task needs: one ``os.pread`` per file of the byte range
    its tiles span (at most one chunk's stash, compressed), read on entry; :meth:`read` slices it."""

    def __init__(self, paths: tuple[str, ...], refs: np.ndarray) -> None:
        self.paths = paths
        self.refs = refs
        self.data: dict[int, tuple[int, memoryview]] = {}

    def __enter__(self) -> _Stash:
        offs = self.refs[:, 1::2]  # (n, 3): img, valid, mask offsets
        ends = offs + self.refs[:, 2::2]
        used = self.refs[:, 2::2] > 0
        for i in np.unique(self.refs[:, 0]).tolist():
            mine = (self.refs[:, 0] == i)[:, None] & used
            if not mine.any():
                continue
            lo, hi = int(offs[mine].min()), int(ends[mine].max())
            fd = os.open(self.paths[i], os.O_RDONLY)
            try:
                buf = bytearray(hi - lo)
                view = memoryview(buf)
                got = 0
                while got < len(buf):
                    n = os.preadv(fd, [view[got:]], lo + got)
                    if n <= 0:
                        raise OSError(f"{self.paths[i]}: stash file is shorter than expected")
                    got += n
            finally:
                os.close(fd)
            self.data[i] = (lo, view)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.data.clear()

    def read(self, ref: np.ndarray, what: str) -> memoryview | bytes:
        """The ``what`` (img, valid, mask) bytes of one tile (``ref`` = file index, *STASH_COLUMNS); b"" if none."""
        j = 1 + STASH_COLUMNS.index(f"{what}_off")
        off, size = int(ref[j]), int(ref[j + 1])
        if size == 0:
            return b""
        lo, view = self.data[int(ref[0])]
        return view[off - lo : off - lo + size]


def _runs(index: list[int], longest: int = 32) -> list[tuple[int, int]]:
    """``(start, stop)`` positions of runs of consecutive zarr indices (at most ``longest`` long)."""
    out = []
    start = 0
    for k in range(1, len(index) + 1):
        if k == len(index) or index[k] != index[k - 1] + 1 or k - start >= longest:
            out.append((start, k))
            start = k
    return out


_CV_EXACT_PX = 2**24  # OpenCV histograms count in float32: exact up to 2^24 pixels a call


def hist_u8(rows: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Exact ``(256,)`` int64 histogram of a uint8 ``(n, k)`` array (rows contiguous, any row stride),
    of the pixels where the bool ``mask`` (same shape) is True. OpenCV's ``calcHist`` (~5x faster than
    ``np.bincount``, GIL released) in calls of at most 2^24 pixels, so its float32 counts are exact."""
    n, k = rows.shape
    per_call = _CV_EXACT_PX // max(1, k)
    cv2 = _cv2()
    if cv2 is None or per_call == 0 or rows.strides[1] != 1:
        sel = rows if mask is None else rows[mask]
        return np.bincount(sel.ravel(), minlength=256).astype(np.int64)
    out = np.zeros(256, np.int64)
    for a in range(0, n, per_call):
        part = rows[a : a + per_call]
        mk = None if mask is None else np.ascontiguousarray(mask[a : a + per_call]).view(np.uint8)
        out += cv2.calcHist([part], [0], mk, [256], [0, 256]).ravel().astype(np.int64)
    return out


def band_hist(px: np.ndarray, valid: np.ndarray | None, spec: tuple[int, int]) -> np.ndarray:
    """Histogram (``spec`` = (offset, bins), see :data:`HIST_DTYPES`) of ``(n, k)`` band values where ``valid``."""
    off, nb = spec
    if px.dtype == np.uint8:
        return hist_u8(px, valid)
    sel = px if valid is None else px[valid]
    v = sel.ravel() if off == 0 else sel.ravel().astype(np.int32) - off
    return np.bincount(v, minlength=nb)


def _cv2() -> Any:
    from geoseg.tile.labels import _cv2 as cv

    return cv()


class ChunkWriter:
    """Write whole chunks of one zarr v3 array straight to their files (one file per tile).

    Encodes with the array's own codec chain when it is the one :func:`store.create_arrays` makes
    (little-endian bytes + Blosc), which skips zarr's per-call async machinery (~2 ms a call);
    any other chain falls back to ``array[i] = block``. Each chunk is written by exactly one task.
    """

    def __init__(self, zarr_path: str, name: str) -> None:
        import sys

        import zarr
        from zarr.codecs import BloscCodec, BytesCodec

        self.array = zarr.open_array(store=f"{zarr_path}/{name}", mode="r+")
        self.root = f"{zarr_path}/{name}"
        codecs: tuple[Any, ...] = getattr(self.array.metadata, "codecs", ())  # zarr v2 metadata has none: generic path
        self.codec = None
        self.stash_ok = False  # whether bytes encoded by tile_codec() are this array's chunk bytes
        self._dirs: set[str] = set()
        if (
            sys.byteorder == "little"
            and len(codecs) == 2
            and isinstance(codecs[0], BytesCodec)
            and isinstance(codecs[1], BloscCodec)
        ):
            b = codecs[1]
            self.codec = _blosc(str(b.cname.value), b.clevel, str(b.shuffle.value))
            self.stash_ok = self.codec.get_config() == tile_codec().get_config()

    def write(self, start: int, blocks: np.ndarray, encoded: Sequence[memoryview | bytes | None] = ()) -> None:
        """Write ``blocks[k]`` as chunk ``start + k`` (each block is exactly one chunk). ``encoded[k]``, where
        given and not None, is ``blocks[k]`` encoded by :func:`tile_codec` (the scan's stash): written as is."""
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
            pre = encoded[k] if k < len(encoded) and self.stash_ok else None
            write_file(path, [pre if pre is not None else self.codec.encode(np.ascontiguousarray(blocks[k]))])


def write_file(path: str, parts: Sequence[Any]) -> None:
    """Create (or truncate) ``path`` holding the byte strings ``parts`` in order: one ``open``, one ``writev``
    per up to 512 parts, one ``close`` (Python's buffered ``open`` adds ``fstat``/``ioctl``/``lseek`` calls,
    which add up over thousands of small chunk files)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for a in range(0, len(parts), 512):
            batch = [memoryview(b) for b in parts[a : a + 512]]
            while batch:
                n = os.writev(fd, batch)
                while batch and n >= len(batch[0]):
                    n -= len(batch[0])
                    batch.pop(0)
                if batch and n:
                    batch[0] = batch[0][n:]
    finally:
        os.close(fd)
