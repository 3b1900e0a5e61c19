"""Raster, vector and GDAL-environment I/O."""
