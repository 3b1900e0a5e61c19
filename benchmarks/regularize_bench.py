"""Benchmark building regularisation: geoseg.regularize vs the ``buildingregulariser`` library (PyPI).

Synthetic truth: a grid of rotated rectangles, L-shapes and pairs of rectangles sharing a wall
(sides 8-40 px, any angle), rasterised (pixel centres inside) and traced back to 4-connected pixel
outlines as ``geoseg vectorize`` does (:func:`geoseg.testing.rasterised_footprints`). Every method
works in pixel units (pixel size 1). Printed per method:

* IoU with the true polygon: mean, 5th percentile, share >= 0.9;
* corner angles: per polygon the largest deviation from 90° of any corner (a vertex turning by
  5° or more; near-straight vertices count in ``verts`` only): median, 95th percentile, and the
  share of polygons whose every corner is within 10° of 90°;
* vertices per polygon (truth: 4 or 6);
* neighbour overlaps: pairs whose intersection has area > 1e-6 px², and their total area (px²);
* fallbacks / outputs missing or split (the library may drop or explode polygons);
* seconds per 1000 polygons (one process, one core; library with ``num_cores=1``).

Run: ``.venv/bin/python benchmarks/regularize_bench.py [--cells 28] [--seed 0]`` (the library
rows need ``pip install buildingregulariser``; they are skipped without it).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import shapely

from geoseg.regularize import regularize_polygons
from geoseg.testing import rasterised_footprints


def corner_dev(g: Any) -> float:
    """Largest |turn - 90°| over the exterior's corners (vertices turning by 5° or more; degrees)."""
    c = np.asarray(g.exterior.coords)[:-1]
    d = np.diff(np.vstack([c, c[:1]]), axis=0)
    a = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    turn = np.abs((np.diff(np.r_[a, a[:1]]) + 180) % 360 - 180)
    turn = turn[turn >= 5]
    return float(np.max(np.abs(turn - 90))) if len(turn) else 90.0


def overlaps(geoms: np.ndarray) -> tuple[int, float]:
    tree = shapely.STRtree(geoms)
    a, b = tree.query(geoms, predicate="intersects")
    sel = a < b
    if not sel.any():
        return 0, 0.0
    area = shapely.area(shapely.intersection(geoms[a[sel]], geoms[b[sel]]))
    return int((area > 1e-6).sum()), float(area.sum())


def library(**kw: Any) -> Callable[[np.ndarray], tuple[np.ndarray, int]]:
    def fn(traced: np.ndarray) -> tuple[np.ndarray, int]:
        import geopandas as gpd
        from buildingregulariser import regularize_geodataframe

        gdf = gpd.GeoDataFrame({"i": np.arange(len(traced))}, geometry=list(traced), crs="EPSG:3857")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = regularize_geodataframe(gdf, num_cores=1, **kw)
        counts = np.bincount(res["i"].to_numpy(), minlength=len(traced))
        out = np.array([shapely.Polygon()] * len(traced), dtype=object)
        for i, grp in res.groupby("i"):
            g = shapely.union_all(grp.geometry.to_numpy())
            out[int(i)] = max(getattr(g, "geoms", [g]), key=lambda p: p.area)
        return out, int((counts != 1).sum())

    return fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=28, help="grid cells per side (~1.33 polygons per cell)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    truth, _, traced = rasterised_footprints(args.cells, seed=args.seed)
    truth_a, traced_a = np.array(truth, dtype=object), np.array(traced, dtype=object)
    methods: dict[str, Callable[[np.ndarray], tuple[np.ndarray, int]]] = {
        "pixel outline": lambda t: (t, 0),
        "simplify 0.5 px (default)": lambda t: (shapely.simplify(t, 0.5, preserve_topology=True), 0),
        "geoseg.regularize": lambda t: (
            (r := regularize_polygons(t, pixel_size=1.0)),
            int(sum(a is b for a, b in zip(r, t, strict=True))),
        ),
    }
    try:
        import buildingregulariser  # noqa: F401

        methods["buildingregulariser defaults"] = library(simplify_tolerance=0.5, parallel_threshold=1.0)
        for tol in (1.0, 1.5, 2.0):
            methods[f"buildingregulariser {tol:g}px, 90° only"] = library(
                simplify_tolerance=tol, parallel_threshold=1.0, allow_45_degree=False, allow_circles=False
            )
    except ImportError:
        print("buildingregulariser not installed: library rows skipped")
    n = len(truth_a)
    print(f"{n} polygons (truth vertices per polygon: {np.mean(shapely.get_num_coordinates(truth_a) - 1):.2f})")
    head = (
        f"{'method':34s} {'IoU mean':>8s} {'IoU p5':>7s} {'>=0.9':>6s} {'dev med':>7s} {'dev p95':>7s} "
        f"{'<=10°':>6s} {'verts':>6s} {'ovl pairs':>9s} {'ovl px²':>8s} {'fb/miss':>7s} {'s/1000':>7s}"
    )
    print(head)
    for name, fn in methods.items():
        t0 = time.perf_counter()
        out, extra = fn(traced_a)
        dt = (time.perf_counter() - t0) * 1000 / n
        ok = ~shapely.is_empty(out)
        inter = shapely.area(shapely.intersection(out, truth_a))
        iou = inter / shapely.area(shapely.union(out, truth_a))
        dev = np.array([corner_dev(g) for g in out[ok]])
        verts = shapely.get_num_coordinates(out[ok]) - 1
        npairs, oarea = overlaps(out[ok])
        print(
            f"{name:34s} {iou.mean():8.3f} {np.percentile(iou, 5):7.3f} {np.mean(iou >= 0.9):6.1%} "
            f"{np.median(dev):7.1f} {np.percentile(dev, 95):7.1f} {np.mean(dev <= 10):6.1%} {verts.mean():6.1f} "
            f"{npairs:9d} {oarea:8.2f} {extra:7d} {dt:7.2f}"
        )


if __name__ == "__main__":
    main()
