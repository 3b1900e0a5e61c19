"""A resumed training run ends with the same weights, bit for bit, as an uninterrupted one (CPU)."""

from __future__ import annotations

import _thread
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from geoseg.train.dataset import TileSampler
from geoseg.train.run import CHECKPOINT, TrainConfig, run

FAST = {"batch_size": 2, "progress": False, "weights": "none", "max_steps_per_epoch": 2, "calibrate": False}


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)["model"]


def _interrupt_after_first_checkpoint(out: Path) -> threading.Thread:
    """Ctrl-C (KeyboardInterrupt in the main thread) as soon as the first epoch's checkpoint exists."""

    def watch() -> None:
        deadline = time.time() + 300
        while not (out / CHECKPOINT).exists() and time.time() < deadline:
            time.sleep(0.01)
        _thread.interrupt_main()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.slow  # ~25 s on 2 busy cores
@pytest.mark.parametrize("workers", [0, 1])
def test_resume_equals_uninterrupted(make_dataset: Callable[..., Path], tmp_path: Path, workers: int) -> None:
    data = make_dataset(n_train=4, n_val=2, tile=32)
    run(TrainConfig(dataset=data, out=tmp_path / "straight", epochs=2, workers=workers, **FAST))
    cut = tmp_path / "resumed"
    watcher = _interrupt_after_first_checkpoint(cut)
    with pytest.raises(KeyboardInterrupt):
        run(TrainConfig(dataset=data, out=cut, epochs=2, workers=workers, **FAST))
    watcher.join()
    assert torch.load(cut / CHECKPOINT, map_location="cpu", weights_only=True)["epoch"] < 2  # really cut short
    torch.manual_seed(123)  # whatever the process did in between must not matter
    run(TrainConfig(dataset=data, out=cut, epochs=2, workers=workers, resume=True, **FAST))
    a, b = _weights(tmp_path / "straight"), _weights(cut)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_item_seeds_depend_on_epoch_and_position_only() -> None:
    s = TileSampler(10, seed=3, item_seeds=True)
    s.set_epoch(1)
    first = list(s)
    assert len({seed for _, seed in first}) == 10 and sorted(i for i, _ in first) == list(range(10))
    t = TileSampler(10, seed=3, item_seeds=True)
    t.set_epoch(1)
    assert list(t) == first
    t.set_epoch(2)
    assert [seed for _, seed in t] != [seed for _, seed in first]
    shards = [list(TileSampler(10, seed=3, item_seeds=True, rank=r, world=2)) for r in range(2)]
    for sh in shards:
        assert len(sh) == 5
