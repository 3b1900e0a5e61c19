"""Benchmark ``geoseg tile`` against a raw rasterio block read and a naive per-tile loop, in one run.

Makes a ``SIZE x SIZE`` 3-band uint8 GeoTIFF (tiled 512, ZSTD; smooth texture + noise) and
``~POLYGONS`` small dated polygons clustered in "settlements", then measures:

* raw decode: one process reading every internal block of the file with rasterio (best of 2), then the
  same with 2 threads: the speed-up a second core gives pure decoding here, a ceiling for the ratios below;
* naive loop: one process, for every ``TILE x TILE`` tile: read the window, rasterize the labels
  that intersect it (STRtree query), ``np.save`` image and mask (every tile is written);
* geoseg: ``geoseg tile SCENE --labels ... --workers N`` as a child process, end to end (Python
  start-up, scan, selection, extraction, zarr + gpkg writes), for each N in ``--workers``;
* peak memory: the RSS of the whole process tree summed, sampled every 20 ms with psutil;
* other load: the cores other processes kept busy during each timed run (system-wide busy CPU time
  minus the run's own), which bounds what a second worker can gain on a shared machine.

Prints each wall time, its ratio to raw decode (``raw / wall``: the share of the decode-bound speed
reached), the speedups ``workers 2 / workers 1`` (target >= 1.7) and ``workers 2 vs naive``
(target >= 1.8), the peak RSS (target < 1.5 GB) and whether the ``--workers`` outputs are
byte-identical (zarr chunk files, dataset.json without its config, tiles.gpkg rows). The scene stays
in the OS page cache (it was just written), so the ratios compare CPU work, not disk speed.

    .venv/bin/python benchmarks/tile_bench.py                 # 20000 x 20000, 50,000 polygons
    .venv/bin/python benchmarks/tile_bench.py --size 8000     # quicker (polygons scale with area)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def raw_block_read(path: Path, threads: int = 1) -> float:
    """Seconds to read every internal block of ``path`` once (one process, rasterio); with ``threads`` > 1 the
    blocks are dealt round-robin to that many threads, each with its own dataset (GDAL releases the GIL)."""
    import threading

    import rasterio

    def part(k: int) -> None:
        with rasterio.Env(GDAL_CACHEMAX=256, GDAL_NUM_THREADS=1), rasterio.open(path) as ds:
            for _, w in list(ds.block_windows(1))[k::threads]:
                ds.read(window=w)

    t0 = time.perf_counter()
    pool = [threading.Thread(target=part, args=(k,)) for k in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return time.perf_counter() - t0


def naive_loop(scene: Path, labels: Path, out: Path, tile: int) -> None:
    """Every tile: windowed read + rasterize its labels + ``np.save`` image and mask (one process)."""
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.features import rasterize
    from rasterio.windows import Window
    from rasterio.windows import transform as win_transform

    out.mkdir(parents=True, exist_ok=True)
    gdf = gpd.read_file(labels)
    classes = {c: i for i, c in enumerate(sorted(set(gdf["class"])), start=1)}
    values = gdf["class"].map(classes).to_numpy()
    geoms = gdf.geometry.values
    tree = shapely.STRtree(geoms)
    with rasterio.open(scene) as ds:
        for r in range(0, ds.height, tile):
            for c in range(0, ds.width, tile):
                win = Window(c, r, min(tile, ds.width - c), min(tile, ds.height - r))
                img = ds.read(window=win)
                tr = win_transform(win, ds.transform)
                hits = tree.query(shapely.box(*rasterio.windows.bounds(win, ds.transform)))
                shape = (int(win.height), int(win.width))
                mask = (
                    rasterize(zip(geoms[hits], values[hits], strict=True), out_shape=shape, transform=tr, dtype="uint8")
                    if len(hits)
                    else np.zeros(shape, np.uint8)
                )
                np.save(out / f"{r}_{c}_img.npy", img)
                np.save(out / f"{r}_{c}_mask.npy", mask)


#: CPU seconds other processes used during the last :func:`run_child`, per second of its wall time (cores)
OTHER_LOAD: list[float] = []


def run_child(cmd: list[str]) -> tuple[float, float, str, str]:
    """Run ``cmd``; return wall seconds, peak RSS (MB) of its process tree, stdout and stderr. Also records
    in :data:`OTHER_LOAD` how many cores the rest of the machine kept busy meanwhile (system-wide busy CPU
    time minus the child's own), since on a shared machine that decides what a second worker can gain."""
    import resource

    import psutil

    busy0, own0 = _busy_cpu(psutil), _children_cpu(resource)
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
    other = (_busy_cpu(psutil) - busy0) - (_children_cpu(resource) - own0)
    OTHER_LOAD[:] = [max(0.0, other) / wall]
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{se[-3000:]}")
    return wall, peak / 2**20, so, se


def run_tile(scene: Path, labels: Path, out: Path, workers: int, tile: int, extra: list[str]) -> dict:
    """Run the CLI as a child; return wall seconds and peak RSS (MB) of the process tree."""
    exe = Path(sys.executable).with_name("geoseg")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "geoseg.cli"]
    cmd += ["tile", str(scene), "--labels", str(labels), "--out", str(out), "--tile-size", str(tile),
            "--workers", str(workers), "--no-progress", "--seed", "0", *extra]  # fmt: skip
    wall, peak, so, se = run_child(cmd)
    meta = json.loads((out / "dataset.json").read_text())
    timings = next((ln.split("timings: ", 1)[1] for ln in se.splitlines() if "geoseg tile timings" in ln), "")
    return {"wall_s": wall, "peak_mb": peak, "stdout": so.strip(), "counts": meta["counts"], "timings": timings}


def same_outputs(a: Path, b: Path) -> str:
    """'identical' when two tile outputs match byte for byte (zarr files, dataset.json minus config, index rows)."""
    import geopandas as gpd

    fa = {p.relative_to(a): p for p in sorted((a / "tiles.zarr").rglob("*")) if p.is_file()}
    fb = {p.relative_to(b): p for p in sorted((b / "tiles.zarr").rglob("*")) if p.is_file()}
    if fa.keys() != fb.keys():
        return "DIFFERENT (zarr file names)"
    if any(fa[k].read_bytes() != fb[k].read_bytes() for k in fa):
        return "DIFFERENT (zarr chunk bytes)"
    ma, mb = (json.loads((x / "dataset.json").read_text()) for x in (a, b))
    for m in (ma, mb):
        m.pop("created", None)
        m["config"] = {k: v for k, v in m["config"].items() if k not in ("workers", "out", "processes")}
    if ma != mb:
        return "DIFFERENT (dataset.json)"
    ga, gb = (gpd.read_file(x / "tiles.gpkg", layer="tiles") for x in (a, b))
    if not (ga.drop(columns="geometry").equals(gb.drop(columns="geometry")) and ga.geometry.equals(gb.geometry)):
        return "DIFFERENT (tiles.gpkg)"
    return f"identical ({len(fa)} zarr files, {len(ga)} index rows, dataset.json)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000, help="scene edge in pixels (default 20000)")
    ap.add_argument("--polygons", type=int, default=None, help="default: 50,000 x (size / 20000)^2")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts to time (default 1,2)")
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--processes", action="store_true", help="workers as dask processes (default: threads)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    ap.add_argument("--workdir", type=Path, default=None, help="keep data here (default: a temp dir, removed)")
    ap.add_argument("--naive-child", nargs=4, metavar=("SCENE", "LABELS", "OUT", "TILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.naive_child:
        sc, lb, out, tile = args.naive_child
        naive_loop(Path(sc), Path(lb), Path(out), int(tile))
        return
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
              f"{n_poly} polygons; made in {time.perf_counter() - t0:.1f}s; cpus={os.cpu_count()}; "
              f"{platform.processor() or platform.machine()}, {_cpu_name()}")  # fmt: skip
        # outputs of an earlier run are removed before anything is timed, and nothing is deleted between
        # runs: on ext4 with online discard, deleting ~1 GB of small files stalls the writes that follow
        for old in [work / "naive", *work.glob("out_w*")]:
            shutil.rmtree(old, ignore_errors=True)
        _settle()
        raw = min(raw_block_read(scene) for _ in range(2))
        raw2 = min(raw_block_read(scene, threads=2) for _ in range(2))
        px = args.size**2
        print(f"raw decode (every block, rasterio): {raw:.2f}s = {px / raw / 1e6:.1f} Mpx/s; with 2 threads "
              f"{raw2:.2f}s = {raw / raw2:.2f}x (a second core, decoding alone)")  # fmt: skip
        walls: dict[str, float] = {}
        if not args.no_naive:
            out = work / "naive"
            shutil.rmtree(out, ignore_errors=True)
            _settle()
            cmd = [sys.executable, __file__, "--naive-child", str(scene), str(labels), str(out), str(args.tile_size)]
            wall, peak, _, _ = run_child(cmd)
            n_files = sum(1 for _ in out.iterdir())
            walls["naive"] = wall
            print(f"naive loop (read + rasterize + np.save, every tile, {n_files} files): {wall:.2f}s; "
                  f"ratio to raw decode {raw / wall:.2f}; peak RSS {peak:.0f} MB{_load()}")  # fmt: skip
        extra = ["--processes"] if args.processes else []
        outs = {}
        for w in (int(v) for v in args.workers.split(",")):
            out = work / f"out_w{w}"
            shutil.rmtree(out, ignore_errors=True)
            _settle()
            r = run_tile(scene, labels, out, w, args.tile_size, extra)
            outs[w] = out
            walls[f"w{w}"] = r["wall_s"]
            real = r["counts"]["realised"]
            n_tiles = sum(real.values())
            kept = n_tiles * args.tile_size**2 / px
            print(f"geoseg tile --workers {w}{' --processes' if args.processes else ''}: {r['wall_s']:.2f}s; "
                  f"ratio to raw decode {raw / r['wall_s']:.2f}; peak RSS {r['peak_mb']:.0f} MB (target < 1536); "
                  f"tiles {n_tiles} ({kept:.0%} of the scene) {real}{_load()}\n  phases: {r['timings']}")  # fmt: skip
        if "w1" in walls and "w2" in walls:
            print(f"speedup --workers 2 / --workers 1: {walls['w1'] / walls['w2']:.2f} (target >= 1.7)")
            print(f"outputs --workers 1 vs 2: {same_outputs(outs[1], outs[2])}")
        if "naive" in walls and "w2" in walls:
            print(f"speedup --workers 2 vs naive loop: {walls['naive'] / walls['w2']:.2f} (target >= 1.8)")
        if "naive" in walls and "w1" in walls:
            print(f"speedup --workers 1 vs naive loop: {walls['naive'] / walls['w1']:.2f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(work / "naive", ignore_errors=True)


def _busy_cpu(psutil: Any) -> float:
    """System-wide non-idle CPU seconds since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def _children_cpu(resource: Any) -> float:
    """CPU seconds of this process (its RSS sampling) and of its finished children."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_CHILDREN, resource.RUSAGE_SELF)]
    return sum(r.ru_utime + r.ru_stime for r in usage)


def _load() -> str:
    return f"; other processes kept {OTHER_LOAD[0]:.2f} of {os.cpu_count()} cores busy meanwhile" if OTHER_LOAD else ""


def _settle() -> None:
    """Flush dirty pages so one run's writes are not paid for by the next."""
    os.sync()
    time.sleep(2)


def _cpu_name() -> str:
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu ?"


if __name__ == "__main__":
    main()
