"""Pure tile-selection logic on a candidate table (one row per tile of every scene).

Candidate columns used here: ``scene``, ``row_off``, ``col_off``, ``label_fraction``,
``unusable_fraction`` (nodata or ignore), ``lookalike`` (bool), ``f0..`` (spectral features),
``x0, y0, x1, y1`` (tile bounds in the common CRS, i.e. the first scene's CRS).

* **Usable**: ``unusable_fraction <= max_unusable_fraction``.
* **Positive**: ``label_fraction >= min_positive_fraction`` (and > 0). **Negative**: no label pixel.
  Tiles in between (a few label pixels) are neither and are never sampled.
* **Split** (:func:`assign_split`): square blocks of ``block_size`` (common-CRS units) anchored
  at the first scene's top-left corner; each block is train or val (seeded, greedy towards
  ``val_fraction`` of the positives). A tile belongs to the block holding its centre and is
  dropped when the tile grown by one tile width on each side reaches into a block of the other
  split, so val and train tiles are at least two tile widths apart (never overlap or touch).
* **Selection** (:func:`select`), per split: all positives; ``round(negative_ratio * positives)``
  negatives, of which ``round(hard_negative_share * negatives)`` hard. Hard negatives are the
  negatives with a look-alike polygon (drawn at random) when a look-alike layer is given, otherwise
  the negatives whose spectral features are closest to a positive tile: features are per-band
  mean and standard deviation of valid pixels, z-scored over all usable tiles; the score is the
  Euclidean distance to the nearest positive tile (smallest = hardest). Easy negatives are drawn
  at random from the remaining negatives. Same seed, same table -> same selection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

KINDS = ("positive", "hard_negative", "easy_negative")
SPLIT_RULE = (
    "square blocks of val_block_tiles x tile_size pixels of the first scene, anchored at its top-left corner; "
    "a tile belongs to the block holding its centre; tiles whose footprint grown by one tile on each side reaches "
    "a block of the other split are dropped"
)
HARD_NEGATIVE_STATISTIC = (
    "Euclidean distance, in z-scored per-band [mean, std] of valid pixels, from a negative tile to the "
    "nearest positive tile; smallest first"
)


@dataclass(frozen=True)
class Selection:
    """Selected tiles (sorted: positives, hard, easy; each by scene, row, col) and the counts."""

    tiles: pd.DataFrame
    requested: dict[str, int]
    realised: dict[str, int]
    by_split: dict[str, int]
    split_info: dict[str, object]


def candidate_kind(df: pd.DataFrame, min_positive_fraction: float, max_unusable_fraction: float) -> pd.Series:
    """``positive`` / ``negative`` / ``None`` (not sampled) per candidate."""
    usable = df["unusable_fraction"] <= max_unusable_fraction + 1e-12
    pos = usable & (df["label_fraction"] > 0) & (df["label_fraction"] >= min_positive_fraction - 1e-12)
    neg = usable & (df["label_fraction"] == 0)
    kind = pd.Series([None] * len(df), index=df.index, dtype=object)
    kind[pos] = "positive"
    kind[neg] = "negative"
    return kind


def assign_split(
    df: pd.DataFrame,
    kind: pd.Series,
    *,
    val_fraction: float,
    block_size: float,
    origin: tuple[float, float],
    seed: int,
) -> tuple[pd.Series, dict[str, object]]:
    """``train`` / ``val`` / ``None`` (dropped at a train/val border) per candidate.

    ``origin`` is (left, top) of the block grid in the common CRS; blocks count right and down.
    """
    split = pd.Series(["train"] * len(df), index=df.index, dtype=object)
    info: dict[str, object] = {"block_size": block_size, "val_blocks": 0, "dropped_at_border": 0}
    if val_fraction <= 0 or len(df) == 0:
        return split, info
    x0, y0, x1, y1 = (df[k].to_numpy(float) for k in ("x0", "y0", "x1", "y1"))
    ox, oy = origin

    def bx(x: np.ndarray) -> np.ndarray:
        return np.floor((x - ox) / block_size).astype(np.int64)

    def by(y: np.ndarray) -> np.ndarray:
        return np.floor((oy - y) / block_size).astype(np.int64)

    cbx, cby = bx((x0 + x1) / 2), by((y0 + y1) / 2)
    # each tile grown by one tile width/height (minus a hair, so a tile exactly one tile away is kept)
    w, h = x1 - x0, y1 - y0
    eps = 1e-6 * np.maximum(w, h)
    gx0, gx1 = bx(x0 - w + eps), bx(x1 + w - eps)
    gy0, gy1 = by(y1 + h - eps), by(y0 - h + eps)  # the top edge has the smaller block row
    interior = (gx0 == cbx) & (gx1 == cbx) & (gy0 == cby) & (gy1 == cby)
    sampled = kind.notna().to_numpy()
    is_pos = (kind == "positive").to_numpy()
    cells = list(zip(cbx.tolist(), cby.tolist(), strict=False))
    blocks = sorted({cells[i] for i in np.flatnonzero(sampled)})
    # weight of a block: positives that survive the border drop even if all neighbours have the other split
    weight = dict.fromkeys(blocks, 0)
    for i in np.flatnonzero(is_pos & interior):
        weight[cells[i]] += 1
    total = sum(weight.values())
    target = val_fraction * total
    rng = np.random.default_rng([seed, 1])
    val: set[tuple[int, int]] = set()
    acc = 0
    for i in rng.permutation(len(blocks)):
        b = blocks[i]
        if len(val) + 1 >= len(blocks):
            break  # keep at least one train block
        if weight[b] == 0:
            if total == 0 and rng.random() < val_fraction:
                val.add(b)
            continue
        if abs(acc + weight[b] - target) < abs(acc - target):
            val.add(b)
            acc += weight[b]
    info["val_blocks"] = len(val)
    info["blocks"] = len(blocks)
    if not val:
        return split, info
    is_val = np.array([c in val for c in cells])
    keep = np.ones(len(df), bool)
    for i in np.flatnonzero(sampled & ~interior):
        mine = bool(is_val[i])
        for xb in range(int(gx0[i]), int(gx1[i]) + 1):
            for yb in range(int(gy0[i]), int(gy1[i]) + 1):
                if ((xb, yb) in val) != mine:
                    keep[i] = False
                    break
            if not keep[i]:
                break
    split[:] = np.where(is_val, "val", "train")
    split[~keep] = None
    info["dropped_at_border"] = int((~keep & sampled).sum())
    return split, info


def hard_negative_scores(neg: np.ndarray, pos: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Distance of each negative feature row to the nearest positive, z-scored over ``ref`` rows."""
    if len(neg) == 0:
        return np.zeros(0)
    if len(pos) == 0:
        return np.full(len(neg), np.inf)
    mu = np.nanmean(ref, axis=0)
    sd = np.nanstd(ref, axis=0)
    sd[~(sd > 0)] = 1.0
    zn = np.nan_to_num((neg - mu) / sd, nan=0.0)
    zp = np.nan_to_num((pos - mu) / sd, nan=0.0)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(zp).query(zn, k=1)
    return np.asarray(d, float)


def select(
    df: pd.DataFrame,
    kind: pd.Series,
    split: pd.Series,
    *,
    negative_ratio: float,
    hard_negative_share: float,
    use_lookalikes: bool,
    seed: int,
) -> Selection:
    """Pick positives, hard and easy negatives per split (see module docstring)."""
    feat_cols = [c for c in df.columns if c.startswith("f") and c[1:].isdigit()]
    feats = df[feat_cols].to_numpy(float) if feat_cols else np.zeros((len(df), 0))
    rng = np.random.default_rng([seed, 2])
    order_cols = ["scene", "row_off", "col_off"]
    chosen: dict[str, list[int]] = {k: [] for k in KINDS}
    requested = dict.fromkeys(KINDS, 0)
    usable_ref = feats[kind.notna().to_numpy()]
    for sp in ("train", "val"):
        in_sp = (split == sp).to_numpy()
        pos = np.flatnonzero(in_sp & (kind == "positive").to_numpy())
        neg = np.flatnonzero(in_sp & (kind == "negative").to_numpy())
        # deterministic base order regardless of how the table was built
        pos = pos[np.lexsort([df[c].to_numpy()[pos] for c in reversed(order_cols)])]
        neg = neg[np.lexsort([df[c].to_numpy()[neg] for c in reversed(order_cols)])]
        n_neg = round(negative_ratio * len(pos))
        n_hard = round(hard_negative_share * n_neg)
        n_easy = n_neg - n_hard
        requested["positive"] += len(pos)
        requested["hard_negative"] += n_hard
        requested["easy_negative"] += n_easy
        chosen["positive"] += pos.tolist()
        if use_lookalikes:
            look = df["lookalike"].to_numpy(bool)[neg]
            hard_pool, rest = neg[look], neg[~look]
            hard = rng.permutation(hard_pool)[:n_hard] if n_hard else hard_pool[:0]
        else:
            scores = hard_negative_scores(feats[neg], feats[pos], usable_ref)
            rank = np.lexsort([np.arange(len(neg)), scores])
            hard = neg[rank[:n_hard]]
            rest = np.setdiff1d(neg, hard, assume_unique=True)
            rest = rest[np.lexsort([df[c].to_numpy()[rest] for c in reversed(order_cols)])]
        easy = rng.permutation(rest)[:n_easy] if n_easy else rest[:0]
        chosen["hard_negative"] += hard.tolist()
        chosen["easy_negative"] += easy.tolist()
    parts = []
    for k in KINDS:
        sub = df.loc[df.index[chosen[k]]].copy()
        sub["kind"] = k
        sub["split"] = split.loc[sub.index].to_numpy()
        parts.append(sub.sort_values(order_cols, kind="stable"))
    tiles = pd.concat(parts, ignore_index=True) if parts else df.iloc[:0]
    realised = {k: len(chosen[k]) for k in KINDS}
    by_split = {sp: int((tiles["split"] == sp).sum()) for sp in ("train", "val")}
    return Selection(tiles=tiles, requested=requested, realised=realised, by_split=by_split, split_info={})


def block_size_for(tile_size: int, res: float, val_block_tiles: int) -> float:
    """Block edge in common-CRS units: ``val_block_tiles`` tiles of the first scene."""
    return float(val_block_tiles * tile_size * res)
