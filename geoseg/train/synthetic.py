"""Synthetic tile datasets in the tile-dataset contract (zarr + tiles.gpkg + dataset.json), for tests and benchmarks.

The pattern is learnable: class 1 pixels are bright in band 0, class 2 pixels bright in the last band, background
dark; each tile also has an ignore (255) stripe whose image values are random noise. Written directly (no scenes,
no ``geoseg tile``), so training can be tested and benchmarked on its own.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import zarr
from shapely.geometry import box

from geoseg.config import write_json

CLASSES = [
    {"id": 0, "name": "background", "color": "#000000"},
    {"id": 1, "name": "building", "color": "#e31a1c"},
    {"id": 2, "name": "pond", "color": "#1f78b4"},
]


def make_tiles(
    n: int, tile: int = 64, channels: int = 3, dtype: str = "uint8", seed: int = 0, num_classes: int = 3
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images (n, C, T, T) dtype, masks (n, T, T) uint8, kinds)`` with rectangles of classes 1..K-1."""
    rng = np.random.default_rng(seed)
    scale = 1000.0 if dtype == "uint16" else 1.0
    images = np.empty((n, channels, tile, tile), dtype=dtype)
    masks = np.zeros((n, tile, tile), dtype=np.uint8)
    kinds: list[str] = []
    for i in range(n):
        m = masks[i]
        kind = "positive" if i % 3 else ("hard_negative" if i % 2 else "easy_negative")
        if kind == "positive":
            for cls in range(1, num_classes):
                for _ in range(2):
                    h, w = rng.integers(tile // 8, tile // 3, size=2)
                    r, c = rng.integers(0, tile - h), rng.integers(0, tile - w)
                    m[r : r + h, c : c + w] = cls
        img = rng.normal(60, 10, size=(channels, tile, tile))
        img[0][m == 1] += 120
        img[channels - 1][m == 2] += 120
        s = int(rng.integers(0, tile - 6))
        m[:, s : s + 6] = 255  # ignore stripe with garbage pixels
        img[:, :, s : s + 6] = rng.uniform(0, 255, size=(channels, tile, 6))
        images[i] = np.clip(img * scale, 0, np.iinfo(dtype).max if dtype != "float32" else None).astype(dtype)
        kinds.append(kind)
    return images, masks, kinds


def write_tile_dataset(
    path: Path,
    *,
    n_train: int = 12,
    n_val: int = 6,
    tile: int = 64,
    channels: int = 3,
    dtype: str = "uint8",
    seed: int = 0,
    boundary_class: int | None = None,
) -> Path:
    """Write a dataset directory in the binding contract format; returns ``path``."""
    n = n_train + n_val
    images, masks, kinds = make_tiles(n, tile, channels, dtype, seed)
    path.mkdir(parents=True, exist_ok=True)
    g = zarr.open_group(str(path / "tiles.zarr"), mode="w")
    im = g.create_array("images", shape=images.shape, chunks=(1, channels, tile, tile), dtype=images.dtype)
    mk = g.create_array("masks", shape=masks.shape, chunks=(1, tile, tile), dtype="uint8")
    im[:] = images
    mk[:] = masks
    res = 0.5
    rows = []
    for i in range(n):
        x0 = 500_000.0 + (i % 6) * tile * res
        y0 = 40_000.0 - (i // 6) * tile * res
        rows.append(
            {
                "index": i,
                "scene": "scene_20240501.tif",
                "scene_path": "/data/scene_20240501.tif",
                "scene_date": "2024-05-01",
                "row_off": (i // 6) * tile,
                "col_off": (i % 6) * tile,
                "kind": kinds[i],
                "split": "train" if i < n_train else "val",
                "label_fraction": float(((masks[i] > 0) & (masks[i] != 255)).mean()),
                "nodata_fraction": 0.0,
                "geometry": box(x0, y0 - tile * res, x0 + tile * res, y0),
            }
        )
    gdf = gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:32636")
    gdf.to_file(path / "tiles.gpkg", layer="tiles", driver="GPKG")
    valid = images.astype(np.float64)
    bands = [
        {
            "index": b + 1,
            "name": ["red", "green", "blue", "nir", "swir"][b] if b < 5 else f"band{b + 1}",
            "mean": float(valid[:, b].mean()),
            "std": float(valid[:, b].std()),
            "p2": float(np.percentile(valid[:, b], 2)),
            "p98": float(np.percentile(valid[:, b], 98)),
        }
        for b in range(channels)
    ]
    classes = list(CLASSES)
    if boundary_class is not None:
        classes.append({"id": boundary_class, "name": "boundary", "color": "#ffff00"})
    write_json(
        path / "dataset.json",
        {
            "config": {"tile_size": tile},
            "classes": classes,
            "boundary_class": boundary_class,
            "ignore_index": 255,
            "in_channels": channels,
            "dtype": dtype,
            "tile_size": tile,
            "bands": bands,
            "resolution_m": res,
            "scenes": [],
            "date_range": ["2024-05-01", "2024-05-01"],
            "counts": {"requested": {}, "realised": {}, "by_split": {"train": n_train, "val": n_val}},
            "labels": {"features": 10},
        },
    )
    return path
