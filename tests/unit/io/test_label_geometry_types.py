"""Labels holding points, lines or GeometryCollections: counted in one warning, no GeoPandas warnings."""

from __future__ import annotations

import warnings

import geopandas as gpd
import pytest
import shapely

from geoseg.io.vectors import clean_polygons


def test_points_lines_and_collections_counted_in_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    geoms = [
        shapely.box(0, 0, 1, 1),
        shapely.Point(0, 0),
        shapely.Point(3, 3),
        shapely.LineString([(0, 0), (1, 1)]),
        shapely.GeometryCollection([shapely.Point(5, 5), shapely.box(4, 4, 6, 6)]),
        None,
    ]
    gdf = gpd.GeoDataFrame({"c": range(len(geoms))}, geometry=geoms, crs="EPSG:32636")
    with warnings.catch_warnings(), caplog.at_level("WARNING", logger="geoseg"):
        warnings.simplefilter("error")  # no library warnings (GeoSeries.notna printed 5 lines)
        out, _ = clean_polygons(gdf, source="l.gpkg")
    assert sorted(out["c"]) == [0, 4]
    (msg,) = [r.getMessage() for r in caplog.records]
    assert msg == (
        "l.gpkg: dropped 1 LineString, 2 Point feature(s) (labels must be polygons); "
        "kept only the polygons of 1 GeometryCollection(s)"
    )


def test_polygons_only_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    gdf = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)], crs="EPSG:32636")
    with caplog.at_level("WARNING", logger="geoseg"):
        out, _ = clean_polygons(gdf, source="l.gpkg")
    assert len(out) == 1 and not caplog.records and out.attrs["dropped"] == ""
