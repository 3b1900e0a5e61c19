"""Benchmark ``geoseg predict``: memory vs scene size, throughput vs bare forward, vectorize vs gdal_polygonize.

Prints three ratios, each against a baseline measured in the same run:

(a) peak RSS of a predict run on an 8192² scene / on a 2048² scene (target < 1.3). Each run is a
    separate subprocess; peak = the child's ``VmHWM`` (also sampled with psutil every 20 ms). The default
    "model" for (a) is a cheap pointwise one (softmax of two normalised bands, ``--memory-model
    pointwise``) so the 8192² run takes seconds on a CPU; ``--memory-model real`` uses the tiny
    smp Unet (same code path, + constant model memory).
(b) predict throughput (windows/s of the predict stage: read, normalise, forward, blend, write
    chunks; best of runs 2-3 in one process, so one-off kernel warm-up is excluded) / bare model
    forward (windows/s of ``model(x)`` on random input, same device, batch, tile, AMP; measured
    before, between and after the runs, best one) on a 2048² scene (target >= 0.85 on GPU). Best vs
    best because a shared machine's load changes several-fold within seconds.
(c) ``geoseg.vectorize.vectorize_prediction`` time / ``gdal_polygonize.py -f FlatGeobuf`` on the same
    mask (target <= 1.0), on three rasters of each ``--vectorize-sizes`` size (default 2048²): a
    smooth random field without and with a boundary class, and the (w) raster (small objects,
    boundary class); vectorize with its default threads and with one, best of 3 alternating runs
    each. gdal_polygonize runs in a subprocess; its interpreter+GDAL start-up is measured (the
    ratio without it is printed too).
(d) predict throughput per engine (``--engines torch,onnx``: PyTorch eager vs ONNX Runtime, same scene,
    device, batch; the model is exported once with ``geoseg.export.export_onnx`` before the runs;
    best of runs 2-3 per engine, each engine in its own process), printed as windows/s and onnx / torch.

(w) ``--worst-case``: instance-step memory with a prediction full of small objects (no model): a
    3-class (background, object, boundary) probabilities raster with one 5-14 px object every 20 px
    (30 % of them two touching halves split by boundary pixels; ~1 M objects at 20000²) vectorized by
    ``vectorize_prediction`` at each ``--worst-sizes`` size in its own subprocess; prints peak RSS
    (``VmHWM``) per size and the largest / smallest ratio (target < 1.3, under 1 GB at 20000²).

Run: ``.venv/bin/python benchmarks/predict_bench.py [--device auto] [--tile 256] [--batch 8]``;
``--worst-case [--worst-sizes 2048 4096 8192 20000]`` runs (w) only.
engines only: ``... --device cpu --skip a b c --sizes 2048 8192``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


# ------------------------------------------------------------------------------------------ data
def write_big_scene(path: Path, size: int, block: int = 512) -> None:
    """3-band uint16 scene written strip by strip (the generator never holds the full scene)."""
    import rasterio
    from affine import Affine

    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint16", "crs": "EPSG:32636",
        "transform": Affine(0.5, 0, 500_000.0, 0, -0.5, 40_000.0), "tiled": True, "blockxsize": block,
        "blockysize": block, "compress": "zstd",
    }  # fmt: skip
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as ds:
        for r0 in range(0, size, block):
            h = min(block, size - r0)
            rows, cols = np.mgrid[r0 : r0 + h, 0:size]
            base = 100 + 60 * np.sin(rows / 37.0) * np.cos(cols / 53.0)
            data = np.stack([base, base * 0.8 + 20, 200 - base]) + rng.normal(0, 5, (3, h, size))
            ds.write(np.clip(data, 0, 65535).astype("uint16"), window=rasterio.windows.Window(0, r0, size, h))


def make_model(path: Path, tile: int) -> Path:
    import torch

    from geoseg.train.model import build_model, save_model

    torch.manual_seed(0)
    net = build_model("unet", "tu-tf_efficientnet_lite0", 3, 2)
    cfg = {
        "arch": "unet", "encoder": "tu-tf_efficientnet_lite0", "in_channels": 3, "num_classes": 2,
        "classes": [{"id": 0, "name": "background", "color": "#000000"},
                    {"id": 1, "name": "object", "color": "#e31a1c"}],
        "boundary_class": None, "ignore_index": 255, "bands": ["b1", "b2", "b3"],
        "normalisation": {"mean": [100.0] * 3, "std": [50.0] * 3}, "tile_size": tile, "resolution_m": 0.5,
        "dataset": "benchmark", "date_range": None,
    }  # fmt: skip
    return save_model(path, net, cfg)


# ------------------------------------------------------------------------------------------ child
def pointwise(x):
    """A cheap "model": softmax over two normalised bands (pointwise, so memory is the pipeline's)."""
    import torch

    return torch.softmax(x[:, :2], 1)


def peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` (per address space, so not inherited from the parent
    across fork+exec as ``ru_maxrss`` is on Linux); ``ru_maxrss`` where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """One predict run; prints a JSON line with timing and peak RSS (+ bare forward when asked)."""

    from geoseg.io.gdal_env import gdal_env
    from geoseg.predict.run import PredictConfig, run

    cfg = PredictConfig(
        scenes=(args.scene,), model=args.model, out=args.out, bbox="-180,-90,180,90", overlap=args.overlap,
        batch_size=args.batch, device=args.device, progress=False, vectorize=False, engine=args.engine,
    )  # fmt: skip
    fn = pointwise if args.child_model == "pointwise" else None
    forward: list[float] = []
    runs: list[tuple[float, float]] = []
    for i in range(args.repeat):  # with --forward: run 0 warms up; forward measured between runs (shared machine)
        if args.forward:
            forward.append(bare_forward(args))
        shutil.rmtree(args.out, ignore_errors=True)
        t0 = time.perf_counter()
        with gdal_env():
            res = run(cfg, predict_fn=fn)
        if i > 0 or args.repeat == 1:
            runs.append((res.scenes[0].timing_s["predict_s"], time.perf_counter() - t0))
    sc = res.scenes[0]
    best = min(runs)
    report = {"windows": sc.windows, "predict_s": best[0], "total_s": best[1], "maxrss_mb": peak_rss_mb(),
              "predict_runs_s": [r[0] for r in runs]}  # fmt: skip
    if args.forward:
        forward.append(bare_forward(args))
        report["forward_windows_per_s"] = max(forward)  # best vs best: the least contended measurements
        report["forward_runs"] = forward
        report["device"] = args.device_name
    print("BENCH " + json.dumps(report), flush=True)


def bare_forward(args: argparse.Namespace) -> float:
    """Windows/s of the bare model forward (TorchPredictor: same AMP, channels_last, softmax) at ``--batch``."""
    import torch

    from geoseg.predict.adapter import TorchPredictor, cached_model, resolve_device

    dev = resolve_device(args.device)
    args.device_name = str(dev)
    net, _ = cached_model(args.model, dev)
    pred = TorchPredictor(net, dev, amp=True)
    x = torch.randn(args.batch, 3, args.tile, args.tile, device=dev)
    for _ in range(2):  # warm-up
        pred(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.forward_batches):
        y = pred(x)
    _ = float(y.sum())  # synchronises
    return args.forward_batches * args.batch / (time.perf_counter() - t)


def run_child(extra: list[str], flag: str = "--child") -> dict:
    """Run a child (predict, or ``--worst-child``); sample its RSS every 20 ms with psutil; return its report."""
    import psutil

    proc = subprocess.Popen([sys.executable, __file__, flag, *extra], stdout=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                if flag not in p.cmdline():  # not exec'd yet: still a copy of this (parent) process
                    time.sleep(0.005)
                    continue
                rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {out[-2000:]}")
    line = next(ln for ln in out.splitlines() if ln.startswith("BENCH "))
    rep = json.loads(line[6:])
    rep["sampled_peak_mb"] = peak / 2**20
    return rep


# ------------------------------------------------------------------------------------------ (c)
def bench_vectorize(tmp: Path, size: int = 2048, *, boundary: bool = False, scene: str = "field",
                    repeat: int = 3) -> dict | None:  # fmt: skip
    """vectorize_prediction vs gdal_polygonize.py on the same objects; gdal gets the object-pixel mask.

    ``scene="field"``: a smooth random field; with ``boundary``, a third band is a boundary class on the
    object outlines (as a model trained with ``--boundary-px`` predicts), so vectorize also separates
    touching instances. ``scene="worst"``: the (w) raster (one small object every 20 px, boundary class).
    vectorize runs with 1 thread and with its default thread count, gdal in between, ``repeat`` times
    alternating; the best time of each is kept (a shared machine's load changes within seconds)."""
    try:
        from geoseg.vectorize import vectorize_prediction
        from geoseg.vectorize.stage import default_workers
    except ImportError:
        return None
    import rasterio
    from affine import Affine
    from scipy import ndimage

    prof = {"driver": "GTiff", "width": size, "height": size, "crs": "EPSG:32636", "tiled": True,
            "transform": Affine(0.5, 0, 500_000.0, 0, -0.5, 40_000.0), "compress": "zstd"}  # fmt: skip
    tag = "w" if scene == "worst" else ("b" if boundary else "")
    prob_tif, mask_tif = tmp / f"vprob{tag}_{size}.tif", tmp / f"vmask{tag}_{size}.tif"
    if scene == "worst":
        boundary = True
        write_worst_case(prob_tif, size)
        with rasterio.open(prob_tif) as ds:
            q = ds.read()
    else:
        rng = np.random.default_rng(1)
        field = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 6)
        p1 = 1 / (1 + np.exp(-field * 40))
        probs = np.stack([1 - p1, p1])
        if boundary:
            pb = 0.6 * np.exp(-((field * 40 / 2) ** 2))  # high on the outlines (field ~ 0)
            probs = np.stack([(1 - pb) * (1 - p1), (1 - pb) * p1, pb])
        q = np.round(probs * 254).astype("uint8")
        with rasterio.open(prob_tif, "w", count=len(q), dtype="uint8", nodata=255, **prof) as ds:
            ds.write(q)
            ds.scales = (1 / 254,) * len(q)
    mask = ((np.argmax(q, axis=0) == 1) & (q[1] >= 127)).astype("uint8")
    with rasterio.open(mask_tif, "w", count=1, dtype="uint8", nodata=0, **prof) as ds:
        ds.write(mask, 1)
    classes = [{"id": 0, "name": "background", "color": "#000000"}, {"id": 1, "name": "object", "color": "#e31a1c"}]
    if boundary:
        classes.append({"id": 2, "name": "boundary", "color": "#ffff00"})
    gp = shutil.which("gdal_polygonize.py") or "/usr/bin/gdal_polygonize.py"
    py = "/usr/bin/python3"
    t = time.perf_counter()
    subprocess.run([py, "-c", "from osgeo import gdal, ogr"], check=True)
    t_start = time.perf_counter() - t
    fgb = tmp / f"v{tag}.fgb"
    nw = default_workers()
    best: dict[str, float] = {}
    n_poly = 0
    for _ in range(repeat):
        for w in sorted({1, nw}):
            t = time.perf_counter()
            n_poly = vectorize_prediction(prob_tif, tmp / f"v{tag}.gpkg", classes=classes, threshold=0.5,
                                          simplify_px=0.0, boundary_class=2 if boundary else None,
                                          workers=w)  # fmt: skip
            best[f"w{w}"] = min(best.get(f"w{w}", math.inf), time.perf_counter() - t)
        fgb.unlink(missing_ok=True)  # (GDAL would append to an existing file)
        t = time.perf_counter()
        subprocess.run([py, gp, "-q", str(mask_tif), "-mask", str(mask_tif), "-f", "FlatGeobuf", str(fgb)], check=True)
        best["gdal"] = min(best.get("gdal", math.inf), time.perf_counter() - t)
    import pyogrio

    n_gdal = pyogrio.read_info(fgb)["features"]
    for f in (prob_tif, mask_tif):
        os.unlink(f)
    return {"size": size, "scene": scene, "vectorize_s": best[f"w{nw}"], "vectorize_1thread_s": best["w1"],
            "workers": nw, "polygons": n_poly, "gdal_s": best["gdal"], "gdal_startup_s": t_start,
            "gdal_polygons": n_gdal, "boundary": boundary}  # fmt: skip


# ------------------------------------------------------------------------------------------ (w)
WORST_CLASSES = [
    {"id": 0, "name": "background", "color": "#000000"},
    {"id": 1, "name": "building", "color": "#e41a1c"},
    {"id": 2, "name": "boundary", "color": "#ffff33"},
]


def write_worst_case(path: Path, size: int, cell: int = 20, strip: int = 500) -> None:
    """Probabilities raster (uint8 p*254, like ``geoseg predict``) with one small object per ``cell``² cell,
    written strip by strip (the generator never holds the scene)."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    prof = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": "EPSG:32636",
            "transform": Affine(0.5, 0, 500_000.0, 0, -0.5, 40_000.0), "tiled": True, "blockxsize": 256,
            "blockysize": 256, "compress": "zstd", "nodata": 255}  # fmt: skip
    strip = max(cell, strip // cell * cell)
    ncc = -(-size // cell)
    with rasterio.open(path, "w", **prof) as ds:
        for r0 in range(0, size, strip):
            h = min(strip, size - r0)
            ncr = -(-h // cell)
            rng = np.random.default_rng([7, r0])
            ww, hh = rng.integers(5, 15, (ncr, ncc)), rng.integers(5, 15, (ncr, ncc))
            ox = 1 + (rng.random((ncr, ncc)) * (cell - 1 - ww)).astype(int)
            oy = 1 + (rng.random((ncr, ncc)) * (cell - 1 - hh)).astype(int)
            split = rng.random((ncr, ncc)) < 0.3
            y, x = np.arange(h)[:, None], np.arange(size)[None, :]
            cy, cx, ly, lx = y // cell, x // cell, y % cell, x % cell
            x0, y0, w, hgt, sp = (a[cy, cx] for a in (ox, oy, ww, hh, split))
            inside = (ly >= y0) & (ly < y0 + hgt) & (lx >= x0) & (lx < x0 + w)
            rim = (ly == y0) | (ly == y0 + hgt - 1) | (lx == x0) | (lx == x0 + w - 1) | (sp & (lx == x0 + w // 2))
            rim &= inside
            p = np.empty((3, h, size), np.float32)
            p[0], p[1], p[2] = 0.9, 0.05, 0.05
            p[:, inside] = np.array([0.05, 0.9, 0.05], np.float32)[:, None]
            p[:, rim] = np.array([0.05, 0.35, 0.6], np.float32)[:, None]
            ds.write(np.round(p * 254).astype("uint8"), window=Window(0, r0, size, h))
        ds.scales = (1 / 254,) * 3
        for i, c in enumerate(WORST_CLASSES, 1):
            ds.set_band_description(i, c["name"])


def worst_child(args: argparse.Namespace) -> None:
    """Vectorize one worst-case raster with the default block size; print polygons, time, peak RSS."""
    from geoseg.vectorize import vectorize_prediction

    t = time.perf_counter()
    n = vectorize_prediction(Path(args.scene), Path(args.out), classes=WORST_CLASSES, boundary_class=2,
                             min_area_m2=0.0, simplify_px=0.5)  # fmt: skip
    print("BENCH " + json.dumps({"polygons": n, "vectorize_s": time.perf_counter() - t, "maxrss_mb": peak_rss_mb()}))


def bench_worst_case(tmp: Path, sizes: list[int]) -> None:
    reps = {}
    for s in sorted(sizes):
        src = tmp / f"worst_{s}.tif"
        if not src.exists():
            t = time.perf_counter()
            write_worst_case(src, s)
            print(f"# wrote worst-case {s}x{s} probabilities in {time.perf_counter() - t:.1f}s", flush=True)
        r = run_child(["--scene", str(src), "--out", str(tmp / f"worst_{s}.gpkg")], flag="--worst-child")
        reps[s] = r
        print(f"(w) {s}x{s}: {r['polygons']} polygons, vectorize {r['vectorize_s']:.1f}s, peak RSS "
              f"{r['maxrss_mb']:.0f} MB (sampled {r['sampled_peak_mb']:.0f} MB)", flush=True)  # fmt: skip
        (tmp / f"worst_{s}.gpkg").unlink(missing_ok=True)
    lo, hi = min(reps), max(reps)
    if 2048 in reps and 8192 in reps:
        print(f"(w) peak memory ratio 8192²/2048² = {reps[8192]['maxrss_mb'] / reps[2048]['maxrss_mb']:.3f} "
              f"(target < 1.3)")  # fmt: skip
    if hi != lo and (lo, hi) != (2048, 8192):
        print(f"(w) peak memory ratio {hi}²/{lo}² = {reps[hi]['maxrss_mb'] / reps[lo]['maxrss_mb']:.3f} "
              f"({reps[hi]['polygons'] / max(reps[lo]['polygons'], 1):.0f}x the polygons)")  # fmt: skip


# ------------------------------------------------------------------------------------------ (d)
def bench_engines(args: argparse.Namespace, tmp: Path, model: Path, scene: Path, common: list[str]) -> None:
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if "onnx" in engines:
        from geoseg.export import export_onnx

        t = time.perf_counter()
        ex = export_onnx(model, model / "model.onnx")
        print(f"(d) exported ONNX opset {ex.opset} in {time.perf_counter() - t:.1f}s, max abs diff vs torch "
              f"{ex.max_abs_diff:.2e} (probabilities), {ex.max_abs_diff_logits:.2e} (logits)", flush=True)  # fmt: skip
    tps: dict[str, float] = {}
    for eng in engines:
        out = tmp / f"out_engine_{eng}"
        shutil.rmtree(out, ignore_errors=True)
        r = run_child([*common, "--scene", str(scene), "--out", str(out), "--child-model", "real", "--repeat", "3",
                       "--engine", eng])  # fmt: skip
        tps[eng] = r["windows"] / r["predict_s"]
        runs = ", ".join(f"{r['windows'] / v:.2f}" for v in r["predict_runs_s"])
        print(f"(d) engine {eng}: {tps[eng]:.2f} windows/s ({r['windows']} windows; runs {runs}; best used)",
              flush=True)  # fmt: skip
    if "torch" in tps and "onnx" in tps:
        print(f"(d) onnx / torch throughput = {tps['onnx'] / tps['torch']:.3f} on {args.device}", flush=True)


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scene")
    ap.add_argument("--model")
    ap.add_argument("--out")
    ap.add_argument("--child-model", default="real", choices=["real", "pointwise"])
    ap.add_argument("--forward", action="store_true")
    ap.add_argument("--forward-batches", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sizes", type=int, nargs=2, default=[2048, 8192])
    ap.add_argument("--memory-model", default="pointwise", choices=["real", "pointwise"])
    ap.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c", "d"])
    ap.add_argument("--engine", default="torch", help=argparse.SUPPRESS)
    ap.add_argument("--engines", default="torch,onnx", help="(d): engines compared, comma-separated")
    ap.add_argument("--workdir", help="keep data here (default: a temporary folder)")
    ap.add_argument("--vectorize-sizes", type=int, nargs="+", default=[2048], help="(c): raster sizes")
    ap.add_argument("--worst-case", action="store_true", help="only (w): vectorize memory with many small objects")
    ap.add_argument("--worst-sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--worst-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.worst_child:
        worst_child(args)
        return
    if args.worst_case:
        tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="predict_bench_"))
        tmp.mkdir(parents=True, exist_ok=True)
        print(f"# predict_bench --worst-case: workdir {tmp}, cpus {os.cpu_count()}", flush=True)
        bench_worst_case(tmp, args.worst_sizes)
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
        return

    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="predict_bench_"))
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"# predict_bench: workdir {tmp}, cpus {os.cpu_count()}, tile {args.tile}, overlap {args.overlap}, "
          f"batch {args.batch}, device {args.device}", flush=True)  # fmt: skip
    model = make_model(tmp / "model", args.tile)
    common = ["--model", str(model), "--device", args.device, "--tile", str(args.tile), "--overlap",
              str(args.overlap), "--batch", str(args.batch)]  # fmt: skip
    scenes = {}
    if "a" not in args.skip or "b" not in args.skip or "d" not in args.skip:
        needed = set(args.sizes) if "a" not in args.skip else {args.sizes[0]}
        for s in sorted(needed):
            scenes[s] = tmp / f"scene_{s}.tif"
            if not scenes[s].exists():
                t = time.perf_counter()
                write_big_scene(scenes[s], s)
                print(f"# wrote {s}x{s} scene in {time.perf_counter() - t:.1f}s", flush=True)

    if "a" not in args.skip:
        small, big = args.sizes
        reps = {}
        for s in (small, big):
            out = tmp / f"out_mem_{s}"
            shutil.rmtree(out, ignore_errors=True)
            reps[s] = run_child([*common, "--scene", str(scenes[s]), "--out", str(out), "--child-model",
                                 args.memory_model])  # fmt: skip
            r = reps[s]
            print(f"(a) {s}x{s}: peak RSS {r['maxrss_mb']:.0f} MB (sampled {r['sampled_peak_mb']:.0f} MB), "
                  f"{r['windows']} windows, predict {r['predict_s']:.1f}s, total {r['total_s']:.1f}s "
                  f"[{args.memory_model} model]", flush=True)  # fmt: skip
        ratio = reps[big]["maxrss_mb"] / reps[small]["maxrss_mb"]
        sampled = reps[big]["sampled_peak_mb"] / reps[small]["sampled_peak_mb"]
        print(f"(a) peak memory ratio {big}²/{small}² = {ratio:.3f} (psutil-sampled {sampled:.3f}; target < 1.3; "
              f"{(big / small) ** 2:.0f}x the pixels)", flush=True)  # fmt: skip

    if "b" not in args.skip:
        s = args.sizes[0]
        out = tmp / "out_tp"
        shutil.rmtree(out, ignore_errors=True)
        r = run_child([*common, "--scene", str(scenes[s]), "--out", str(out), "--child-model", "real", "--forward",
                       "--repeat", "3"])  # fmt: skip
        pred_tp = r["windows"] / r["predict_s"]
        e2e_tp = r["windows"] / r["total_s"]
        fwd = r["forward_windows_per_s"]
        runs = ", ".join(f"{v:.2f}" for v in r["forward_runs"])
        print(f"(b) {s}x{s} on {r['device']}: predict {pred_tp:.2f} windows/s (end to end incl. COGs "
              f"{e2e_tp:.2f}), bare forward {fwd:.2f} windows/s (runs: {runs}; best used)",
              flush=True)  # fmt: skip
        print(f"(b) predict / bare forward = {pred_tp / fwd:.3f}  (end to end {e2e_tp / fwd:.3f}; "
              f"target >= 0.85 on GPU)", flush=True)  # fmt: skip

    cases = [(size, scene, b) for size in args.vectorize_sizes
             for scene, b in (("field", False), ("field", True), ("worst", True))]  # fmt: skip
    for size, scene, boundary in cases if "c" not in args.skip else ():
        v = bench_vectorize(tmp, size, boundary=boundary, scene=scene)
        if v is None:
            print("(c) skipped: geoseg.vectorize is not available in this build")
            break
        net = max(v["gdal_s"] - v["gdal_startup_s"], 1e-6)
        what = "with a boundary class (instance separation)" if boundary else "no boundary class"
        print(f"(c) {v['size']}² {scene} raster, {what}: vectorize_prediction {v['vectorize_s']:.2f}s with "
              f"{v['workers']} threads, {v['vectorize_1thread_s']:.2f}s with 1 ({v['polygons']} polygons), "
              f"gdal_polygonize.py {v['gdal_s']:.2f}s ({v['gdal_polygons']} polygons; start-up "
              f"{v['gdal_startup_s']:.2f}s); best of 3 each")  # fmt: skip
        print(f"(c) vectorize / gdal_polygonize = {v['vectorize_s'] / v['gdal_s']:.3f} (1 thread "
              f"{v['vectorize_1thread_s'] / v['gdal_s']:.3f}; start-up excluded {v['vectorize_s'] / net:.3f}; "
              f"target <= 1.0)")  # fmt: skip
    if "d" not in args.skip:
        bench_engines(args, tmp, model, scenes[args.sizes[0]], common)
    if not args.workdir:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
