"""GDAL settings in one place: the CLI enters :func:`gdal_env` once per command; worker tasks and
stages called from Python enter it again (it is re-entrant, and a worker process does not inherit
the parent's ``rasterio.Env``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import rasterio


def gdal_options(cache_mb: int = 512, threads: int | str = "ALL_CPUS") -> dict[str, Any]:
    """The GDAL options geoseg runs under.

    A block cache that is too small makes windowed reads of striped/compressed files ~17x slower
    and rasterization 60-130x slower, so it is sized generously (``cache_mb`` MB, passed in bytes).
    """
    return {
        # rasterio.Env passes an int GDAL_CACHEMAX to GDALSetCacheMax64, i.e. in BYTES (512 would be 512 bytes)
        "GDAL_CACHEMAX": int(os.environ.get("GEOSEG_GDAL_CACHEMAX", cache_mb)) * 2**20,
        "GDAL_NUM_THREADS": str(threads),
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "CPL_LOG_ERRORS": "OFF",
        "CHECK_DISK_FREE_SPACE": "FALSE",
        # remote scenes (/vsicurl/): range requests, several ranges per request, retries on 429/5xx,
        # a per-file cache of the blocks read; each may be overridden by the environment variable
        **{k: os.environ.get(k, v) for k, v in _HTTP.items()},
    }


_HTTP = {
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_TIMEOUT": "60",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(64 * 2**20),
    "CPL_VSIL_CURL_CHUNK_SIZE": str(2**20),
}


@contextlib.contextmanager
def gdal_env(cache_mb: int = 512, **overrides: Any) -> Iterator[None]:
    """Enter a ``rasterio.Env`` with geoseg's GDAL options (re-entrant, cheap)."""
    opts = {**gdal_options(cache_mb), **overrides}
    with rasterio.Env(**opts):
        yield
