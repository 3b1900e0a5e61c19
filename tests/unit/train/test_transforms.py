"""Augmentation recipes: geometry keeps image and mask aligned, masks keep their ids, colour jitter bounds, run.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import numpy as np
import pytest

from geoseg.errors import ConfigError
from geoseg.testing import xy_image
from geoseg.train.run import TrainConfig, run
from geoseg.train.transforms import (
    RECIPES,
    GreyAxisHueSaturation,
    PerBandGainOffset,
    build_train_transform,
    grey_axis_matrix,
)

T = 64


def _xy_and_mask() -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) float32 image: band 0 = column, band 1 = row, band 2 = 0; mask: 8 px blocks of ids 0..2."""
    img = xy_image(T, T, count=3, dtype="float32").transpose(1, 2, 0).copy()
    img[..., 2] = 0.0
    rows, cols = np.mgrid[0:T, 0:T]
    mask = ((rows // 8 + cols // 8) % 3).astype(np.uint8)
    return img, mask


def _spatial(recipe: str, seed: int) -> A.Compose:
    """The recipe's geometric steps only (the rest are ImageOnlyTransforms, which never move pixels)."""
    tf = build_train_transform(recipe, mean=[100.0] * 3, std=[30.0] * 3, channel_shuffle=True)
    assert all(isinstance(t, A.ImageOnlyTransform) or isinstance(t, A.DualTransform) for t in tf.transforms)
    return A.Compose([t for t in tf.transforms if isinstance(t, A.DualTransform)], seed=seed)


@pytest.mark.parametrize("recipe", RECIPES)
def test_geometry_keeps_image_and_mask_aligned(recipe: str) -> None:
    img, mask = _xy_and_mask()
    agree = total = 0
    for seed in range(30):
        out = _spatial(recipe, seed)(image=img, mask=mask)
        col, row, m = out["image"][..., 0], out["image"][..., 1], out["mask"]
        # inside the source tile, away from the zero fill the image interpolates towards at the border
        inside = (m != 255) & (col > 1) & (row > 1) & (col < T - 2) & (row < T - 2)
        src = mask[np.clip(np.rint(row), 0, T - 1).astype(int), np.clip(np.rint(col), 0, T - 1).astype(int)]
        agree += int((src[inside] == m[inside]).sum())
        total += int(inside.sum())
    assert total > 30 * T * T * 0.2
    assert agree / total > 0.97  # a mask moved differently from its image agrees ~1/3 of the time


def test_scale_jitter_covers_a_factor_of_two_each_way() -> None:
    img, mask = _xy_and_mask()
    scales = []
    for seed in range(200):
        out = _spatial("scale", seed)(image=img, mask=mask)
        col, row = out["image"][..., 0], out["image"][..., 1]
        c = T // 2
        # source pixels per output pixel along the output row = 1 / scale (rotation-invariant via the norm)
        step = np.hypot(col[c, c + 1] - col[c, c], row[c, c + 1] - row[c, c])
        scales.append(1.0 / step)
    scales = np.array(scales)
    assert 0.49 < scales.min() < 0.6 and 1.7 < scales.max() < 2.01
    jittered = scales[np.abs(scales - 1.0) > 0.01]  # p=0.5: the others pass unscaled
    assert len(jittered) > 60 and 0.3 < np.mean(jittered < 1.0) < 0.7  # balanced: as many coarser as finer


def test_masks_only_hold_original_ids_or_ignore() -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(T, T, 3)).astype(np.float32)
    _, mask = _xy_and_mask()
    mask[:, :5] = 255
    tf = build_train_transform("full", mean=[100.0] * 3, std=[30.0] * 3, channel_shuffle=True, seed=1)
    seen: set[int] = set()
    for _ in range(40):
        out = tf(image=img, mask=mask)
        assert out["image"].dtype == np.float32 and out["image"].shape == img.shape
        seen |= set(np.unique(out["mask"]).tolist())
    assert seen == {0, 1, 2, 255}


@pytest.mark.parametrize("bands", [1, 3, 5])
def test_gain_offset_is_per_band_and_within_bounds(bands: int) -> None:
    img = np.zeros((4, 4, bands), dtype=np.float32)
    img[1] = 1.0  # row 0: z = 0 -> offset; row 1: z = 1 -> gain + offset
    t = PerBandGainOffset(gain=(0.8, 1.2), offset=(-0.2, 0.2), p=1.0)
    t.set_random_seed(0)
    gains, offsets = [], []
    for _ in range(50):
        out = t(image=img)["image"]
        offsets.append(out[0, 0])
        gains.append(out[1, 0] - out[0, 0])
    g, o = np.array(gains), np.array(offsets)
    assert g.min() >= 0.8 - 1e-6 and g.max() <= 1.2 + 1e-6 and o.min() >= -0.2 - 1e-6 and o.max() <= 0.2 + 1e-6
    assert g.max() - g.min() > 0.3 and o.max() - o.min() > 0.3  # the whole range is used
    if bands > 1:
        assert np.abs(g[:, 0] - g[:, 1]).max() > 0.05  # independent per band


def test_hue_saturation_is_exact_in_normalised_space() -> None:
    assert np.allclose(grey_axis_matrix(0.0, 1.0), np.eye(3))
    assert np.allclose(grey_axis_matrix(120.0, 1.0) @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-9)  # R -> G
    assert np.allclose(grey_axis_matrix(37.0, 0.0) @ [0.9, 0.3, 0.0], [0.4, 0.4, 0.4])  # no saturation: grey
    mean, std = np.array([120.0, 100.0, 80.0]), np.array([40.0, 30.0, 20.0])
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 255, size=(8, 8, 3))
    raw[0, 0] = 77.0  # a grey pixel
    z = ((raw - mean) / std).astype(np.float32)
    t = GreyAxisHueSaturation(mean.tolist(), std.tolist(), hue_deg=30.0, saturation=(0.6, 1.4), p=1.0)
    for hue, sat in ((25.0, 1.3), (-30.0, 0.6)):
        out = t.apply(z, hue=hue, sat=sat)
        expected = (raw @ grey_axis_matrix(hue, sat).T - mean) / std
        np.testing.assert_allclose(out, expected, atol=1e-4)
        np.testing.assert_allclose(out[0, 0] * std + mean, [77.0] * 3, atol=1e-3)  # grey stays grey
    four = np.ones((4, 4, 4), dtype=np.float32)
    assert t.apply(four, hue=20.0, sat=0.5) is four  # not RGB: unchanged


def test_run_json_records_the_recipe(make_dataset: Callable[..., Path], tmp_path: Path) -> None:
    data = make_dataset(n_train=4, n_val=2)
    out = tmp_path / "run"
    cfg = TrainConfig(dataset=data, out=out, epochs=1, weights="none", batch_size=2, workers=0, progress=False,
                      max_steps_per_epoch=1, augment_recipe="full", channel_shuffle=True, calibrate=False)  # fmt: skip
    run(cfg)
    aug = json.loads((out / "run.json").read_text())["augmentation"]
    assert aug["recipe"] == "full" and aug["channel_shuffle"] is True
    assert json.loads((out / "run.json").read_text())["config"]["augment_recipe"] == "full"
    steps = {t["__class_fullname__"].rsplit(".", 1)[-1]: t for t in aug["pipeline"]["transform"]["transforms"]}
    assert {"PerBandGainOffset", "GreyAxisHueSaturation", "ChannelShuffle", "Affine"} <= set(steps)
    assert steps["Affine"]["scale"]["x"] == [0.5, 2.0]
    assert isinstance(A.from_dict(aug["pipeline"]), A.Compose)  # the exact pipeline can be rebuilt
    with pytest.raises(ConfigError, match="augment-recipe"):
        TrainConfig(dataset=data, out=out, augment_recipe="heavy")
