"""Regular building footprints: IoU with the truth, right angles, no overlaps, fallback, the vectorize hook."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio.features
import shapely
from affine import Affine
from shapely import affinity
from shapely.geometry import Point, box

from geoseg.cli import main
from geoseg.errors import ConfigError
from geoseg.regularize import regularize_polygons
from geoseg.testing import rasterised_footprints
from geoseg.vectorize import vectorize_prediction


def _trace(geom, size: int = 96):
    """The 4-connected pixel outline of ``geom`` rasterised (pixel centres inside), pixel space."""
    lab = rasterio.features.rasterize([(geom, 1)], out_shape=(size, size), dtype="uint8")
    polys = [shapely.geometry.shape(g) for g, v in rasterio.features.shapes(lab, mask=lab > 0, connectivity=4)]
    return shapely.simplify(shapely.normalize(max(polys, key=lambda p: p.area)), 0.0)


def _iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


def _corner_turns(g) -> np.ndarray:
    """|turn| in degrees at each exterior vertex that turns by 5° or more."""
    c = np.asarray(g.exterior.coords)[:-1]
    d = np.diff(np.vstack([c, c[:1]]), axis=0)
    a = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    t = np.abs((np.diff(np.r_[a, a[:1]]) + 180) % 360 - 180)
    return t[t >= 5]


@pytest.mark.parametrize("angle", [0, 7, 22, 38, 45, 61, 83])
@pytest.mark.parametrize("size", [(8, 12), (16, 40), (40, 25)])
def test_rectangles_become_right_angled_and_keep_iou(angle, size):
    w, h = size
    truth = affinity.translate(affinity.rotate(box(-w / 2, -h / 2, w / 2, h / 2), angle, origin=(0, 0)), 48.3, 47.6)
    traced = _trace(truth)
    (reg,) = regularize_polygons(np.array([traced], dtype=object), pixel_size=1.0)
    assert reg.is_valid and reg is not traced  # regularised, not fallen back
    # >= 0.9, or no worse than the raster where it cannot reach that (8 px sides: half a pixel per side)
    assert _iou(reg, truth) >= min(0.9, _iou(traced, truth) - 0.01)
    turns = _corner_turns(reg)
    assert len(turns) == 4 and np.all(np.abs(turns - 90) <= 10)
    assert len(reg.exterior.coords) - 1 <= 5  # at most one near-straight vertex left


def test_l_shapes_and_pairs_keep_iou_right_angles_and_never_overlap():
    truth, kinds, traced = rasterised_footprints(4, seed=3)
    reg = regularize_polygons(np.array(traced, dtype=object), pixel_size=1.0)
    for t, k, r in zip(truth, kinds, reg, strict=True):
        assert r.is_valid and r.geom_type == "Polygon"
        assert _iou(r, t) >= 0.9, k
        assert np.all(np.abs(_corner_turns(r) - 90) <= 10), k
        if k == "L":
            assert len(_corner_turns(r)) == 6
    tree = shapely.STRtree(reg)
    a, b = tree.query(reg, predicate="intersects")
    sel = a < b
    assert sel.any()  # the touching pairs still touch
    assert shapely.area(shapely.intersection(reg[a[sel]], reg[b[sel]])).max() <= 1e-6
    # every pair still shares its wall: any gap between the two is far below a pixel
    pairs = [i for i, k in enumerate(kinds) if k == "pair"][::2]
    assert max(reg[i].distance(reg[i + 1]) for i in pairs) < 0.05


def test_overlapping_regular_outlines_give_way_to_the_larger():
    # two outlines that both get regularised and would overlap by one pixel column
    big_t = _trace(box(10, 10, 40, 30))
    small_t = shapely.Polygon([(39, 12), (50, 12), (50, 28), (39, 28), (39, 20), (39.5, 19), (39, 18)])
    reg = regularize_polygons(np.array([big_t, small_t], dtype=object), pixel_size=1.0)
    assert reg[0].intersection(reg[1]).area <= 1e-6
    assert reg[0].area == pytest.approx(big_t.area)  # the larger one keeps its outline


def test_irregular_blob_falls_back_unharmed():
    blob = shapely.union_all([Point(40, 40).buffer(18), Point(58, 52).buffer(9), Point(28, 60).buffer(7)])
    traced = _trace(blob)
    disc = affinity.translate(_trace(Point(48, 48).buffer(20)), 100, 0)  # apart from the blob
    reg = regularize_polygons(np.array([traced, disc, shapely.Polygon()], dtype=object), pixel_size=1.0)
    for r, t in zip(reg[:2], (traced, disc), strict=True):
        assert r.is_valid and _iou(r, t) >= 0.95
    assert len(reg[1].exterior.coords) > 10  # a round outline is not squared off
    assert reg[2].is_empty


def _rect_labels(angle: float, size: int = 96) -> np.ndarray:
    rect = affinity.translate(affinity.rotate(box(-14, -9, 14, 9), angle, origin=(0, 0)), 48.2, 47.7)
    return rasterio.features.rasterize([(rect, 1)], out_shape=(size, size), dtype="uint8")


@pytest.mark.parametrize(
    "crs,transform",
    [
        ("EPSG:32636", Affine(0.5, 0, 500_000.0, 0, -0.5, 40_000.0)),
        # 60°N: a degree of longitude is half a degree of latitude on the ground, so these pixels are square
        ("EPSG:4326", Affine(1e-5, 0, 10.0, 0, -0.5e-5, 60.0)),
    ],
)
def test_vectorize_regularize_option(synth, tmp_path, crs, transform):
    lab = _rect_labels(27.0)
    synth.write_probabilities(tmp_path / "p.tif", synth.probs_from_labels(lab), crs=crs, transform=transform)
    kw = dict(classes=synth.CLASSES, boundary_class=2)
    vectorize_prediction(tmp_path / "p.tif", tmp_path / "raw.gpkg", **kw)
    vectorize_prediction(tmp_path / "p.tif", tmp_path / "reg.gpkg", regularize=("building",), **kw)
    raw, reg = (gpd.read_file(tmp_path / f, layer="instances") for f in ("raw.gpkg", "reg.gpkg"))
    assert len(raw) == len(reg) == 1
    lon, lat = reg.to_crs(4326).geometry.iloc[0].centroid.coords[0]
    local = f"+proj=aeqd +lat_0={lat} +lon_0={lon} +units=m"
    g_raw, g_reg = raw.to_crs(local).geometry.iloc[0], reg.to_crs(local).geometry.iloc[0]
    assert len(g_raw.exterior.coords) > 10
    turns = _corner_turns(g_reg)
    assert len(turns) == 4 and np.all(np.abs(turns - 90) <= 3)  # right angles on the ground
    assert _iou(g_reg, g_raw) >= 0.9
    assert reg["area_m2"].iloc[0] == pytest.approx(g_reg.area, rel=1e-3)  # area of the regular outline


def test_regularize_unknown_class_and_cli(synth, tmp_path, capsys):
    synth.write_probabilities(tmp_path / "probabilities.tif", synth.probs_from_labels(_rect_labels(10.0)))
    with pytest.raises(ConfigError, match="'roof' is not an object class; classes: building"):
        vectorize_prediction(tmp_path / "probabilities.tif", tmp_path / "x.gpkg", classes=synth.CLASSES,
                             boundary_class=2, regularize=("roof",))  # fmt: skip
    out = tmp_path / "cli.gpkg"
    assert main(["vectorize", str(tmp_path), "--out", str(out), "--regularize", "building"]) == 0
    g = gpd.read_file(out, layer="instances").geometry.iloc[0]
    assert len(_corner_turns(g)) == 4
    assert "building" in (tmp_path / "cli.json").read_text()


def test_invalid_and_degenerate_inputs_never_raise() -> None:
    """Overlay operations on invalid geometry raise GEOS TopologyExceptions; such inputs come back as they were."""
    from shapely.geometry import Polygon as P

    bowtie = P([(0, 0), (10, 10), (10, 0), (0, 10)])  # self-intersecting: invalid
    square = P([(20, 0), (32, 0), (32, 12), (20, 12)])
    touching = P([(32, 0), (44, 0), (44, 12), (32, 12)])
    out = regularize_polygons(np.array([bowtie, square, touching], dtype=object), pixel_size=1.0)
    assert out[0] is bowtie
    assert out[1].is_valid and out[2].is_valid
    assert out[1].intersection(out[2]).area <= 1e-6
