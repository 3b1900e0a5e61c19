"""Pure tile-selection logic on a candidate table (one row per tile of every scene).

Candidate columns used here: ``scene``, ``row_off``, ``col_off``, ``label_fraction``,
``unusable_fraction`` (nodata or ignore), ``lookalike`` (bool), ``mined`` (bool, optional), ``f0..``
(spectral features),
``x0, y0, x1, y1`` (tile bounds in the common CRS, i.e. the first scene's CRS).

* **Usable**: ``unusable_fraction <= max_unusable_fraction``.
* **Positive**: ``label_fraction >= min_positive_fraction`` (and > 0). **Negative**: no label pixel.
  Tiles in between (a few label pixels) are neither and are never sampled.
* **Split** (:func:`assign_split`): square blocks of ``block_size`` (common-CRS units) anchored
  at the first scene's top-left corner (edge from :func:`auto_block_tiles` by default); a tile
  belongs to the block holding its centre; blocks go to val so that the val share of positive tiles
  is closest to ``val_fraction`` (seeded randomised greedy, measured after the gap drop). With a
  val-area layer, the tiles intersecting its polygons are val instead. **Gap**: a *train* tile
  closer than ``gap + 1`` strides to a val tile (Chebyshev distance between tile origins) is
  dropped; val tiles are never dropped (their positives are the scarce ones). The default gap
  (:func:`default_gap`) is the smallest with no pixel shared: 0 when stride = tile size (val and
  train tiles may touch, never overlap), ``ceil(T / S) - 1`` otherwise.
* **Selection** (:func:`select`), per split: all positives; ``round(negative_ratio * positives)``
  negatives, of which ``round(hard_negative_share * negatives)`` hard. Hard negatives are the
  negatives with a look-alike polygon (drawn at random) when a look-alike layer is given, otherwise
  the negatives whose spectral features are closest to a positive tile: features are per-band
  mean and standard deviation of valid pixels, z-scored over all usable tiles; the score is the
  Euclidean distance to the nearest positive tile (smallest = hardest). Easy negatives are drawn
  at random from the remaining negatives. Same seed, same table -> same selection.
* **Mined hard negatives** (``mined``: the tile touches a false positive mined by ``geoseg mine``, see
  :mod:`geoseg.tile.hardneg`): with a mined layer, the hard quota is filled *mined first*: up to
  ``n_hard`` negatives touching mined polygons (drawn at random), kind ``mined_negative``; the rest
  of the quota (kind ``hard_negative``) comes from the look-alike tiles when a look-alike layer is
  given, else from the spectral rule. So the hard-negative share, and with it the negative budget,
  stays what the options say; a model's own mistakes take precedence over the user's look-alikes
  because they are what this model gets wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import shapely

KINDS = ("positive", "mined_negative", "hard_negative", "easy_negative")
MIN_BLOCKS = 10  # auto block size: at least this many blocks holding positives, where the data allows
SPLIT_RULE = (
    "square blocks of val_block_tiles x tile_size pixels of the first scene, anchored at its top-left corner "
    "(or, with a val-area layer, the tiles intersecting its polygons); a tile belongs to the block holding its "
    "centre; blocks go to val so that the val share of positive tiles is closest to val_fraction; train tiles "
    "closer than val_gap + 1 strides (Chebyshev, between tile origins) to a val tile are dropped"
)
HARD_NEGATIVE_STATISTIC = (
    "Euclidean distance, in z-scored per-band [mean, std] of valid pixels, from a negative tile to the "
    "nearest positive tile; smallest first"
)

HARD_NEGATIVE_QUOTA = (
    "hard = round(hard_negative_share x negatives) per split; filled first with negatives touching geoseg-mined "
    "false positives (kind mined_negative, random), then look-alike tiles (random) or, without a look-alike "
    "layer, the spectrally closest negatives (kind hard_negative)"
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
    pos = is_positive(df["label_fraction"], df["unusable_fraction"], min_positive_fraction, max_unusable_fraction)
    neg = usable & (df["label_fraction"] == 0)
    kind = pd.Series([None] * len(df), index=df.index, dtype=object)
    kind[pos] = "positive"
    kind[neg] = "negative"
    return kind


def is_positive(
    label_fraction: Any, unusable_fraction: Any, min_positive_fraction: float, max_unusable_fraction: float
) -> Any:
    """The positive rule of :func:`candidate_kind` on arrays (or Series) of scan fractions (also used by the scan)."""
    usable = unusable_fraction <= max_unusable_fraction + 1e-12
    return usable & (label_fraction > 0) & (label_fraction >= min_positive_fraction - 1e-12)


def default_gap(tile_size: int, stride: int) -> int:
    """Smallest ``--val-gap`` (in strides) that keeps train and val pixels disjoint: ``ceil(T / S) - 1``.

    Two tiles ``k`` strides apart share pixels iff ``k * S < T``; so 0 when ``S == T``.
    """
    return -(-tile_size // stride) - 1


def auto_block_tiles(
    df: pd.DataFrame,
    kind: pd.Series,
    *,
    val_fraction: float,
    tile_extent: float,
    origin: tuple[float, float],
    min_tiles: int = 2,
) -> int:
    """``--val-block-tiles auto``: the largest block edge ``n >= min_tiles`` (in tiles of ``tile_extent``
    common-CRS units) whose grid puts the positive tiles' centres in at least ``max(MIN_BLOCKS, ceil(2 / f))``
    blocks (``f`` = ``val_fraction``: about two val blocks or more); ``min_tiles`` when even that is too few.

    Counted on positive candidates (all usable candidates when there is none), so coverage and nodata
    shrink the blocks, and clustered labels give smaller blocks than spread ones.
    """
    if val_fraction <= 0 or len(df) == 0:
        return min_tiles
    use = (kind == "positive").to_numpy()
    if not use.any():
        use = kind.notna().to_numpy()
    if not use.any():
        return min_tiles
    cx = ((df["x0"].to_numpy(float) + df["x1"].to_numpy(float)) / 2)[use] - origin[0]
    cy = origin[1] - ((df["y0"].to_numpy(float) + df["y1"].to_numpy(float)) / 2)[use]
    need = max(MIN_BLOCKS, math.ceil(2 / val_fraction))
    span = max(float(np.ptp(cx)), float(np.ptp(cy))) / tile_extent + 1
    best, n = min_tiles, min_tiles
    while n <= span:
        b = n * tile_extent
        cells = np.unique(np.floor(cx / b).astype(np.int64) * 2**32 + np.floor(cy / b).astype(np.int64))
        if len(cells) < need:
            break
        best, n = n, n + 1
    return best


def _conflicts(df: pd.DataFrame, train: np.ndarray, val: np.ndarray, gap: int, stride_fraction: float) -> np.ndarray:
    """Bool per ``train`` row: some ``val`` row lies closer than ``(gap + 1)`` strides (``stride_fraction``
    tile widths per stride), centre to centre in Chebyshev distance, i.e. the two would share pixels or
    sit inside the gap. Touching at exactly that distance is no conflict. Each tile is grown (or shrunk)
    by half the margin in its own size, so tiles of different pixel sizes compare correctly."""
    out = np.zeros(len(train), bool)
    if len(train) == 0 or len(val) == 0:
        return out
    x0, y0, x1, y1 = (df[k].to_numpy(float) for k in ("x0", "y0", "x1", "y1"))
    w, h = x1 - x0, y1 - y0
    half = 0.5 * (gap + 1) * stride_fraction  # grown half-size as a share of the tile size
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw = np.maximum(half * w - 1e-6 * w, 1e-9 * w)
    hh = np.maximum(half * h - 1e-6 * h, 1e-9 * h)

    def boxes(i: np.ndarray) -> np.ndarray:
        return shapely.box(cx[i] - hw[i], cy[i] - hh[i], cx[i] + hw[i], cy[i] + hh[i])

    hit = shapely.STRtree(boxes(val)).query(boxes(train), predicate="intersects")[0]
    out[np.unique(hit)] = True
    return out


def assign_split(
    df: pd.DataFrame,
    kind: pd.Series,
    *,
    val_fraction: float,
    block_size: float,
    origin: tuple[float, float],
    seed: int,
    gap: int = 0,
    stride_fraction: float = 1.0,
    val_area: np.ndarray | None = None,
    tries: int = 32,
) -> tuple[pd.Series, dict[str, object]]:
    """``train`` / ``val`` per sampled candidate, ``None`` for train tiles dropped in the gap (and, once a
    val split exists, for candidates that are never sampled); see the module docstring.

    ``origin`` is (left, top) of the block grid in the common CRS; blocks count right and down.
    ``gap`` is in strides of the tile grid, ``stride_fraction`` = stride / tile size. ``val_area``: bool
    per candidate; when given, exactly those candidates are val (no blocks, ``val_fraction`` unused).
    Blocks: ``tries`` seeded random orders of the blocks, each filled greedily (a block joins val when
    that brings the val positives closer to ``val_fraction`` of all positives, one block always stays
    train; blocks without positives join val with probability ``val_fraction``); the order whose val
    share of positives, after the gap drop, is closest to ``val_fraction`` wins. Same seed, same split.
    """
    n = len(df)
    split = pd.Series(["train"] * n, index=df.index, dtype=object)
    info: dict[str, object] = {"block_size": block_size, "val_blocks": 0, "dropped_at_border": 0, "val_gap": gap}
    sampled = kind.notna().to_numpy()
    is_pos = (kind == "positive").to_numpy()

    def finish(is_val: np.ndarray) -> np.ndarray:
        keep = np.ones(n, bool)
        tr = np.flatnonzero(sampled & ~is_val)
        keep[tr[_conflicts(df, tr, np.flatnonzero(sampled & is_val), gap, stride_fraction)]] = False
        return keep

    def share(is_val: np.ndarray, keep: np.ndarray) -> float | None:
        tot = int((is_pos & keep).sum())
        return float((is_pos & keep & is_val).sum() / tot) if tot else None

    if val_area is not None:
        is_val = np.asarray(val_area, bool)
        info.update({"block_size": None, "val_area": True})
    elif val_fraction <= 0 or n == 0:
        info["val_share_positives"] = 0.0 if is_pos.any() else None
        return split, info
    else:
        x0, y0, x1, y1 = (df[k].to_numpy(float) for k in ("x0", "y0", "x1", "y1"))
        cbx = np.floor(((x0 + x1) / 2 - origin[0]) / block_size).astype(np.int64)
        cby = np.floor((origin[1] - (y0 + y1) / 2) / block_size).astype(np.int64)
        cells = list(zip(cbx.tolist(), cby.tolist(), strict=True))
        blocks = sorted({cells[i] for i in np.flatnonzero(sampled)})
        bid = {b: j for j, b in enumerate(blocks)}
        cell_id = np.array([bid.get(c, -1) for c in cells], np.int64)
        weight = np.bincount(cell_id[is_pos & sampled], minlength=len(blocks))
        total = int(weight.sum())
        rng = np.random.default_rng([seed, 1])
        target = val_fraction * total
        best: tuple[float, np.ndarray, int] | None = None
        for _round in range(3):  # the gap drops train positives: aim again at val_fraction of what is left
            options = [_greedy(weight, target, val_fraction, rng) for _ in range(tries)]
            round_best: tuple[float, int] | None = None
            for _, chosen in sorted(options, key=lambda o: o[0])[:4]:  # exact share for the best few
                is_val = np.zeros(n, bool)
                is_val[cell_id >= 0] = chosen[cell_id[cell_id >= 0]]
                keep = finish(is_val)
                s = share(is_val, keep)
                err = abs(s - val_fraction) if s is not None else math.inf
                if best is None or err < best[0]:
                    best = (err, is_val, int(chosen.sum()))
                lost = int((is_pos & sampled & ~keep).sum())
                if round_best is None or err < round_best[0]:
                    round_best = (err, lost)
            assert round_best is not None
            new_target = val_fraction * (total - round_best[1])
            if new_target == target:
                break
            target = new_target
        assert best is not None
        _, is_val, n_val_blocks = best
        info.update({"val_blocks": n_val_blocks, "blocks": len(blocks)})
    keep = finish(is_val)
    split[:] = np.where(is_val, "val", "train")
    split[~keep | ~sampled] = None
    info["dropped_at_border"] = int((~keep & sampled).sum())
    info["val_share_positives"] = share(is_val & sampled, keep)
    return split, info


def split_tiles(
    df: pd.DataFrame,
    kind: pd.Series,
    *,
    tile_size: int,
    stride: int,
    res: float,
    origin: tuple[float, float],
    val_fraction: float,
    val_block_tiles: int | str = "auto",
    val_gap: int | None = None,
    seed: int = 0,
    val_area: np.ndarray | None = None,
) -> tuple[pd.Series, dict[str, object]]:
    """The split of ``geoseg tile`` from its options: resolves the default gap (:func:`default_gap`) and
    ``auto`` blocks (:func:`auto_block_tiles`, at least ``max(2, ceil(2 (gap + 1) S / T))`` tiles: twice
    the gap), then :func:`assign_split`. ``res``: common-CRS units per pixel of the first scene; the
    info holds the resolved ``val_block_tiles`` (None with ``val_area``) and ``val_gap``."""
    gap = default_gap(tile_size, stride) if val_gap is None else int(val_gap)
    extent = tile_size * res
    if val_area is not None:
        block_tiles = None
    elif val_block_tiles == "auto":
        min_tiles = max(2, math.ceil(2 * (gap + 1) * stride / tile_size))
        block_tiles = auto_block_tiles(
            df, kind, val_fraction=val_fraction, tile_extent=extent, origin=origin, min_tiles=min_tiles
        )
    else:
        block_tiles = int(val_block_tiles)
    split, info = assign_split(
        df,
        kind,
        val_fraction=val_fraction,
        block_size=block_size_for(tile_size, res, block_tiles or 1),
        origin=origin,
        seed=seed,
        gap=gap,
        stride_fraction=stride / tile_size,
        val_area=val_area,
    )
    info["val_block_tiles"] = block_tiles
    return split, info


def _greedy(
    weight: np.ndarray, target: float, val_fraction: float, rng: np.random.Generator
) -> tuple[float, np.ndarray]:
    """One random block order filled greedily towards ``target`` val positives: ``(|error|, chosen)``."""
    chosen = np.zeros(len(weight), bool)
    acc = 0
    for j in rng.permutation(len(weight)):
        if chosen.sum() + 1 >= len(weight):
            break  # keep at least one train block
        if weight[j] == 0:
            chosen[j] = rng.random() < val_fraction
        elif abs(acc + weight[j] - target) < abs(acc - target):
            chosen[j] = True
            acc += weight[j]
    return abs(acc - target), chosen


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
    use_mined: bool = False,
) -> Selection:
    """Pick positives, hard and easy negatives per split (see module docstring)."""
    feat_cols = [c for c in df.columns if c.startswith("f") and c[1:].isdigit()]
    feats = df[feat_cols].to_numpy(float) if feat_cols else np.zeros((len(df), 0))
    rng = np.random.default_rng([seed, 2])
    order_cols = ["scene", "row_off", "col_off"]
    kinds = [k for k in KINDS if use_mined or k != "mined_negative"]  # (no mined layer: the counts of before)
    chosen: dict[str, list[int]] = {k: [] for k in kinds}
    requested = dict.fromkeys(kinds, 0)
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
        requested["easy_negative"] += n_easy
        chosen["positive"] += pos.tolist()
        if use_mined:  # mined first within the hard quota (module docstring)
            is_mined = df["mined"].to_numpy(bool)[neg]
            mined = rng.permutation(neg[is_mined])[:n_hard]
            neg = np.setdiff1d(neg, mined, assume_unique=True)
            neg = neg[np.lexsort([df[c].to_numpy()[neg] for c in reversed(order_cols)])]
            chosen["mined_negative"] += mined.tolist()
            requested["mined_negative"] += len(mined)
            n_hard -= len(mined)
        requested["hard_negative"] += n_hard
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
    for k in kinds:
        sub = df.loc[df.index[chosen[k]]].copy()
        sub["kind"] = k
        sub["split"] = split.loc[sub.index].to_numpy()
        parts.append(sub.sort_values(order_cols, kind="stable"))
    tiles = pd.concat(parts, ignore_index=True) if parts else df.iloc[:0]
    realised = {k: len(chosen[k]) for k in kinds}
    by_split = {sp: int((tiles["split"] == sp).sum()) for sp in ("train", "val")}
    return Selection(tiles=tiles, requested=requested, realised=realised, by_split=by_split, split_info={})


def block_size_for(tile_size: int, res: float, val_block_tiles: int) -> float:
    """Block edge in common-CRS units: ``val_block_tiles`` tiles of the first scene."""
    return float(val_block_tiles * tile_size * res)
