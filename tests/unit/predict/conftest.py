"""Fixtures for predict: tiny real model directories (smp Unet, random weights) and scenes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from geoseg.train.model import build_model, save_model

COLORS = ["#000000", "#e31a1c", "#1f78b4", "#33a02c", "#ff7f00"]


def model_config(in_ch: int, k: int, tile: int, mean: float = 0.0, std: float = 1.0) -> dict[str, Any]:
    return {
        "arch": "unet",
        "encoder": "tu-tf_efficientnet_lite0",
        "in_channels": in_ch,
        "num_classes": k,
        "classes": [{"id": i, "name": "background" if i == 0 else f"class{i}", "color": COLORS[i]} for i in range(k)],
        "boundary_class": None,
        "ignore_index": 255,
        "bands": [f"band{i + 1}" for i in range(in_ch)],
        "normalisation": {"mean": [mean] * in_ch, "std": [std] * in_ch},
        "tile_size": tile,
        "resolution_m": 0.5,
        "dataset": "synthetic",
        "date_range": None,
    }


def make_model_dir(path: Path, in_ch: int = 3, k: int = 3, tile: int = 32, **norm: float) -> Path:
    """A real, loadable geoseg model directory with a tiny smp Unet (random weights, seed 0)."""
    torch.manual_seed(0)
    net = build_model("unet", "tu-tf_efficientnet_lite0", in_ch, k)
    return save_model(path, net, model_config(in_ch, k, tile, **norm))


@pytest.fixture(scope="session")
def identity_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model dir with K = C = 3, mean 0, std 1, tile 32: use with ``predict_fn=identity``."""
    return make_model_dir(tmp_path_factory.mktemp("models") / "identity", 3, 3, 32)


@pytest.fixture(scope="session")
def real_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model dir: 3 bands (uint16 scale: mean 100, std 50) -> 2 classes, tile 64."""
    return make_model_dir(tmp_path_factory.mktemp("models") / "real", 3, 2, 64, mean=100.0, std=50.0)


def _identity(x: torch.Tensor) -> torch.Tensor:
    """The identity "model": probabilities = normalised input (K = C)."""
    return x


class Interrupting:
    """``predict_fn`` that behaves like identity but raises after ``n`` batches (simulated crash)."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.n:
            raise RuntimeError("simulated crash")
        return x


class Counting:
    def __init__(self) -> None:
        self.windows = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return x


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)


def _read_all(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(), {"crs": ds.crs, "transform": ds.transform, "width": ds.width, "height": ds.height,
                           "nodata": ds.nodata, "tags": ds.tags(), "scales": ds.scales, "dtype": ds.dtypes[0],
                           "layout": ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"), "overviews": ds.overviews(1),
                           "descriptions": ds.descriptions}  # fmt: skip


@pytest.fixture
def identity() -> Callable[[torch.Tensor], torch.Tensor]:
    return _identity


@pytest.fixture
def interrupting() -> type[Interrupting]:
    return Interrupting


@pytest.fixture
def counting() -> type[Counting]:
    return Counting


@pytest.fixture
def read_all() -> Callable[[Path], tuple[np.ndarray, dict[str, Any]]]:
    return _read_all


@pytest.fixture(scope="session")
def make_model() -> Callable[..., Path]:
    return make_model_dir
