"""Timestamp-aware labels: read, class ids, per-scene validity, and window rasterization.

Conventions (also in the README):

* Class ids are stable: ``--classes a,b,c`` order, else the class names sorted as strings; id 0 is
  ``background``; the optional boundary class is ``K + 1``; 255 is ignore.
* A label is *valid* for a scene dated ``D`` when its ``date`` is not after ``D`` and (with
  ``--max-label-age N``) not older than ``D - N`` days, and ``valid_from <= D <= valid_to`` where
  those fields exist (missing values are open ends). Undated labels (no date, no valid_from/to)
  are valid with ``--undated keep`` and invalid with ``--undated drop``.
* Valid labels are burned with their class id; pixels covered only by *invalid* labels become 255
  (ignore), never background. Where a valid and an invalid label overlap, the valid one wins.
  Where valid labels of different classes overlap, the later feature in the file wins.
* With a coverage layer, pixels outside it are 255. Scene nodata pixels are 255.
* Boundary class (``boundary_width = w > 0``): a label pixel is boundary when a pixel within ``w``
  pixels (Chebyshev distance, i.e. a ``2w+1`` square) belongs to another instance or to no valid
  label. So outlines get an inner rim of ``w`` pixels and touching polygons are separated by ``2w``
  pixels. Close contact: a *background* pixel within ``w`` pixels of two different instances (the
  narrow gap between neighbours, as in HOT's ramp) is boundary too, so the model learns to keep
  the gap open. The scene edge is not an outline (computed as if the scene went on).

All rasterization uses the pixel-centre rule (``all_touched=False``) and is done per window, so
the cost and memory are bounded by the window, not the scene.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from rasterio.enums import MergeAlg
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import rasterize
from rasterio.windows import Window

from geoseg.classes import BOUNDARY_NAME, ClassTable
from geoseg.errors import InputError, LabelsError
from geoseg.grid import Grid, pixel_to_crs
from geoseg.io.dates import parse_date
from geoseg.io.vectors import clean_polygons, read_vector, require_field, to_crs

if TYPE_CHECKING:
    from geoseg.io.rasters import SceneInfo

log = logging.getLogger(__name__)

IGNORE = 255


# --------------------------------------------------------------------------------------------
# label table (all scenes)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Labels:
    """Cleaned, exploded label polygons with class ids and date intervals (in ``gdf.crs``).

    ``gdf`` columns: ``geometry``, ``class_id`` (1..K), ``date``, ``valid_from``, ``valid_to``
    (``datetime.date`` or None). Row order is the file order (it decides overlaps).
    """

    gdf: gpd.GeoDataFrame
    class_names: tuple[str, ...]
    features: int
    repaired: int
    undated: int

    def validity(self, scene_date: dt.date | None, *, max_age_days: int | None, undated: str) -> np.ndarray:
        """Bool per row: is the label valid for a scene acquired on ``scene_date``?"""
        return label_validity(
            self.gdf["date"].to_numpy(),
            self.gdf["valid_from"].to_numpy(),
            self.gdf["valid_to"].to_numpy(),
            scene_date,
            max_age_days=max_age_days,
            undated=undated,
        )

    @property
    def has_dates(self) -> bool:
        return self.undated < len(self.gdf)


def class_table(class_names: Sequence[str], boundary: bool) -> list[dict[str, Any]]:
    """``classes`` list for dataset.json: id 0 background, 1..K the names, then the boundary."""
    names = ["background", *class_names] + ([BOUNDARY_NAME] if boundary else [])
    return ClassTable.of(names, len(class_names) + 1 if boundary else None).to_json()


def read_labels(
    path: str | Path,
    *,
    class_field: str | None = None,
    classes: Sequence[str] | None = None,
    date_field: str = "date",
    valid_from_field: str = "valid_from",
    valid_to_field: str = "valid_to",
    layer: str | None = None,
) -> Labels:
    """Read, repair, explode and classify a label layer (any OGR format or GeoParquet).

    ``class_field=None`` means ``"class"`` if present, else a single class named after
    ``classes[0]`` or the file stem. An explicitly named field that is missing is an error.
    Date fields that are absent are treated as empty; unparsable values raise
    :class:`~geoseg.errors.DateFormatError` naming the file, field and row.
    """
    gdf = read_vector(path, what="labels", layer=layer)
    features = len(gdf)
    field = class_field or "class"
    if class_field is not None:
        require_field(gdf, class_field, path=path)
    if field in gdf.columns:
        if gdf[field].isna().any():
            n = int(gdf[field].isna().sum())
            raise LabelsError(f"{path}: {n} labels have an empty {field!r}; fill or remove them")
        names = gdf[field].map(_class_name)
    else:
        single = classes[0] if classes else Path(path).stem
        names = gpd.pd.Series([single] * len(gdf), index=gdf.index)
    gdf = gpd.GeoDataFrame({"class_name": names.to_numpy()}, geometry=gdf.geometry.values, crs=gdf.crs).join(
        _dates(gdf, path, date_field, valid_from_field, valid_to_field)
    )
    gdf, repaired = clean_polygons(gdf, source=str(path))
    if len(gdf) == 0:
        only = f" (only {gdf.attrs['dropped']}); labels must be polygons" if gdf.attrs.get("dropped") else ""
        raise LabelsError(f"{path}: labels have no polygon features{only}")
    present = sorted(set(gdf["class_name"]))
    if classes:
        order = [str(c) for c in classes]
        unknown = sorted(set(present) - set(order))
        if unknown:
            raise LabelsError(
                f"{path}: classes {', '.join(unknown)} are not in --classes ({', '.join(order)}); add them"
            )
    else:
        order = present
    if len(order) + 1 >= IGNORE:
        raise LabelsError(f"{path}: {len(order)} classes; at most 253 fit a uint8 mask")
    ids = {n: i for i, n in enumerate(order, start=1)}
    gdf["class_id"] = gdf["class_name"].map(ids).astype("uint8")
    undated = int((gdf["date"].isna() & gdf["valid_from"].isna() & gdf["valid_to"].isna()).sum())
    return Labels(
        gdf=gdf[["class_id", "date", "valid_from", "valid_to", "geometry"]],
        class_names=tuple(order),
        features=features,
        repaired=repaired,
        undated=undated,
    )


class LabelOptions(Protocol):
    """The label-reading options a stage config carries (``geoseg tile``, ``geoseg mine``)."""

    @property
    def labels(self) -> str: ...
    @property
    def class_field(self) -> str | None: ...
    @property
    def date_field(self) -> str: ...
    @property
    def valid_from_field(self) -> str: ...
    @property
    def valid_to_field(self) -> str: ...
    @property
    def labels_layer(self) -> str | None: ...


def read_scene_labels(
    options: LabelOptions, scenes: Sequence[SceneInfo], *, classes: Sequence[str] | None = None
) -> Labels:
    """:func:`read_labels` with a stage's options, then check that every scene has an acquisition date
    when the labels are dated (raises :class:`InputError` naming the first undated scene)."""
    labels = read_labels(
        options.labels,
        class_field=options.class_field,
        classes=classes,
        date_field=options.date_field,
        valid_from_field=options.valid_from_field,
        valid_to_field=options.valid_to_field,
        layer=options.labels_layer,
    )
    if labels.has_dates:
        for s in scenes:
            if s.date is None:
                raise InputError(
                    f"{s.path}: no acquisition date (no ACQUISITIONDATETIME/TIFFTAG_DATETIME tag, no YYYYMMDD in "
                    "the file name) but the labels are dated; give --scene-date YYYY-MM-DD"
                )
    return labels


def read_polygons(path: str | Path, *, what: str) -> gpd.GeoDataFrame:
    """A cleaned polygon layer (coverage, look-alikes): geometry only."""
    gdf = read_vector(path, what=what)
    gdf, _ = clean_polygons(gpd.GeoDataFrame(geometry=gdf.geometry.values, crs=gdf.crs), source=str(path))
    if len(gdf) == 0:
        raise LabelsError(f"{path}: {what} has no polygon features")
    return gdf


def _class_name(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _dates(gdf: gpd.GeoDataFrame, path: str | Path, *fields: str) -> gpd.pd.DataFrame:
    out = {}
    for key, field in zip(("date", "valid_from", "valid_to"), fields, strict=False):
        if field in gdf.columns:
            parsed = _parse_dates(gdf[field].tolist(), f"{path}: field {field!r}")
        else:
            parsed = [None] * len(gdf)
        out[key] = gpd.pd.Series(parsed, index=gdf.index, dtype=object)
    return gpd.pd.DataFrame(out)


def _parse_dates(vals: list[Any], source: str) -> list[Any]:
    """:func:`parse_date` of each value, once per distinct value (label dates repeat a lot); an
    unparsable value raises naming its first row."""
    seen: dict[Any, Any] = {}
    out = []
    for i, v in enumerate(vals):
        try:
            d = seen[v]
        except KeyError:
            d = seen[v] = parse_date(v, source=f"{source} row {i}")
        except TypeError:  # unhashable
            d = parse_date(v, source=f"{source} row {i}")
        out.append(d)
    return out


def label_validity(
    date: np.ndarray,
    valid_from: np.ndarray,
    valid_to: np.ndarray,
    scene_date: dt.date | None,
    *,
    max_age_days: int | None,
    undated: str = "keep",
) -> np.ndarray:
    """Vectorised validity rule (see module docstring). Arrays hold ``date`` or None."""
    n = len(date)
    has_d = np.array([d is not None and d == d for d in date], bool)
    has_f = np.array([d is not None and d == d for d in valid_from], bool)
    has_t = np.array([d is not None and d == d for d in valid_to], bool)
    dated = has_d | has_f | has_t
    if scene_date is None:
        ok = np.ones(n, bool)  # run.py refuses dated labels on undated scenes
    else:
        ok = np.ones(n, bool)
        for i in np.flatnonzero(has_d):
            ok[i] &= date[i] <= scene_date
            if max_age_days is not None:
                ok[i] &= (scene_date - date[i]).days <= max_age_days
        for i in np.flatnonzero(has_f):
            ok[i] &= valid_from[i] <= scene_date
        for i in np.flatnonzero(has_t):
            ok[i] &= scene_date <= valid_to[i]
    if undated == "drop":
        ok &= dated
    return ok


# --------------------------------------------------------------------------------------------
# per-scene, per-window label sets (what tasks receive)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneLabels:
    """Label polygons of one scene in the scene CRS: geometry, class id, valid flag, instance id.

    Instances are numbered by file order (1-based) so the same polygon has the same id in every
    window; ``coverage`` is None (whole scene annotated) or the coverage polygons in the scene CRS.
    ``pixels``: the scene grid's transform. The polygons are rasterized in that grid's pixel coordinates
    (converted once) with integer-offset window transforms, so a pixel centre exactly on an edge is
    decided the same way in every window (GDAL's inverse of each window's own transform rounds
    differently from window to window).
    """

    geoms: np.ndarray
    class_ids: np.ndarray
    valid: np.ndarray
    instance: np.ndarray
    coverage: np.ndarray | None
    pixels: Affine

    @classmethod
    def build(
        cls, labels: Labels, grid: Grid, valid: np.ndarray, coverage: gpd.GeoDataFrame | None, bounds: Any
    ) -> SceneLabels:
        """Reproject to the scene ``grid``'s CRS and keep what intersects ``bounds`` (in that CRS)."""
        crs = grid.crs
        g = to_crs(labels.gdf, crs)
        geoms = _finite(g.geometry.values)
        keep = shapely.intersects(geoms, shapely.box(*bounds))
        cov = None
        if coverage is not None:
            c = _finite(to_crs(coverage, crs).geometry.values)
            c = shapely.intersection(c, shapely.box(*bounds))
            cov = c[~shapely.is_empty(c)]
        return cls(
            geoms=np.asarray(geoms[keep]),
            class_ids=labels.gdf["class_id"].to_numpy()[keep].astype(np.uint8),
            valid=np.asarray(valid)[keep],
            instance=np.flatnonzero(keep).astype(np.int32) + 1,
            coverage=cov,
            pixels=grid.transform,
        )

    def subset(self, bounds: tuple[float, float, float, float], tree: shapely.STRtree | None = None) -> SceneLabels:
        """The labels (and coverage clipped) intersecting ``bounds``; small payload for a task.

        ``tree`` (``shapely.STRtree(self.geoms)``) makes this O(log n); file order is kept.
        """
        b = shapely.box(*bounds)
        if tree is not None:
            sel = np.sort(tree.query(b, predicate="intersects"))
        else:
            sel = np.flatnonzero(shapely.intersects(self.geoms, b)) if len(self.geoms) else np.zeros(0, np.intp)
        cov = None
        if self.coverage is not None:
            c = shapely.intersection(self.coverage, b) if len(self.coverage) else self.coverage
            cov = c[~shapely.is_empty(c)] if len(c) else c
        out = SceneLabels(self.geoms[sel], self.class_ids[sel], self.valid[sel], self.instance[sel], cov, self.pixels)
        prep = self.__dict__.get("_prep")
        if prep is not None:  # hand the prepared shapes down (built once per scene, not once per task)
            shapes = prep.shapes
            object.__setattr__(out, "_prep", _Prepared(prep.bounds[sel], [shapes[i] for i in sel.tolist()]))
        return out

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle geometries as flat coordinate arrays (tasks sent to dask workers).

        Shapely pickles each geometry separately (~10 us each, ~30x slower than this); the
        rasterization inputs are rebuilt from the same arrays on the other side.
        """
        cov = None if self.coverage is None else _pack(self.coverage)
        args = (_pack(self.geoms), self.class_ids, self.valid, self.instance, cov, self.pixels)
        return _unpack_scene_labels, args

    def prepare(self) -> SceneLabels:
        """Build the rasterization inputs once (``subset`` hands them to its results); returns self."""
        _prepared(self)
        return self

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())


def _finite(geoms: np.ndarray) -> np.ndarray:
    """Replace geometries that reprojected to non-finite coordinates with empty polygons."""
    geoms = np.asarray(geoms)
    if len(geoms) == 0:
        return geoms
    b = shapely.bounds(geoms)
    bad = ~np.isfinite(b).all(axis=1)
    if bad.any():
        geoms = geoms.copy()
        geoms[bad] = shapely.Polygon()
    return geoms


def burn_mask(
    grid: Grid, labels: SceneLabels, *, boundary_class: int | None = None, boundary_width: int = 0
) -> np.ndarray:
    """The uint8 mask of ``grid`` (any window of a scene): 0 background, class ids, boundary, 255.

    Pure and window-local: equals the same rasterization done on the whole scene and cropped, also at a
    pixel centre exactly on an edge (labels are burnt in scene pixel coordinates: any two windows agree).
    Memory: O(H * W) bytes (plus uint16/int32 polygon ids on a ``boundary_width``-padded window when
    the boundary class is on). Scene nodata is *not* applied here (the caller sets those pixels to 255).
    Only polygons whose bounding box reaches the window are rasterized.
    """
    return burn_masks(grid, labels, boundary_class=boundary_class, boundary_width=boundary_width)[1]


def burn_masks(
    grid: Grid, labels: SceneLabels, *, boundary_class: int | None = None, boundary_width: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(plain, mask)``: :func:`burn_mask` of ``grid`` and the same mask before the boundary class is
    added (class ids where the boundary pixels are, 0 in the contact gaps), from one rasterization.
    ``plain`` is ``mask`` itself (the same array) when there is no boundary class or no boundary pixel.
    """
    h, w = grid.height, grid.width
    out = np.zeros((h, w), np.uint8)
    if h == 0 or w == 0:
        return out, out
    pad = boundary_width if boundary_class is not None and boundary_width > 0 else 0
    prep = _prepared(labels)
    plain = out
    if pad and boundary_class is not None:  # pad > 0 implies a boundary class
        out, inst = _burn_padded(grid, labels, prep, pad)
        plain = out
        if inst is not None:
            rim, gap = rim_and_gap(inst, pad)
            edge = rim | (gap & (out == 0))
            if edge.any():
                plain = out.copy()
                out[edge] = boundary_class
    else:
        inside = _near(prep.bounds, grid.bounds)
        inv = np.flatnonzero(inside & ~labels.valid)
        tr = _shape_transform(grid, labels)
        if len(inv):
            _burn([(prep.shapes[i], IGNORE) for i in inv], out, tr)
        val = np.flatnonzero(inside & labels.valid)
        if len(val):
            ids = labels.class_ids.tolist()
            _burn([(prep.shapes[i], ids[i]) for i in val], out, tr)
    if labels.coverage is not None:
        cov = np.zeros((h, w), np.uint8)
        if len(labels.coverage):
            # (a chunk's clipped coverage: a few polygons, converted per call)
            c = shapely.transform(labels.coverage, functools.partial(_to_pixels, pixels=labels.pixels))
            rasterize(((g, 1) for g in c), out=cov, transform=_shape_transform(grid, labels))
        outside = cov == 0
        out[outside] = IGNORE
        if plain is not out:
            plain[outside] = IGNORE
    return plain, out


def _burn(pairs: list[tuple[dict[str, Any], int]], out: np.ndarray, transform: Any) -> None:
    """``rasterize(pairs, out=out, transform=transform)`` (pixel centres, later pairs win) for the GeoJSON
    ``Polygon`` mappings of :func:`polygon_mappings`, without rasterio's per-shape ``is_valid_geom`` (a
    third of the call, all of it holding the GIL): empty polygons are dropped here, as rasterize would
    (with a warning); other shapes and any other rasterio go through ``rasterize`` itself."""
    ok = [(g, v) for g, v in pairs if g["type"] == "Polygon" and g["coordinates"] and len(g["coordinates"][0]) >= 4]
    if not ok:
        return
    if _RASTERIZE is not None and out.dtype.name in ("uint8", "uint16", "int32"):
        try:
            _RASTERIZE(ok, out, transform, False, MergeAlg.replace)
            return
        except TypeError:  # (another rasterio's private signature): the public call below
            pass
    rasterize(ok, out=out, transform=transform)


try:  # the C call behind rasterio.features.rasterize (rasterio 1.3-1.4: shapes, out, transform, all_touched, merge)
    from rasterio._features import _rasterize as _RASTERIZE
except ImportError:  # pragma: no cover - other rasterio versions: the public function
    _RASTERIZE = None

# rasterio's in-memory dataset behind rasterize sometimes reports "no geotransform" when other threads run GDAL
# at the same time (also seen by odc-geo, opendatacube/odc-geo#131); the transform *is* set (the masks of
# --workers 1 and 2 are byte-identical), so the warning is noise here. Only warnings raised from this module.
warnings.filterwarnings(
    "ignore", message="Dataset has no geotransform", category=NotGeoreferencedWarning, module=r"geoseg\.tile\.labels"
)


def _burn_padded(grid: Grid, labels: SceneLabels, prep: _Prepared, pad: int) -> tuple[np.ndarray, np.ndarray | None]:
    """One rasterization of the polygons near the ``pad``-padded window in burn order (invalid labels
    first, then valid ones, file order: later wins): the class mask of ``grid`` and the padded raster
    of *valid* instance numbers (0 elsewhere; None when no valid polygon is near).

    Burnt value = ``k << bits | code``: ``k`` = 1.. for the valid polygons (0 for invalid ones), ``code``
    = 1..K for the K classes present, K+1 for ignore; so the class is a mask + 256-entry lookup and
    the instance a shift, both a few cheap passes (no per-pixel gather over a large table).
    """
    h, w = grid.height, grid.width
    padded = grid[Window(-pad, -pad, w + 2 * pad, h + 2 * pad)]
    near = _near(prep.bounds, padded.bounds)
    inv = np.flatnonzero(near & ~labels.valid).tolist()
    val = np.flatnonzero(near & labels.valid)
    n_val = len(val)
    if n_val + len(inv) == 0:
        return np.zeros((h, w), np.uint8), None
    cls_val = labels.class_ids[val]
    present = np.unique(cls_val)
    ignore_code = len(present) + 1
    bits = ignore_code.bit_length()
    codes = (np.searchsorted(present, cls_val) + 1).tolist()
    dtype = np.uint16 if (n_val + 1) << bits <= np.iinfo(np.uint16).max else np.int32
    shapes = prep.shapes
    numbered = [(shapes[i], ignore_code) for i in inv]
    pairs = zip(val.tolist(), codes, strict=True)
    numbered += [(shapes[i], k << bits | code) for k, (i, code) in enumerate(pairs, start=1)]
    burnt = np.zeros(padded.shape, dtype)
    _burn(numbered, burnt, _shape_transform(grid, labels, pad))
    code = (burnt[pad : pad + h, pad : pad + w] & dtype((1 << bits) - 1)).astype(np.uint8)
    lut = np.zeros(256, np.uint8)
    lut[1 : len(present) + 1] = present
    lut[ignore_code] = IGNORE
    cv2 = _cv2()
    out = cv2.LUT(code, lut) if cv2 is not None else lut[code]
    if n_val == 0:
        return out, None
    inst = burnt >> dtype(bits)
    ids = labels.instance[val]
    if len(np.unique(ids)) < n_val:  # several polygons of one instance: one number per instance id
        _, rank = np.unique(ids, return_inverse=True)
        remap = np.zeros(n_val + 1, dtype)
        remap[1:] = rank.astype(dtype) + 1
        inst = remap[inst]
    return out, inst


def boundary_pixels(grid: Grid, shapes: list[tuple[Any, int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rim, gap)`` bool (H, W): label pixels within ``width`` px of another instance or of unlabelled
    space; unlabelled pixels within ``width`` px of two different instances (close contact).

    ``shapes``: ``(geometry, instance id > 0)`` pairs, later pairs win where they overlap.
    """
    pad = int(width)
    padded = grid[Window(-pad, -pad, grid.width + 2 * pad, grid.height + 2 * pad)]
    inst = rasterize(shapes, out_shape=padded.shape, transform=padded.transform, dtype="int32")
    return rim_and_gap(inst, pad)


def rim_and_gap(inst: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`boundary_pixels` from a ``r``-padded raster of instance ids (0 = none), shape ``(H + 2r, W + 2r)``.

    rim: ``inst > 0`` and the ``(2r+1)^2`` square around it is not constant (min < max); gap:
    ``inst == 0`` and the square holds two different ids (min of the ids > 0 < max). The square
    filters run in strips of :data:`_STRIP_ROWS` rows, skipping rows and column blocks no label reaches: OpenCV
    dilate/erode for uint16 ids, shifted-slice numpy maxima/minima otherwise (identical results;
    every output window lies inside the padded raster, so no border rule enters). Both release
    the GIL, so thread workers run them in parallel. Memory: O(strip x W) temporaries.
    """
    h, w = inst.shape[0] - 2 * r, inst.shape[1] - 2 * r
    rim = np.zeros((h, w), bool)
    gap = np.zeros((h, w), bool)
    labelled_rows = np.flatnonzero(inst.any(axis=1))
    if len(labelled_rows) == 0:
        return rim, gap
    y_lo = max(0, int(labelled_rows[0]) - 2 * r)  # output rows whose square reaches a labelled row
    y_hi = min(h, int(labelled_rows[-1]) + 1)
    fast = _cv2() is not None and inst.dtype == np.uint16
    for y0 in range(y_lo, y_hi, _STRIP_ROWS):
        y1 = min(y_hi, y0 + _STRIP_ROWS)
        rows = inst[y0 : y1 + 2 * r]  # the padded rows of output rows y0..y1
        for x0, x1 in _labelled_runs(np.asarray(rows.any(axis=0)), w, r, _STRIP_ROWS):
            a = rows[:, x0 : x1 + 2 * r]  # padded columns of output columns x0..x1
            centre = a[r : r + y1 - y0, r : r + x1 - x0]
            if fast:
                hi, lo, lo_nz1 = _cv2_filters(a, r)
                rim[y0:y1, x0:x1] = (centre > 0) & (lo < hi)
                hi -= np.uint16(1)  # ids - 1 (0 wraps to 65535, as in lo_nz1): two ids <=> lo_nz1 < hi - 1
                gap[y0:y1, x0:x1] = (centre == 0) & (lo_nz1 < hi)
            else:
                big = np.iinfo(a.dtype).max
                hi = _square_filter(a, r, np.maximum)
                lo = _square_filter(a, r, np.minimum)
                lo_nz = _square_filter(np.where(a > 0, a, big), r, np.minimum)
                rim[y0:y1, x0:x1] = (centre > 0) & (lo < hi)
                gap[y0:y1, x0:x1] = (centre == 0) & (lo_nz < hi)  # hi == 0: lo_nz is the maximum value, never below
    return rim, gap


def _labelled_runs(labelled: np.ndarray, w: int, r: int, block: int) -> list[tuple[int, int]]:
    """Output column ranges ``[x0, x1)`` (of ``w``; merged blocks of ``block`` columns) whose padded input
    columns ``[x0, x1 + 2r)`` hold a label (``labelled``: bool per padded column); elsewhere no square
    holds an id, so rim and gap are False there."""
    starts = np.arange(0, w, block)
    stops = np.minimum(starts + block, w)
    seen = np.concatenate([[0], np.cumsum(labelled, dtype=np.int64)])
    on = (seen[stops + 2 * r] - seen[starts]) > 0
    runs: list[tuple[int, int]] = []
    for a, b, k in zip(starts.tolist(), stops.tolist(), on.tolist(), strict=True):
        if not k:
            continue
        if runs and runs[-1][1] == a:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((a, b))
    return runs


_STRIP_ROWS = 512  # output rows per boundary filter strip


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv comes with albumentations
        return None
    return cv2


def _cv2_filters(a: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Square max, min, and min of ``ids - 1`` (0 wraps to 65535, so it never wins unless the square has
    no id) of uint16 ``a``, cropped by ``r`` on each side (OpenCV dilate / erode)."""
    cv2 = _cv2()
    k = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    crop = (slice(r, a.shape[0] - r), slice(r, a.shape[1] - r))
    hi = cv2.dilate(a, k, borderType=cv2.BORDER_REPLICATE)[crop]
    lo = cv2.erode(a, k, borderType=cv2.BORDER_REPLICATE)[crop]
    lo_nz1 = cv2.erode(a - np.uint16(1), k, borderType=cv2.BORDER_REPLICATE)[crop]
    return hi, lo, lo_nz1


def _square_filter(a: np.ndarray, r: int, op: Any) -> np.ndarray:
    """``op`` (np.maximum / np.minimum) over ``(2r+1)^2`` squares of ``a``: shape ``(H - 2r, W - 2r)``,
    output ``[i, j]`` = the square centred at ``a[i + r, j + r]`` (equals scipy.ndimage's filter, cropped)."""
    return _line_filter(_line_filter(a, r, op, 0), r, op, 1)


def _line_filter(a: np.ndarray, r: int, op: Any, axis: int) -> np.ndarray:
    """``op`` over windows of ``2r+1`` along ``axis`` (valid part only) by doubling: O(log r) passes."""
    length = 2 * r + 1
    if length == 1:
        return a

    def cut(x: np.ndarray, start: int, stop: int) -> np.ndarray:
        return x[start:stop] if axis == 0 else x[:, start:stop]

    cur, span = a, 1  # cur[i] = op over a[i : i + span]
    while span * 2 <= length:
        n = cur.shape[axis]
        cur = op(cut(cur, 0, n - span), cut(cur, span, n))
        span *= 2
    if span < length:
        n, k = cur.shape[axis], length - span
        cur = op(cut(cur, 0, n - k), cut(cur, k, n))
    return cur


@dataclass(frozen=True)
class _Prepared:
    bounds: np.ndarray  # (n, 4)
    shapes: list[dict[str, Any]]  # GeoJSON-like polygons, built once per task


def _prepared(labels: SceneLabels) -> _Prepared:
    """Bounds and GeoJSON mappings of ``labels.geoms``, cached on the (task-local) object.

    Building the mappings from coordinate arrays in bulk is ~3x faster than shapely's per-object
    ``__geo_interface__`` that rasterio would call for every polygon in every window.
    """
    cached = labels.__dict__.get("_prep")
    if cached is None:
        g = shapely.transform(labels.geoms, functools.partial(_to_pixels, pixels=labels.pixels))
        cached = _Prepared(shapely.bounds(labels.geoms).reshape(-1, 4), polygon_mappings(g))
        object.__setattr__(labels, "_prep", cached)
    return cached


def _to_pixels(xy: np.ndarray, pixels: Affine) -> np.ndarray:
    """``(n, 2)`` CRS coordinates in the pixel coordinates of the grid with transform ``pixels``."""
    return pixel_to_crs(xy, ~pixels)  # (the inverse affine maps CRS -> pixels)


def _shape_transform(grid: Grid, labels: SceneLabels, pad: int = 0) -> Affine:
    """The transform that rasterizes ``labels``' prepared (scene pixel space) shapes into ``grid``, a window of the
    scene, grown by ``pad`` pixels: the translation by its pixel offset, an integer for every window (exact)."""
    c, r = ~labels.pixels * (grid.transform.c, grid.transform.f)
    c, r = (round(c), round(r)) if abs(c - round(c)) < 1e-6 and abs(r - round(r)) < 1e-6 else (c, r)
    return Affine.translation(c - pad, r - pad)


def _pack(geoms: np.ndarray) -> tuple[Any, ...]:
    """Geometries as ``("ragged", coords, offsets)`` when all are Polygons, else ``("wkb", blobs)``."""
    geoms = np.asarray(geoms, dtype=object)
    if len(geoms) and bool((shapely.get_type_id(geoms) == shapely.GeometryType.POLYGON).all()):
        _, coords, offsets = shapely.to_ragged_array(geoms)
        return ("ragged", coords, offsets)
    return ("wkb", shapely.to_wkb(geoms) if len(geoms) else np.zeros(0, dtype=object))


def _unpack(packed: tuple[Any, ...]) -> np.ndarray:
    if packed[0] == "ragged":
        return np.asarray(shapely.from_ragged_array(shapely.GeometryType.POLYGON, packed[1], packed[2]), dtype=object)
    return np.asarray(shapely.from_wkb(packed[1]), dtype=object) if len(packed[1]) else np.zeros(0, dtype=object)


def _unpack_scene_labels(
    geoms: tuple[Any, ...],
    class_ids: np.ndarray,
    valid: np.ndarray,
    instance: np.ndarray,
    cov: Any,
    pixels: Affine,
) -> SceneLabels:
    out = SceneLabels(_unpack(geoms), class_ids, valid, instance, None if cov is None else _unpack(cov), pixels)
    if geoms[0] == "ragged":  # rasterization inputs straight from the arrays
        _, coords, (ring_off, poly_off) = geoms
        shapes = _ragged_mappings(_to_pixels(coords[:, :2], pixels), ring_off, poly_off)
        object.__setattr__(out, "_prep", _Prepared(shapely.bounds(out.geoms).reshape(-1, 4), shapes))
    return out


def _ragged_mappings(coords: np.ndarray, ring_off: np.ndarray, poly_off: np.ndarray) -> list[dict[str, Any]]:
    """GeoJSON ``Polygon`` mappings from ``shapely.to_ragged_array`` arrays (2-D coordinates)."""
    xy = coords[:, :2].tolist()
    ro = ring_off.tolist()
    rings = [xy[a:b] for a, b in itertools.pairwise(ro)]
    po = poly_off.tolist()
    if po == list(range(len(po))):  # one ring (no holes) per polygon
        return [{"type": "Polygon", "coordinates": [r]} for r in rings]
    return [{"type": "Polygon", "coordinates": rings[a:b]} for a, b in itertools.pairwise(po)]


def polygon_mappings(geoms: np.ndarray) -> list[dict[str, Any]]:
    """GeoJSON ``Polygon`` mappings (exterior + holes) of an array of shapely Polygons, in bulk.

    One ``tolist`` of all coordinates, then list slices per ring (~2x faster than one ``tolist``
    per ring, ~6x faster than shapely's per-object ``__geo_interface__``).
    """
    n = len(geoms)
    if n == 0:
        return []
    rings, pidx = shapely.get_rings(geoms, return_index=True)
    coords = shapely.get_coordinates(rings).tolist()
    stops = np.cumsum(shapely.get_num_coordinates(rings)).tolist()
    starts = [0, *stops[:-1]]
    owner = pidx.tolist()
    if owner == list(range(n)):  # one ring (no holes) per polygon
        return [{"type": "Polygon", "coordinates": [coords[a:b]]} for a, b in zip(starts, stops, strict=True)]
    out: list[list[Any]] = [[] for _ in range(n)]
    for p, a, b in zip(owner, starts, stops, strict=True):
        out[p].append(coords[a:b])
    return [{"type": "Polygon", "coordinates": c} for c in out]


def _near(b: np.ndarray, window_bounds: tuple[float, float, float, float]) -> np.ndarray:
    minx, miny, maxx, maxy = window_bounds
    return (b[:, 0] <= maxx) & (b[:, 2] >= minx) & (b[:, 1] <= maxy) & (b[:, 3] >= miny)
