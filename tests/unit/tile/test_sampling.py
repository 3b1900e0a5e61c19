"""Sampling: counts vs request, spatially blocked split that never touches, hard negatives, seeds."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import box

from geoseg.testing import pixel_box, write_labels, write_scene
from geoseg.tile import TileConfig, run
from geoseg.tile.sampling import assign_split, auto_block_tiles, candidate_kind, default_gap, select, split_tiles

from .conftest import SCENE_DATE, load_dataset


def _table(n: int = 30, t: float = 10.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:n, 0:n]
    df = pd.DataFrame({"scene": 0, "row_off": rows.ravel() * 16, "col_off": cols.ravel() * 16})
    df["x0"], df["x1"] = cols.ravel() * t, cols.ravel() * t + t
    df["y1"], df["y0"] = -rows.ravel() * t, -rows.ravel() * t - t
    df["label_fraction"] = np.where(rng.random(len(df)) < 0.3, rng.uniform(0.05, 0.5, len(df)), 0.0)
    df["unusable_fraction"] = np.where(rng.random(len(df)) < 0.05, 0.9, 0.0)
    df["lookalike"] = rng.random(len(df)) < 0.2
    df["f0"] = rng.normal(size=len(df))
    df["f1"] = rng.normal(size=len(df))
    return df


def _no_touch(val: list, train: list) -> None:
    assert val and train
    tree = shapely.STRtree(train)
    for g in val:
        assert len(tree.query(g, predicate="intersects")) == 0  # intersects includes touching
        assert min(shapely.distance(g, train)) > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blocked_split_with_gap_one_never_touches_train(seed: int) -> None:
    df = _table(seed=seed)
    kind = candidate_kind(df, 0.01, 0.5)
    split, info = assign_split(df, kind, val_fraction=0.25, block_size=50.0, origin=(0.0, 0.0), seed=seed, gap=1)
    boxes = shapely.box(df.x0, df.y0, df.x1, df.y1)
    val = list(boxes[(split == "val").to_numpy()])
    train = list(boxes[(split == "train").to_numpy() & kind.notna().to_numpy()])
    _no_touch(val, train)
    # only train tiles next to a val tile are dropped; val keeps all its tiles
    assert info["dropped_at_border"] > 0
    assert split[kind.notna()].notna().sum() > 0.5 * kind.notna().sum()
    assert split[kind.notna()].isna().sum() == info["dropped_at_border"]
    pos = kind == "positive"
    share = ((split == "val") & pos).sum() / (split.notna() & pos).sum()
    assert info["val_share_positives"] == pytest.approx(share)
    assert abs(share - 0.25) < 0.1


def test_default_gap_with_aligned_blocks_drops_nothing() -> None:
    df = _table(seed=5)
    kind = candidate_kind(df, 0.01, 0.5)
    split, info = assign_split(df, kind, val_fraction=0.25, block_size=50.0, origin=(0.0, 0.0), seed=0)
    assert info["dropped_at_border"] == 0 and (split[kind.notna()] == "val").any()
    boxes = shapely.box(df.x0, df.y0, df.x1, df.y1)
    val, train = boxes[(split == "val").to_numpy()], boxes[(split == "train").to_numpy()]
    # val and train may touch along an edge but share no area
    assert shapely.area(shapely.intersection(shapely.union_all(val), shapely.union_all(train))) == 0
    assert default_gap(256, 256) == 0 and default_gap(256, 128) == 1 and default_gap(256, 100) == 2


def test_split_with_offset_grids_and_other_tile_size_still_separates() -> None:
    df = _table(n=24, t=7.0, seed=3)  # 7-unit tiles on 25-unit blocks: tiles straddle block borders
    df[["x0", "x1"]] += 3.3
    kind = candidate_kind(df, 0.01, 0.5)
    split, _ = assign_split(df, kind, val_fraction=0.3, block_size=25.0, origin=(0.0, 0.0), seed=0, gap=1)
    boxes = shapely.box(df.x0, df.y0, df.x1, df.y1)
    used = kind.notna().to_numpy()  # tiles never sampled are no part of either split's dataset
    _no_touch(list(boxes[(split == "val").to_numpy() & used]), list(boxes[(split == "train").to_numpy() & used]))


def synthetic_tiles(size: int, t: int, stride: int, seed: int, res: float = 0.5) -> pd.DataFrame:
    """Candidate table of a ``size``² scene (tiles of ``t`` px every ``stride`` px, edge tiles padded) whose
    label raster holds ~size²/3000 buildings of 6-20 px, denser in a few random neighbourhoods."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((size + t, size + t), np.int32)  # padded: edge tiles run past the scene
    centres = rng.uniform(0, size, (max(2, size // 512), 2))
    for _ in range(size * size // 3000):
        if rng.random() < 0.6:  # clustered around a neighbourhood centre
            r, c = (centres[rng.integers(len(centres))] + rng.normal(0, size / 8, 2)).clip(0, size - 20).astype(int)
        else:
            r, c = rng.integers(0, size - 20, 2)
        h, w = rng.integers(6, 21, 2)
        lab[r : r + h, c : c + w] = 1
    ii = np.zeros((size + t + 1, size + t + 1), np.int64)
    ii[1:, 1:] = lab.cumsum(0).cumsum(1)
    o = np.arange(0, size, stride)
    rr, cc = (a.ravel() for a in np.meshgrid(o, o, indexing="ij"))
    frac = (ii[rr + t, cc + t] - ii[rr, cc + t] - ii[rr + t, cc] + ii[rr, cc]) / (t * t)
    df = pd.DataFrame({"scene": 0, "row_off": rr, "col_off": cc, "label_fraction": frac, "unusable_fraction": 0.0})
    df["x0"], df["x1"] = cc * res, (cc + t) * res
    df["y1"], df["y0"] = -rr * res, -(rr + t) * res
    df["lookalike"] = False
    return df


def _shared_pixels(df: pd.DataFrame, split: pd.Series, kind: pd.Series, t: int) -> int:
    """Pairs of a sampled val and train tile whose pixel footprints overlap (independent of the split code)."""
    from scipy.spatial import cKDTree

    used = kind.notna().to_numpy()
    val = df.loc[(split == "val").to_numpy() & used, ["row_off", "col_off"]].to_numpy(float)
    train = df.loc[(split == "train").to_numpy() & used, ["row_off", "col_off"]].to_numpy(float)
    if not len(val) or not len(train):
        return 0
    hits = cKDTree(train).query_ball_point(val, r=t - 0.5, p=np.inf)  # |dr| < t and |dc| < t
    return sum(len(h) for h in hits)


@pytest.mark.parametrize(
    ("size", "t", "stride"),
    [(512, 64, 64), (512, 64, 32), (2048, 128, 128), (2048, 256, 128), (2048, 64, 48), (4096, 256, 256),
     (4096, 128, 64), (4096, 256, 192)],
)  # fmt: skip
def test_default_split_hits_the_fraction_without_shared_pixels(size: int, t: int, stride: int) -> None:
    df = synthetic_tiles(size, t, stride, seed=size + t + stride)
    kind = candidate_kind(df, 0.01, 0.5)
    for seed in (0, 1):
        split, info = split_tiles(
            df, kind, tile_size=t, stride=stride, res=0.5, origin=(0.0, 0.0), val_fraction=0.2, seed=seed
        )
        assert info["val_gap"] == -(-t // stride) - 1
        assert _shared_pixels(df, split, kind, t) == 0
        # one gap less would share pixels: the default is the smallest gap
        if info["val_gap"] > 0:
            tight, _ = split_tiles(
                df, kind, tile_size=t, stride=stride, res=0.5, origin=(0.0, 0.0), val_fraction=0.2, seed=seed,
                val_gap=info["val_gap"] - 1,
            )  # fmt: skip
            assert _shared_pixels(df, tight, kind, t) > 0
        pos = (kind == "positive").to_numpy()
        share = ((split == "val").to_numpy() & pos).sum() / (split.notna().to_numpy() & pos).sum()
        assert info["val_share_positives"] == pytest.approx(share)
        if info["blocks"] >= 8:
            assert abs(share - 0.2) <= 0.1, (info, share)
        # no more train tiles lost than the gap ring needs
        assert info["dropped_at_border"] <= 0.35 * kind.notna().sum()
    if size >= 2048:
        assert info["blocks"] >= 10  # the scene allows enough blocks: auto finds them


def test_auto_blocks_shrink_with_the_scene_and_grow_with_it() -> None:
    small = synthetic_tiles(1024, 64, 64, seed=1)
    big = synthetic_tiles(4096, 64, 64, seed=1)
    n = [
        auto_block_tiles(d, candidate_kind(d, 0.01, 0.5), val_fraction=0.2, tile_extent=32.0, origin=(0.0, 0.0))
        for d in (small, big)
    ]
    assert 2 <= n[0] < n[1]
    # an explicit integer is used as given
    _, info = split_tiles(
        big, candidate_kind(big, 0.01, 0.5), tile_size=64, stride=64, res=0.5, origin=(0.0, 0.0),
        val_fraction=0.2, val_block_tiles=7,
    )  # fmt: skip
    assert info["val_block_tiles"] == 7 and info["block_size"] == 7 * 64 * 0.5


def test_select_counts_and_spectral_hard_negatives() -> None:
    df = _table(seed=4)
    kind = candidate_kind(df, 0.01, 0.5)
    split = pd.Series("train", index=df.index, dtype=object)
    # positives cluster at features (5, 5); a few negatives sit right next to them
    pos = (kind == "positive").to_numpy()
    df.loc[pos, ["f0", "f1"]] += 5.0
    n_pos = int(pos.sum())
    n_neg = round(0.5 * n_pos)
    near = np.flatnonzero((kind == "negative").to_numpy())[: round(0.1 * n_neg)]
    df.loc[near, ["f0", "f1"]] = 5.0
    sel = select(df, kind, split, negative_ratio=0.5, hard_negative_share=0.1, use_lookalikes=False, seed=0)
    assert sel.requested == {
        "positive": n_pos,
        "hard_negative": round(0.1 * n_neg),
        "easy_negative": n_neg - round(0.1 * n_neg),
    }
    assert sel.realised == sel.requested
    hard = sel.tiles[sel.tiles.kind == "hard_negative"]
    assert len(hard) == len(near) > 3
    assert set(zip(hard.row_off, hard.col_off, strict=False)) == set(
        zip(df.row_off[near], df.col_off[near], strict=False)
    )
    assert (sel.tiles.label_fraction[sel.tiles.kind != "positive"] == 0).all()
    # look-alike mode: hard negatives are exactly drawn from look-alike tiles
    sel2 = select(df, kind, split, negative_ratio=1, hard_negative_share=0.5, use_lookalikes=True, seed=0)
    hard2 = sel2.tiles[sel2.tiles.kind == "hard_negative"]
    easy2 = sel2.tiles[sel2.tiles.kind == "easy_negative"]
    assert hard2.lookalike.all() and not easy2.lookalike.any()
    # same seed same draw, other seed another draw
    again = select(df, kind, split, negative_ratio=1, hard_negative_share=0.5, use_lookalikes=True, seed=0)
    other = select(df, kind, split, negative_ratio=1, hard_negative_share=0.5, use_lookalikes=True, seed=1)
    pd.testing.assert_frame_equal(sel2.tiles, again.tiles)
    assert not sel2.tiles[["row_off", "col_off"]].equals(other.tiles[["row_off", "col_off"]])


@pytest.fixture
def grid_case(tmp_path: Path) -> dict:
    """256 x 256 one-band scene: bright roofs (label) and bright look-alikes on dark ground."""
    rng = np.random.default_rng(7)
    img = rng.integers(10, 40, (1, 256, 256)).astype("uint8")
    grid = write_scene(tmp_path / "s.tif", img, date=SCENE_DATE, blocksize=64)
    geoms, look = [], []
    for _ in range(45):
        r, c = rng.integers(0, 248, 2)
        geoms.append(pixel_box(grid, r, c, 6, 6))
        img[0, r : r + 6, c : c + 6] = 200
    for _ in range(12):
        r, c = rng.integers(0, 248, 2)
        look.append(pixel_box(grid, r, c, 5, 5))
        img[0, r : r + 5, c : c + 5] = 190
    write_scene(tmp_path / "s.tif", img, date=SCENE_DATE, blocksize=64)
    write_labels(tmp_path / "l.gpkg", geoms, grid.crs, **{"class": ["roof"] * len(geoms)})
    write_labels(tmp_path / "look.gpkg", look, grid.crs)
    return {"tmp": tmp_path, "scene": tmp_path / "s.tif", "labels": tmp_path / "l.gpkg", "look": tmp_path / "look.gpkg"}


def _cfg(case: dict, out: str, **kw) -> TileConfig:
    base = {
        "tile_size": 16,
        "val_fraction": 0.25,
        "val_block_tiles": 4,
        "negative_ratio": 1.0,
        "hard_negative_share": 0.5,
        "seed": 0,
        "progress": False,
    }
    return TileConfig(
        scenes=(str(case["scene"]),), labels=str(case["labels"]), out=str(case["tmp"] / out), **{**base, **kw}
    )


def test_run_counts_split_and_seed(grid_case: dict) -> None:
    res = run(_cfg(grid_case, "a"))
    meta = json.loads((grid_case["tmp"] / "a" / "dataset.json").read_text())
    req, got = meta["counts"]["requested"], meta["counts"]["realised"]
    assert got == req and req == res.counts["requested"]
    assert req["positive"] > 10
    # per split: round(ratio * positives) negatives, hard share rounded per split
    assert abs(req["hard_negative"] + req["easy_negative"] - req["positive"]) <= 1
    assert abs(req["hard_negative"] - req["easy_negative"]) <= 2
    idx, images, masks = load_dataset(grid_case["tmp"] / "a")
    assert len(idx) == sum(got.values()) == len(images) == len(masks)
    assert idx.kind.value_counts().to_dict() == {k: v for k, v in got.items() if v}
    assert (idx.label_fraction[idx.kind == "positive"] >= 0.01).all()
    assert (idx.label_fraction[idx.kind != "positive"] == 0).all()
    assert meta["counts"]["by_split"]["val"] > 0 and meta["counts"]["by_split"]["train"] > 0
    val_u, train_u = idx.geometry[idx.split == "val"].union_all(), idx.geometry[idx.split == "train"].union_all()
    assert val_u.intersection(train_u).area == 0  # stride = tile size: default gap 0, tiles may touch
    share = meta["counts"]["val_share_of_positives"]
    pos = idx[idx.kind == "positive"]
    assert share["requested"] == 0.25 and share["realised"] == pytest.approx((pos.split == "val").mean(), abs=1e-4)
    assert meta["split"]["val_gap"] == 0 and meta["split"]["val_block_tiles"] == 4
    # hard negatives (spectral) are brighter than easy ones: the look-alikes are found without the layer
    bright = (images[:, 0] > 150).mean(axis=(1, 2))
    assert bright[idx.kind == "hard_negative"].mean() > bright[idx.kind == "easy_negative"].mean()
    # same seed -> same dataset; another seed -> another one
    run(_cfg(grid_case, "b"))
    idx_b, images_b, masks_b = load_dataset(grid_case["tmp"] / "b")
    pd.testing.assert_frame_equal(idx.drop(columns="geometry"), idx_b.drop(columns="geometry"))
    np.testing.assert_array_equal(images, images_b)
    np.testing.assert_array_equal(masks, masks_b)
    run(_cfg(grid_case, "c", seed=5))
    idx_c, _, _ = load_dataset(grid_case["tmp"] / "c")
    assert not idx_c[["row_off", "col_off", "kind"]].equals(idx[["row_off", "col_off", "kind"]])


def test_run_auto_blocks_and_val_area(grid_case: dict) -> None:
    # defaults: auto blocks, gap from the stride (8 px stride on 16 px tiles: gap 1)
    run(_cfg(grid_case, "auto", val_block_tiles="auto", stride=8))
    meta = json.loads((grid_case["tmp"] / "auto" / "dataset.json").read_text())
    assert meta["split"]["val_block_tiles"] >= 2 and meta["split"]["val_gap"] == 1
    assert meta["split"]["val_block_tiles_option"] == "auto" and meta["config"]["val_block_tiles"] == "auto"
    assert meta["split"]["blocks"] >= 10
    assert abs(meta["counts"]["val_share_of_positives"]["realised"] - 0.25) <= 0.1
    idx, _, _ = load_dataset(grid_case["tmp"] / "auto")
    val_u, train_u = idx.geometry[idx.split == "val"].union_all(), idx.geometry[idx.split == "train"].union_all()
    assert val_u.intersection(train_u).area == 0  # overlapping tiles, yet no pixel in both splits
    # --val-area, given in another CRS: exactly the tiles sharing area with it are val, with the gap around them
    scene_crs = gpd.read_file(grid_case["labels"]).crs
    area = box(500_000 + 20.3, 40_000 - 70.1, 500_000 + 61.7, 40_000 - 31.9)  # scene CRS metres, off the tile grid
    write_labels(grid_case["tmp"] / "va.gpkg", list(gpd.GeoSeries([area], crs=scene_crs).to_crs(4326)), "EPSG:4326")
    run(_cfg(grid_case, "va", val_area=str(grid_case["tmp"] / "va.gpkg"), stride=8))
    meta = json.loads((grid_case["tmp"] / "va" / "dataset.json").read_text())
    idx, _, _ = load_dataset(grid_case["tmp"] / "va")
    inside = np.array([g.intersection(area).area > 1e-6 for g in idx.geometry])
    assert inside.any() and (~inside).any()
    assert (idx.split[inside] == "val").all() and (idx.split[~inside] == "train").all()
    assert meta["split"]["val_area"] and meta["split"]["val_block_tiles"] is None
    assert meta["counts"]["val_share_of_positives"]["requested"] is None
    val_u, train_u = idx.geometry[idx.split == "val"].union_all(), idx.geometry[idx.split == "train"].union_all()
    assert val_u.intersection(train_u).area == 0 and train_u.intersection(area).area == 0


def test_run_lookalike_layer_gives_hard_negatives(grid_case: dict) -> None:
    run(_cfg(grid_case, "h", hard_negatives=str(grid_case["look"]), val_fraction=0.0))
    idx, _, _ = load_dataset(grid_case["tmp"] / "h")
    look = gpd.read_file(grid_case["look"]).union_all()
    hard = idx[idx.kind == "hard_negative"]
    assert len(hard) > 0
    assert all(g.intersects(look) for g in hard.geometry)
    assert not any(g.intersects(look) for g in idx.geometry[idx.kind == "easy_negative"])


def test_mostly_nodata_and_ignore_tiles_are_skipped(grid_case: dict) -> None:
    cov = write_labels(grid_case["tmp"] / "cov.gpkg", [box(*shapely.bounds(shapely.box(0, 0, 1, 1)))], "EPSG:4326")
    del cov  # coverage far away would give an all-ignore dataset: covered by the CLI error tests
    res = run(_cfg(grid_case, "n", max_unusable_fraction=0.0, negative_ratio=50, val_fraction=0.0))
    idx, _, masks = load_dataset(grid_case["tmp"] / "n")
    assert res.n_tiles == len(idx)
    assert (masks != 255).all()  # nothing ignored was sampled


def test_select_mined_first_within_the_hard_quota() -> None:
    df = _table(seed=5)
    kind = candidate_kind(df, 0.01, 0.5)
    split = pd.Series("train", index=df.index, dtype=object)
    neg = np.flatnonzero((kind == "negative").to_numpy())
    n_neg = round(1.0 * int((kind == "positive").sum()))
    n_hard = round(0.5 * n_neg)
    df["mined"] = False
    few = neg[:5]  # fewer mined tiles than the hard quota: all taken, the rest of the quota from look-alikes
    df.loc[few, "mined"] = True
    df.loc[few, "lookalike"] = True  # a tile may be both: it counts once, as mined
    sel = select(df, kind, split, negative_ratio=1, hard_negative_share=0.5, use_lookalikes=True, seed=0,
                 use_mined=True)  # fmt: skip
    mined = sel.tiles[sel.tiles.kind == "mined_negative"]
    hard = sel.tiles[sel.tiles.kind == "hard_negative"]
    assert len(mined) == 5 and mined.mined.all()
    assert len(mined) + len(hard) == n_hard and hard.lookalike.all() and not hard.mined.any()
    assert sel.requested["mined_negative"] + sel.requested["hard_negative"] == n_hard
    assert not sel.tiles.duplicated(["row_off", "col_off"]).any()
    # more mined tiles than the quota: the quota is all mined, nothing from the look-alikes
    df.loc[neg, "mined"] = True
    sel2 = select(df, kind, split, negative_ratio=1, hard_negative_share=0.5, use_lookalikes=True, seed=0,
                  use_mined=True)  # fmt: skip
    assert (sel2.tiles.kind == "mined_negative").sum() == n_hard and (sel2.tiles.kind == "hard_negative").sum() == 0
    # without use_mined the counts keep their former keys
    assert "mined_negative" not in select(df, kind, split, negative_ratio=1, hard_negative_share=0.5,
                                          use_lookalikes=True, seed=0).requested  # fmt: skip


def test_run_several_hard_negative_layers_record_the_mined_kind(grid_case: dict) -> None:
    look = gpd.read_file(grid_case["look"])
    mined_geoms = list(look.geometry.values[:6])
    mined_path = write_labels(grid_case["tmp"] / "fp.gpkg", mined_geoms, look.crs, geoseg_mined=["abc"] * 6)
    rest = write_labels(grid_case["tmp"] / "rest.gpkg", list(look.geometry.values[6:]), look.crs)
    run(_cfg(grid_case, "m", hard_negatives=(str(rest), str(mined_path)), val_fraction=0.0, negative_ratio=2.0))
    idx, _, _ = load_dataset(grid_case["tmp"] / "m")
    meta = json.loads((grid_case["tmp"] / "m" / "dataset.json").read_text())
    mined_u, rest_u = shapely.union_all(mined_geoms), gpd.read_file(rest).union_all()
    m = idx[idx.kind == "mined_negative"]
    h = idx[idx.kind == "hard_negative"]
    assert len(m) > 0 and all(g.intersects(mined_u) for g in m.geometry)
    assert len(h) > 0 and all(g.intersects(rest_u) for g in h.geometry)
    assert meta["counts"]["realised"]["mined_negative"] == len(m)
    assert [s["kind"] for s in meta["hard_negatives"]["layers"]] == ["look-alike", "mined"]
    assert meta["hard_negatives"]["layers"][1]["model_sha256"] == "abc"
    # one layer as a plain string still works (older pipeline files)
    cfg = _cfg(grid_case, "one", hard_negatives=str(grid_case["look"]))
    assert cfg.hard_negatives == (str(grid_case["look"]),)
