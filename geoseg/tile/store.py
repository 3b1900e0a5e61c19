"""Tile dataset writers: the zarr arrays, the ``tiles.gpkg`` index (styled by kind) and band stats.

Layout (binding, see notes/COMMON.md): ``tiles.zarr`` group with ``images`` (N, C, T, T) in the
scene dtype, chunks (1, C, T, T), and ``masks`` (N, T, T) uint8, chunks (1, T, T); no sharding,
so every chunk has exactly one writer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from rasterio.crs import CRS

from geoseg.classes import hex_rgb
from geoseg.io.output import atomic_path
from geoseg.qgis import style_gpkg
from geoseg.tile.work import HIST_DTYPES, TILE_BLOSC, ExtractResult

KIND_COLORS = {
    "positive": "#e41a1c", "mined_negative": "#984ea3", "hard_negative": "#ff7f00", "easy_negative": "#377eb8",
}  # fmt: skip


def create_arrays(zarr_path: Path, n: int, count: int, tile_size: int, dtype: str, fill: float = 0) -> None:
    """Create the empty ``images`` and ``masks`` arrays (Blosc-LZ4, one chunk per tile)."""
    import zarr
    from zarr.codecs import BloscCodec

    g = zarr.open_group(str(zarr_path), mode="w")
    # LZ4 + byte shuffle: ~2x faster to write and ~3x faster to read than zstd, a little larger
    comp = BloscCodec(**TILE_BLOSC)  # (the scan's stash encodes tiles with the same settings)
    g.create_array(
        "images",
        shape=(n, count, tile_size, tile_size),
        chunks=(1, count, tile_size, tile_size),
        dtype=dtype,
        fill_value=fill,
        compressors=comp,
        chunk_key_encoding={"name": "default", "separator": "."},  # flat chunk files: no per-tile mkdir
        dimension_names=("tile", "band", "y", "x"),
    )
    g.create_array(
        "masks",
        shape=(n, tile_size, tile_size),
        chunks=(1, tile_size, tile_size),
        dtype="uint8",
        fill_value=255,
        compressors=comp,
        chunk_key_encoding={"name": "default", "separator": "."},
        dimension_names=("tile", "y", "x"),
    )


def band_stats(results: list[ExtractResult], dtype: str, names: list[str]) -> list[dict[str, Any]]:
    """Mean, std, p2, p98 per band over valid pixels of the written tiles.

    Exact for 8/16-bit integers (from histograms); for other dtypes mean/std are exact and the
    percentiles come from a deterministic sample of up to 256 pixels per tile. ``results`` must be
    in a fixed order (by task key) for bit-identical float sums.
    """
    count = len(names)
    spec = HIST_DTYPES.get(dtype)
    out = []
    if spec:
        hist = np.zeros((count, spec[1]), np.int64)
        for r in results:
            if r.hist is not None:
                hist += r.hist
        values = np.arange(spec[1], dtype=np.float64) + spec[0]
        for b in range(count):
            h = hist[b]
            n = int(h.sum())
            if n == 0:
                out.append(_stat(b, names[b], None, None, None, None))
                continue
            mean = float((h * values).sum() / n)
            var = float((h * (values - mean) ** 2).sum() / n)
            cdf = np.cumsum(h)
            p2 = float(values[np.searchsorted(cdf, 0.02 * n)])
            p98 = float(values[np.searchsorted(cdf, 0.98 * n)])
            out.append(_stat(b, names[b], mean, var**0.5, p2, p98))
        return out
    sums = np.zeros((count, 2))
    n_valid = np.zeros(count, np.int64)
    samples = []
    for r in results:
        if r.sums is not None:
            sums += r.sums
            n_valid += r.valid_pixels
        if r.sample is not None and r.sample.size:
            samples.append(r.sample)
    sample = np.concatenate(samples, axis=1) if samples else np.zeros((count, 0))
    for b in range(count):
        if n_valid[b] == 0:
            out.append(_stat(b, names[b], None, None, None, None))
            continue
        mean = sums[b, 0] / n_valid[b]
        var = max(sums[b, 1] / n_valid[b] - mean * mean, 0.0)
        p2, p98 = (float(v) for v in np.percentile(sample[b], [2, 98])) if sample.shape[1] else (mean, mean)
        out.append(_stat(b, names[b], float(mean), float(var**0.5), p2, p98))
    return out


def _stat(b: int, name: str, mean: Any, std: Any, p2: Any, p98: Any) -> dict[str, Any]:
    return {"index": b + 1, "name": name, "mean": mean, "std": std, "p2": p2, "p98": p98}


def write_index(path: Path, tiles: pd.DataFrame, geoms: np.ndarray, crs: CRS) -> None:
    """Write ``tiles.gpkg`` (layer ``tiles``), ``tiles.qml`` and the style stored in the GeoPackage
    (categorized by ``kind``). ``path`` is inside the stage's staging folder (geoseg.io.output.staged_output),
    which makes the GeoPackage atomic (GDAL wants a ``.gpkg`` name, so no ``atomic_path`` temp for it);
    the QML goes through :func:`geoseg.io.output.atomic_path`."""
    cols = [
        "index", "scene", "scene_path", "scene_date", "row_off", "col_off", "kind", "split",
        "label_fraction", "nodata_fraction", "unusable_fraction", "lookalike", "mined",
    ]  # fmt: skip
    gdf = gpd.GeoDataFrame(tiles[cols].reset_index(drop=True), geometry=list(geoms), crs=crs.to_wkt())
    gdf.to_file(path, layer="tiles", driver="GPKG", engine="pyogrio")
    qml = kind_qml()
    with atomic_path(path.with_suffix(".qml")) as tmp:
        tmp.write_text(qml)
    style_gpkg(path, "tiles", [], qml=qml, style_name="by kind", description="geoseg tile kinds")


def kind_qml() -> str:
    """A QGIS categorized-renderer style for the tile index: outline colour by ``kind``."""
    cats, syms = [], []
    for i, (kind, color) in enumerate(KIND_COLORS.items()):
        r, g, b = hex_rgb(color)
        cats.append(f'      <category symbol="{i}" value="{kind}" label="{kind}" render="true"/>')
        syms.append(
            f"""      <symbol type="fill" name="{i}" alpha="1" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" pass="0" locked="0">
          <Option type="Map">
            <Option type="QString" name="color" value="{r},{g},{b},60"/>
            <Option type="QString" name="style" value="solid"/>
            <Option type="QString" name="outline_color" value="{r},{g},{b},255"/>
            <Option type="QString" name="outline_style" value="solid"/>
            <Option type="QString" name="outline_width" value="0.6"/>
            <Option type="QString" name="outline_width_unit" value="MM"/>
          </Option>
        </layer>
      </symbol>"""
        )
    nl = "\n"
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="Symbology">
  <renderer-v2 type="categorizedSymbol" attr="kind" symbollevels="0" enableorderby="0" forceraster="0">
    <categories>
{nl.join(cats)}
    </categories>
    <symbols>
{nl.join(syms)}
    </symbols>
  </renderer-v2>
  <layerGeometryType>2</layerGeometryType>
</qgis>
"""


def tile_polygons(footprints: np.ndarray, transformer: Any | None) -> np.ndarray:
    """Tile footprints (polygons in the scene CRS, see :meth:`geoseg.grid.Grid.tile_footprints`) in the
    index CRS: unchanged without a ``transformer``; with a ``pyproj.Transformer`` densified (edges cut
    to at most 1/16 of the larger bounding-box side) before reprojection."""
    if transformer is None:
        return footprints
    b = shapely.bounds(footprints)
    seg = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) / 16
    dense = shapely.segmentize(footprints, seg)
    return shapely.transform(dense, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))
