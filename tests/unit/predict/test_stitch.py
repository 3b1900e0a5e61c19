"""The streaming stitcher with the identity model: exact reproduction, bounded reads, band splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import torch
from rasterio.features import geometry_mask

from geoseg.grid import Grid
from geoseg.predict.blend import weight_2d
from geoseg.predict.plan import plan_scene
from geoseg.predict.run import make_reader
from geoseg.predict.stitch import RowsOut, predict_row_range, split_batches
from geoseg.testing import pixel_box, write_scene, xy_image

H, W = 203, 157  # odd sizes, not multiples of the tile


@pytest.fixture(scope="module")
def xy_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    data = xy_image(H, W, 3, "uint16")
    valid = np.ones((H, W), bool)
    valid[150:170, 5:40] = False  # a no-data hole
    path = tmp_path_factory.mktemp("stitch") / "xy.tif"
    write_scene(path, data, mask=valid, blocksize=64)
    return path, data, valid


def _stitch(
    path: Path,
    aoi,
    tile: int,
    overlap: int,
    *,
    n_bands: int = 1,
    float_output: bool = True,
    blend: str = "hann",
    predict_fn=None,
    reads: list | None = None,
    chunks: list | None = None,
):
    with rasterio.open(path) as ds:
        grid = Grid.from_dataset(ds)
        plan = plan_scene(grid, aoi, tile, overlap)
        assert plan is not None
        k = ds.count
        out = np.full(
            (k, grid.height, grid.width), np.nan if float_output else 255, np.float32 if float_output else np.uint8
        )
        cls = np.full((grid.height, grid.width), 255, np.uint8)
        base = make_reader(ds, plan, tuple(range(1, k + 1)), np.zeros(k), np.ones(k))

        def reader(r0: int, r1: int):
            if reads is not None:
                reads.append((r0, r1))
            return base(r0, r1)

        def on_rows(rows: RowsOut) -> None:
            h, w = rows.classes.shape
            if chunks is not None:
                chunks.append(rows)
            out[:, rows.row0 : rows.row0 + h, rows.col0 : rows.col0 + w] = rows.probs
            cls[rows.row0 : rows.row0 + h, rows.col0 : rows.col0 + w] = rows.classes

        for band in plan.row_ranges(n_bands):
            predict_row_range(
                plan,
                band,
                reader,
                predict_fn or (lambda x: x),
                on_rows,
                num_classes=k,
                weight=weight_2d(blend, tile),
                batch_size=4,
                float_output=float_output,
            )
    return plan, out, cls


def _aoi_keep(grid: Grid, aoi) -> np.ndarray:
    return ~geometry_mask([aoi], out_shape=grid.shape, transform=grid.transform, all_touched=False)


def _l_aoi(grid: Grid):
    """An AOI that cuts through windows at fractional pixel positions and has a notch."""
    return shapely.union_all([pixel_box(grid, 3.3, 7.6, 60.2, 141.1), pixel_box(grid, 3.3, 7.6, 190.4, 40.7)])


@pytest.mark.parametrize("overlap", range(0, 17))
def test_identity_reproduces_input_exactly_every_overlap(xy_scene, overlap: int) -> None:
    path, data, valid = xy_scene
    with rasterio.open(path) as ds:
        grid = Grid.from_dataset(ds)
    aoi = _l_aoi(grid)
    _plan, out, _ = _stitch(path, aoi, 32, overlap)
    keep = _aoi_keep(grid, aoi) & valid
    assert keep.sum() > 5000
    np.testing.assert_array_equal(out[:, keep], data[:, keep].astype(np.float32))
    assert np.isnan(out[:, ~keep]).all()


@pytest.mark.parametrize("blend", ["cosine", "triangular", "uniform"])
@pytest.mark.parametrize("tile,overlap", [(32, 13), (64, 31), (256, 100)])
def test_identity_exact_other_windows_and_tile_larger_than_scene(xy_scene, blend: str, tile: int, overlap: int) -> None:
    path, data, valid = xy_scene
    with rasterio.open(path) as ds:
        grid = Grid.from_dataset(ds)
    _plan, out, _ = _stitch(path, grid.footprint, tile, overlap, blend=blend)
    np.testing.assert_array_equal(out[:, valid], data[:, valid].astype(np.float32))
    assert np.isnan(out[:, ~valid]).all()


def test_each_input_row_read_once_and_chunks_bounded(xy_scene) -> None:
    path, _, _ = xy_scene
    with rasterio.open(path) as ds:
        grid = Grid.from_dataset(ds)
    reads: list[tuple[int, int]] = []
    chunks: list[RowsOut] = []
    plan, _, _ = _stitch(path, grid.footprint, 32, 8, reads=reads, chunks=chunks)
    rows = [r for r0, r1 in reads for r in range(r0, r1)]
    assert len(rows) == len(set(rows))  # no input row is read twice
    assert set(range(H)) <= set(rows)
    # finished rows leave in strips of at most one tile (never a full-scene array)
    assert all(c.probs.shape[1] <= plan.tile for c in chunks) and len(chunks) >= H // plan.stride
    assert [c.row0 for c in chunks] == sorted(c.row0 for c in chunks)


def test_bands_give_bit_identical_results(xy_scene) -> None:
    """Splitting a scene into bands (dask, resume) sums each pixel in the same order: identical bits."""
    path, _, _ = xy_scene
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 5, padding=2)

    def model(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(conv(x / 100.0), 1)

    with rasterio.open(path) as ds:
        grid = Grid.from_dataset(ds)
    _, one, c1 = _stitch(path, grid.footprint, 32, 12, predict_fn=model)
    _, three, c3 = _stitch(path, grid.footprint, 32, 12, n_bands=3, predict_fn=model)
    assert np.isfinite(one).sum() > 10000
    np.testing.assert_array_equal(one, three)
    np.testing.assert_array_equal(c1, c3)
    # ... and the blend really mixes neighbouring windows (a non-local model is not the identity)
    _, noblend, _ = _stitch(path, grid.footprint, 32, 0, predict_fn=model)
    assert not np.array_equal(np.nan_to_num(one), np.nan_to_num(noblend))


def test_uint8_output_is_round_p_254_and_classes_argmax(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.random((3, 101, 77), dtype=np.float32)
    path = tmp_path / "p.tif"
    write_scene(path, data, crs="EPSG:3857", origin=(1_000_000.0, 6_000_000.0), res=10.0)
    with rasterio.open(path) as ds:
        grid = Grid.from_dataset(ds)
    aoi = pixel_box(grid, 10.5, 3.2, 80, 60)
    _, out, cls = _stitch(path, aoi, 32, 10, float_output=False)
    keep = _aoi_keep(grid, aoi)
    expect = np.round(np.clip(data, 0, 1) * np.float32(254)).astype(np.uint8)
    np.testing.assert_array_equal(out[:, keep], expect[:, keep])
    assert (out[:, ~keep] == 255).all()
    np.testing.assert_array_equal(cls[keep], np.argmax(data, 0)[keep].astype(np.uint8))
    assert (cls[~keep] == 255).all()


def test_split_batches_balanced() -> None:
    assert split_batches(19, 16) == [10, 9]
    assert split_batches(8, 8) == [8]
    assert split_batches(3, 8) == [3]
    assert sum(split_batches(101, 7)) == 101 and max(split_batches(101, 7)) <= 7


def test_predict_fn_shape_is_checked(xy_scene) -> None:
    path, _, _ = xy_scene
    with rasterio.open(path) as ds:
        grid = Grid.from_dataset(ds)
    with pytest.raises(RuntimeError, match="expected"):
        _stitch(path, grid.footprint, 32, 8, predict_fn=lambda x: x[:, :2])


def test_scene_nodata_value_becomes_output_nodata(tmp_path: Path) -> None:
    data = xy_image(90, 70, 3, "uint16")
    data[:, 30:40, 10:50] = 0  # nodata value in every band
    path = tmp_path / "nd.tif"
    write_scene(path, data, nodata=0)
    with rasterio.open(path) as ds:
        grid = Grid.from_dataset(ds)
    _, out, cls = _stitch(path, grid.footprint, 32, 8)
    hole = np.zeros((90, 70), bool)
    hole[30:40, 10:50] = True
    assert np.isnan(out[:, hole]).all() and (cls[hole] == 255).all()
    np.testing.assert_array_equal(out[:, ~hole], data[:, ~hole].astype(np.float32))
