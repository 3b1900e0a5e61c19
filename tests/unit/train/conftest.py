"""Fixtures: a tiny tile dataset written directly in the contract format (see geoseg.train.synthetic)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from geoseg.train.synthetic import write_tile_dataset


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_dataset(name="data", **write_tile_dataset options) -> Path``."""

    def _make(name: str = "data", **kw: Any) -> Path:
        return write_tile_dataset(tmp_path / name, **kw)

    return _make


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
