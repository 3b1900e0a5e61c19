"""The tile dataset (``tiles.zarr`` + ``tiles.gpkg`` + ``dataset.json``) as torch datasets and samplers.

:func:`read_dataset` validates a dataset directory and returns its metadata (no pixels read).
:class:`TileDataset` reads one tile per ``__getitem__`` from ``tiles.zarr`` -- the zarr group is opened lazily in
whichever process first reads (each DataLoader worker opens its own handle), so memory is bounded by
``batch_size x prefetch x tile`` whatever the dataset size. Images of any dtype are converted to float32 and
normalised with the dataset's per-band statistics, ``(x - mean) / std`` (never a fixed /255).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from geoseg.classes import ClassTable
from geoseg.config import read_json
from geoseg.errors import InputError, InputNotFoundError, first_line

KINDS = ("positive", "mined_negative", "hard_negative", "easy_negative")  # tile kinds (geoseg.tile.sampling)


@dataclass(frozen=True)
class DatasetInfo:
    """What training needs from a tile dataset directory (``info`` is the full ``dataset.json``)."""

    path: Path
    info: dict[str, Any]
    classes: list[dict[str, Any]]
    num_classes: int
    boundary_class: int | None
    ignore_index: int
    in_channels: int
    tile_size: int
    dtype: str
    band_names: list[str]
    mean: np.ndarray
    std: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray
    train_kinds: list[str] = field(default_factory=list)
    val_offsets: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))  # (scene code, row, col)

    @property
    def zarr_path(self) -> Path:
        return self.path / "tiles.zarr"


def _classes(info: dict[str, Any], source: Path) -> tuple[list[dict[str, Any]], int, int | None]:
    raw = info.get("classes")
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{source}: dataset.json has no 'classes' list; re-run geoseg tile")
    table = ClassTable.from_dataset_json(info)
    return table.to_json(), table.num_classes, table.boundary


def read_dataset(path: str | Path) -> DatasetInfo:
    """Validate ``path`` as a tile dataset and read its metadata; one-line :class:`InputError` otherwise."""
    import pyogrio
    import zarr

    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise InputNotFoundError(f"{path}: dataset directory not found; run geoseg tile first")
    for name in ("dataset.json", "tiles.zarr", "tiles.gpkg"):
        if not (path / name).exists():
            raise InputNotFoundError(f"{path}: not a tile dataset ({name} missing); run geoseg tile first")
    info = read_json(path / "dataset.json", what="dataset.json")
    classes, num_classes, boundary = _classes(info, path / "dataset.json")
    ignore_index = int(info.get("ignore_index", 255))
    try:
        group = zarr.open_group(str(path / "tiles.zarr"), mode="r")
        images, masks = group["images"], group["masks"]
    except Exception as e:
        raise InputError(f"{path / 'tiles.zarr'}: unreadable ({first_line(e, 160)}); re-run geoseg tile") from None
    if not (isinstance(images, zarr.Array) and isinstance(masks, zarr.Array)):
        raise InputError(f"{path / 'tiles.zarr'}: 'images' and 'masks' must be arrays, not groups; re-run geoseg tile")
    if images.ndim != 4 or masks.ndim != 3 or images.shape[0] != masks.shape[0]:
        raise InputError(
            f"{path / 'tiles.zarr'}: images {images.shape} / masks {masks.shape} do not match the contract"
        )
    n, c, h, w = images.shape
    if n == 0:
        raise InputError(f"{path}: dataset is empty (0 tiles); re-run geoseg tile with labels that overlap the scenes")
    if h != w or masks.shape[1:] != (h, w):
        raise InputError(f"{path / 'tiles.zarr'}: tiles must be square with matching masks, got {images.shape}")
    bands = info.get("bands") or []
    if len(bands) != c:
        raise InputError(
            f"{path / 'dataset.json'}: {len(bands)} band statistics for {c} image bands; re-run geoseg tile"
        )
    mean = np.array([float(b["mean"]) for b in bands], dtype=np.float64)
    std = np.array([float(b["std"]) for b in bands], dtype=np.float64)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise InputError(f"{path / 'dataset.json'}: band statistics are not finite; re-run geoseg tile")
    std = np.where(std > 0, std, 1.0)  # a constant band: shift only
    try:
        df = pyogrio.read_dataframe(path / "tiles.gpkg", layer="tiles", read_geometry=False)
    except Exception as e:
        raise InputError(f"{path / 'tiles.gpkg'}: unreadable tiles layer ({first_line(e, 160)})") from None
    for col in ("index", "split", "kind"):
        if col not in df.columns:
            raise InputError(f"{path / 'tiles.gpkg'}: column {col!r} missing from layer 'tiles'; re-run geoseg tile")
    rows = df["index"].to_numpy(dtype=np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise InputError(f"{path / 'tiles.gpkg'}: tile index out of range for {n} tiles in tiles.zarr")
    split = df["split"].astype(str).to_numpy()
    train = split == "train"
    val = split == "val"
    if not train.any():
        raise InputError(f"{path / 'tiles.gpkg'}: no tiles with split 'train'; re-run geoseg tile")
    return DatasetInfo(
        path=path,
        info=info,
        classes=classes,
        num_classes=num_classes,
        boundary_class=boundary,
        ignore_index=ignore_index,
        in_channels=int(c),
        tile_size=int(h),
        dtype=str(images.dtype),
        band_names=[str(b.get("name", f"band{i + 1}")) for i, b in enumerate(bands)],
        mean=mean,
        std=std,
        train_rows=rows[train],
        val_rows=rows[val],
        train_kinds=df["kind"].astype(str).to_numpy()[train].tolist(),
        val_offsets=_offsets(df)[val],
    )


def _offsets(df: Any) -> np.ndarray:
    """(N, 3) int64: scene code, row_off, col_off of each tile (zeros when tiles.gpkg lacks them)."""
    if not {"scene", "row_off", "col_off"} <= set(df.columns):
        return np.zeros((len(df), 3), np.int64)
    codes = np.unique(df["scene"].astype(str).to_numpy(), return_inverse=True)[1]
    return np.column_stack([codes, df["row_off"].to_numpy(np.int64), df["col_off"].to_numpy(np.int64)])


class TileDataset(Dataset):
    """``(image float32 (C, T, T) normalised, mask uint8 (T, T))`` for zarr rows ``rows``.

    Picklable for DataLoader workers (the zarr handle is dropped and reopened per process). ``transform`` is an
    albumentations transform taking ``image`` (H, W, C) float32 and ``mask``; call :meth:`reseed` per worker.
    Masks with values other than ``0..num_classes-1`` or ``ignore_index`` raise :class:`InputError`.
    """

    def __init__(
        self,
        zarr_path: str | Path,
        rows: Sequence[int] | np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        *,
        num_classes: int,
        ignore_index: int = 255,
        transform: Any | None = None,
        nodata: float | None = None,
    ) -> None:
        self.zarr_path = str(zarr_path)
        self.nodata = nodata
        self.rows = np.asarray(rows, dtype=np.int64)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        self.scale = (1.0 / np.asarray(std, dtype=np.float32)).reshape(-1, 1, 1)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.transform = transform
        self._arrays: tuple[Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def _open(self) -> tuple[Any, Any]:
        if self._arrays is None:
            import zarr

            g = zarr.open_group(self.zarr_path, mode="r")
            self._arrays = (g["images"], g["masks"])
        return self._arrays

    def worker_start(self, seed: int) -> None:
        """Call first in a DataLoader worker: drop handles inherited through fork, reseed augmentation."""
        self._arrays = None
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Give this process's augmentation its own random stream."""
        if self.transform is not None and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(int(seed) % (2**32))

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw ``(image (C,T,T) scene dtype, mask (T,T) uint8)`` of item ``i`` (no normalisation)."""
        images, masks = self._open()
        r = int(self.rows[i])
        return np.asarray(images[r]), np.asarray(masks[r], dtype=np.uint8)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``i``, or ``(i, seed)`` from a :class:`TileSampler` with ``item_seeds``: the augmentation is then
        reseeded with ``seed`` first, so it depends only on the draw, not on the worker or a resume."""
        i, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:
            self.reseed(seed)
        raw, mask = self.read(i)
        bad = (mask >= self.num_classes) & (mask != self.ignore_index)
        if bad.any():
            raise InputError(
                f"{self.zarr_path}: mask of tile {int(self.rows[i])} has class id {int(mask[bad][0])}, "
                f"but dataset.json lists {self.num_classes} classes; re-run geoseg tile"
            )
        img = (raw.astype(np.float32) - self.mean) * self.scale
        # where the scene has no data (NaN or its nodata value) the network sees 0 = the band mean,
        # exactly what predict feeds it there (geoseg.predict.run.make_reader)
        invalid = ~np.isfinite(img)
        if self.nodata is not None and np.isfinite(self.nodata):
            invalid |= raw == self.nodata
        if invalid.any():
            img[invalid] = 0.0
        if self.transform is not None:
            out = self.transform(image=np.ascontiguousarray(img.transpose(1, 2, 0)), mask=mask)
            img = out["image"].transpose(2, 0, 1)
            mask = out["mask"]
        return torch.from_numpy(np.ascontiguousarray(img)), torch.from_numpy(np.ascontiguousarray(mask))


def kind_weights(kinds: Sequence[str]) -> np.ndarray:
    """Sampling weight per tile so that each ``kind`` present is drawn equally often (weights sum to 1)."""
    kinds = list(kinds)
    counts = {k: kinds.count(k) for k in set(kinds)}
    w = np.array([1.0 / (len(counts) * counts[k]) for k in kinds], dtype=np.float64)
    return w / w.sum()


class TileSampler(Sampler[int]):
    """Per-epoch shuffled (or kind-weighted) indices, sharded over DDP ranks; call :meth:`set_epoch`.

    Every epoch draws ``num_samples`` indices in total (default: the dataset size) from a generator seeded with
    ``seed + epoch`` -- identical on all ranks -- and rank ``r`` of ``world`` takes positions ``r::world`` (padded
    by wrapping to a multiple of ``world``, as ``DistributedSampler`` does). Without ``weights`` the draw is a
    permutation (no repeats); with ``weights`` it is with replacement (``WeightedRandomSampler`` semantics).
    ``shuffle=False`` gives rows in order (validation; no padding, ranks take disjoint slices).
    With ``item_seeds`` every draw is ``(index, seed)``, the seed a function of ``(seed, epoch, position)`` only,
    for :meth:`TileDataset.__getitem__` to reseed the augmentation: identical whatever the DataLoader workers
    and whether the run was resumed.
    """

    def __init__(
        self,
        n: int,
        *,
        shuffle: bool = True,
        weights: np.ndarray | None = None,
        num_samples: int | None = None,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        item_seeds: bool = False,
    ) -> None:
        self.n = n
        self.shuffle = shuffle
        self.item_seeds = item_seeds
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.total = int(num_samples) if num_samples else n
        if shuffle and self.weights is None:
            self.total = min(self.total, n)
        self.rank, self.world, self.seed = rank, world, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))[self.rank :: self.world]
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is not None:
            idx = torch.multinomial(self.weights, self.total, replacement=True, generator=g).tolist()
        else:
            idx = torch.randperm(self.n, generator=g)[: self.total].tolist()
        padded = math.ceil(len(idx) / self.world) * self.world
        idx = (idx * (padded // max(len(idx), 1) + 1))[:padded]
        return idx[self.rank :: self.world]

    def _seeds(self, count: int) -> list[int]:
        ss = np.random.SeedSequence([self.seed, self.epoch, 1])
        seeds = np.random.default_rng(ss).integers(0, 2**32, size=count * self.world, dtype=np.uint64)
        return [int(v) for v in seeds[self.rank :: self.world][:count]]

    def __iter__(self) -> Iterator[Any]:
        idx = self._indices()
        if not self.item_seeds:
            return iter(idx)
        return iter(zip(idx, self._seeds(len(idx)), strict=True))

    def __len__(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, self.n, self.world))
        return math.ceil(self.total / self.world)
