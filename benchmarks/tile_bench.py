"""Benchmark ``geoseg tile`` against a raw rasterio block read of the same file.

Makes a ``SIZE x SIZE`` 3-band uint8 GeoTIFF (tiled 512, ZSTD; smooth texture + noise) and
``~POLYGONS`` small dated polygons clustered in "settlements", then measures:

* baseline: one process reading every internal block of the file with rasterio (best of 2);
* geoseg: ``geoseg tile SCENE --labels ... --workers N`` as a child process, end to end (Python
  start-up, dask cluster start-up, scan, selection, extraction, zarr + gpkg writes);
* peak memory: the RSS of the whole process tree (CLI + nanny + worker processes) summed, sampled
  every 20 ms with psutil.

Prints ``ratio = geoseg throughput / raw block-read throughput`` (both in scene pixels per second;
target >= 0.8 with 2 workers) and the peak RSS (target < 1.5 GB). The scene stays in the OS page
cache for both runs (it was just written), so the ratio compares CPU work, not disk speed.

    .venv/bin/python benchmarks/tile_bench.py                 # 20000 x 20000, 50,000 polygons
    .venv/bin/python benchmarks/tile_bench.py --size 8000     # quicker (polygons scale with area)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_scene(path: Path, size: int, seed: int = 0) -> None:
    """3-band uint8, tiled 512 ZSTD, written one block row at a time (memory ~ size x 512 x 3)."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": "EPSG:32636",
        "transform": Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000), "tiled": True, "blockxsize": 512,
        "blockysize": 512, "compress": "zstd", "interleave": "pixel", "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    xx = np.arange(size, dtype=np.float32)
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(path, "w", **profile) as ds:
        for r0 in range(0, size, 512):
            h = min(512, size - r0)
            yy = np.arange(r0, r0 + h, dtype=np.float32)[:, None]
            base = 90 + 40 * np.sin(xx / 310.0)[None, :] + 35 * np.cos(yy / 270.0)
            block = np.empty((3, h, size), np.uint8)
            for b in range(3):
                noise = rng.integers(0, 24, (h, size), dtype=np.uint8)
                block[b] = np.clip(base + 10 * b, 0, 230).astype(np.uint8) + noise
            ds.write(block, window=Window(0, r0, size, h))
            ds.update_tags(TIFFTAG_DATETIME="2021:06:01 00:00:00")


def make_labels(path: Path, size: int, n: int, seed: int = 0) -> int:
    """``n`` small rotated rectangles (4-20 px) around 0.4 * n / 1000 settlement centres."""
    import geopandas as gpd
    import shapely

    rng = np.random.default_rng(seed + 1)
    n_towns = max(4, int(0.4 * n / 1000))
    towns = rng.uniform(0.05 * size, 0.95 * size, (n_towns, 2))
    spread = rng.uniform(0.01, 0.04, n_towns) * size
    which = rng.integers(0, n_towns, n)
    cx = np.clip(towns[which, 0] + rng.normal(0, 1, n) * spread[which], 10, size - 10)
    cy = np.clip(towns[which, 1] + rng.normal(0, 1, n) * spread[which], 10, size - 10)
    w, h = rng.uniform(4, 20, n), rng.uniform(4, 20, n)
    boxes = shapely.box(-w / 2, -h / 2, w / 2, h / 2)
    ang = rng.uniform(0, np.pi, n)
    geoms = []
    for g, a, x, y in zip(boxes, ang, cx, cy, strict=True):
        c, s = np.cos(a), np.sin(a)
        pts = shapely.get_coordinates(g)
        pts = np.column_stack([500_000 + 0.5 * (x + c * pts[:, 0] - s * pts[:, 1]),
                               4_000_000 - 0.5 * (y + s * pts[:, 0] + c * pts[:, 1])])  # fmt: skip
        geoms.append(shapely.Polygon(pts))
    dates = np.where(rng.random(n) < 0.9, "2020-05-01", "2022-01-01")
    cls = np.where(rng.random(n) < 0.7, "building", "shed")
    gpd.GeoDataFrame({"class": cls, "date": dates}, geometry=geoms, crs="EPSG:32636").to_file(path)
    return n


def raw_block_read(path: Path) -> float:
    """Seconds to read every internal block of ``path`` once (one process, rasterio)."""
    import rasterio

    with rasterio.Env(GDAL_CACHEMAX=256), rasterio.open(path) as ds:
        t0 = time.perf_counter()
        for _, w in ds.block_windows(1):
            ds.read(window=w)
        return time.perf_counter() - t0


def run_tile(scene: Path, labels: Path, out: Path, workers: int, tile: int, extra: list[str]) -> dict:
    """Run the CLI as a child; return wall seconds and peak RSS (MB) of the process tree."""
    import psutil

    exe = Path(sys.executable).with_name("geoseg")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "geoseg.cli"]
    cmd += ["tile", str(scene), "--labels", str(labels), "--out", str(out), "--tile-size", str(tile),
            "--workers", str(workers), "--no-progress", "--seed", "0", *extra]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [ps, *ps.children(recursive=True)]
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    so, se = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"geoseg tile failed ({proc.returncode}):\n{se[-3000:]}")
    meta = json.loads((out / "dataset.json").read_text())
    timings = next((ln.split("timings: ", 1)[1] for ln in se.splitlines() if "geoseg tile timings" in ln), "")
    return {"wall_s": wall, "peak_mb": peak / 2**20, "stdout": so.strip(), "counts": meta["counts"], "timings": timings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000, help="scene edge in pixels (default 20000)")
    ap.add_argument("--polygons", type=int, default=None, help="default: 50,000 x (size / 20000)^2")
    ap.add_argument("--workers", default="2", help="comma-separated worker counts to time (default 2)")
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--processes", action="store_true", help="dask workers as processes (default: threads)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep data here (default: a temp dir, removed)")
    args = ap.parse_args()
    n_poly = args.polygons or round(50_000 * (args.size / 20000) ** 2)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tile_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    scene, labels = work / "scene.tif", work / "labels.gpkg"
    try:
        t0 = time.perf_counter()
        if not scene.exists():
            make_scene(scene, args.size)
        if not labels.exists():
            make_labels(labels, args.size, n_poly)
        print(f"data: {args.size}x{args.size}x3 uint8 tiled ZSTD ({scene.stat().st_size / 1e6:.0f} MB), "
              f"{n_poly} polygons; made in {time.perf_counter() - t0:.1f}s; cpus={os.cpu_count()}")  # fmt: skip
        raw = min(raw_block_read(scene) for _ in range(2))
        px = args.size**2
        print(f"baseline raw block read: {raw:.2f}s = {px / raw / 1e6:.1f} Mpx/s")
        extra = ["--processes"] if args.processes else []
        for w in (int(v) for v in args.workers.split(",")):
            out = work / f"out_w{w}"
            shutil.rmtree(out, ignore_errors=True)
            r = run_tile(scene, labels, out, w, args.tile_size, extra)
            real = r["counts"]["realised"]
            n_tiles = sum(real.values())
            kept = n_tiles * args.tile_size**2 / px
            print(f"geoseg tile --workers {w}{' --processes' if args.processes else ''}: {r['wall_s']:.2f}s = "
                  f"{px / r['wall_s'] / 1e6:.1f} Mpx/s; ratio {raw / r['wall_s']:.2f} (target >= 0.8); "
                  f"peak RSS {r['peak_mb']:.0f} MB (target < 1536); tiles {n_tiles} ({kept:.0%} of the scene) "
                  f"{real}\n  phases: {r['timings']}")  # fmt: skip
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
