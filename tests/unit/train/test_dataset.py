"""Tile dataset: contract reading, normalisation from band stats, augmentation alignment, samplers, workers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from geoseg.errors import InputError
from geoseg.train.dataset import TileDataset, TileSampler, kind_weights, read_dataset
from geoseg.train.transforms import NormalisedBrightnessContrast, build_train_transform


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_items_are_normalised_with_band_statistics(make_dataset: Callable[..., Path], dtype: str) -> None:
    ds = read_dataset(make_dataset(dtype=dtype, channels=4, n_train=4, n_val=2))
    assert ds.in_channels == 4 and ds.dtype == dtype and ds.num_classes == 3 and ds.tile_size == 64
    assert ds.band_names == ["red", "green", "blue", "nir"]
    assert len(ds.train_rows) == 4 and len(ds.val_rows) == 2
    tiles = TileDataset(ds.zarr_path, ds.val_rows, ds.mean, ds.std, num_classes=ds.num_classes)
    x, y = tiles[1]
    assert x.dtype == torch.float32 and x.shape == (4, 64, 64) and y.dtype == torch.uint8
    raw = zarr.open_group(str(ds.zarr_path), mode="r")["images"][int(ds.val_rows[1])].astype(np.float64)
    expected = (raw - ds.mean[:, None, None]) / ds.std[:, None, None]
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-4)
    assert abs(float(x.mean())) < 1.5  # same scale whatever the dtype (uint16 data is 1000x uint8 here)


def test_augmentation_keeps_image_and_mask_aligned(make_dataset: Callable[..., Path]) -> None:
    ds = read_dataset(make_dataset(n_train=9, n_val=3))
    tf = build_train_transform(seed=3)
    tiles = TileDataset(ds.zarr_path, ds.train_rows, ds.mean, ds.std, num_classes=3, transform=tf)
    plain = TileDataset(ds.zarr_path, ds.train_rows, ds.mean, ds.std, num_classes=3)
    changed = 0
    for _ in range(3):
        for i in range(len(tiles)):
            x, y = tiles[i]
            _, y0 = plain[i]
            assert set(np.unique(y.numpy())) <= {0, 1, 2, 255}
            changed += int(not torch.equal(y, y0))
            for cls, band in ((1, 0), (2, 2)):  # class pixels stay bright in their band after any transform
                if (y == cls).sum() > 20:
                    assert x[band][y == cls].mean() > x[band][y == 0].mean() + 1.0
    assert changed > 5  # augmentation happened


def test_brightness_contrast_does_not_clip_normalised_values() -> None:
    img = np.linspace(-4, 4, 8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)
    t = NormalisedBrightnessContrast(0.2, 0.2, p=1.0)
    t.set_random_seed(0)
    out = t(image=img)["image"]
    assert out.min() < -2 and out.max() > 2  # albumentations' own version clips floats to [0, 1]
    slope = (out[..., 0].ravel()[-1] - out[..., 0].ravel()[0]) / (img[..., 0].ravel()[-1] - img[..., 0].ravel()[0])
    assert 0.8 <= slope <= 1.2


def test_bad_mask_value_is_a_clear_error(make_dataset: Callable[..., Path]) -> None:
    path = make_dataset(n_train=3, n_val=1)
    masks = zarr.open_group(str(path / "tiles.zarr"), mode="r+")["masks"]
    m = masks[0]
    m[0, 0] = 7
    masks[0] = m
    ds = read_dataset(path)
    with pytest.raises(InputError, match="class id 7"):
        TileDataset(ds.zarr_path, ds.train_rows, ds.mean, ds.std, num_classes=3)[0]


def test_kind_balancing_draws_kinds_equally(make_dataset: Callable[..., Path]) -> None:
    ds = read_dataset(make_dataset(n_train=30, n_val=3))
    counts = Counter(ds.train_kinds)
    assert counts["positive"] > 2 * counts["easy_negative"]  # unbalanced to start with
    w = kind_weights(ds.train_kinds)
    per_kind = {k: w[[i for i, kk in enumerate(ds.train_kinds) if kk == k]].sum() for k in counts}
    assert all(v == pytest.approx(1 / 3) for v in per_kind.values())
    s = TileSampler(len(w), weights=w, num_samples=3000, seed=1)
    drawn = Counter(ds.train_kinds[i] for i in s)
    assert all(800 < n < 1200 for n in drawn.values())


def test_sampler_shards_over_ranks() -> None:
    shards = [list(TileSampler(10, rank=r, world=3, seed=5)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)  # padded to 12
    assert set().union(*map(set, shards)) == set(range(10))
    val = [list(TileSampler(10, shuffle=False, rank=r, world=3)) for r in range(3)]
    assert sorted(i for v in val for i in v) == list(range(10))  # no padding: metrics count each val tile once
    a, b = TileSampler(10, seed=5), TileSampler(10, seed=5)
    b.set_epoch(1)
    assert list(a) != list(b) and sorted(a) == sorted(b)
    assert len(list(TileSampler(10, num_samples=4))) == 4


def test_worker_processes_read_the_same_tiles(make_dataset: Callable[..., Path]) -> None:
    ds = read_dataset(make_dataset(n_train=6, n_val=2))
    tiles = TileDataset(ds.zarr_path, ds.train_rows, ds.mean, ds.std, num_classes=3)
    first = tiles[0]  # opens zarr in this process before the workers fork
    from geoseg.train.run import _WorkerInit

    loader = torch.utils.data.DataLoader(tiles, batch_size=3, num_workers=2, worker_init_fn=_WorkerInit())
    xs = torch.cat([x for x, _ in loader])
    assert torch.equal(xs[0], first[0])
    assert torch.equal(xs, torch.stack([tiles[i][0] for i in range(len(tiles))]))


def test_nodata_and_nan_pixels_become_zero_like_in_predict(make_dataset: Callable[..., Path]) -> None:
    ds = read_dataset(make_dataset(n_train=2, n_val=1))
    images = zarr.open_group(str(ds.zarr_path), mode="r+")["images"]
    row = int(ds.train_rows[0])
    tile = np.asarray(images[row])
    nod = next(v for v in range(256) if not (tile == v).any())  # a value the tile does not hold: "nodata"
    tile[:, :4, :4] = nod
    images[row] = tile
    plain = TileDataset(ds.zarr_path, ds.train_rows[:1], ds.mean, ds.std, num_classes=ds.num_classes)
    masked = TileDataset(ds.zarr_path, ds.train_rows[:1], ds.mean, ds.std, num_classes=ds.num_classes, nodata=nod)
    x_plain, x_masked = plain[0][0].numpy(), masked[0][0].numpy()
    assert (x_masked[:, :4, :4] == 0).all() and not (x_plain[:, :4, :4] == 0).all()
    assert np.isfinite(x_masked).all()
    np.testing.assert_array_equal(x_masked[:, 4:, 4:], x_plain[:, 4:, 4:])
