"""Tiling: timestamp-aware rasterization, targeted sampling, zarr store."""
