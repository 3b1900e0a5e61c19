"""Predict outputs do not depend on the torch thread count or on the number of dask worker processes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.predict.run import PredictConfig, run
from geoseg.testing import write_scene, xy_image


def _config(tmp: Path, model: Path, **kw) -> PredictConfig:
    scene = tmp / "scene.tif"
    if not scene.exists():
        write_scene(scene, xy_image(150, 140, 3, "uint16"), crs="EPSG:32636", origin=(500_000.0, 40_000.0), res=0.5)
    base = PredictConfig(scenes=(str(scene),), model=str(model), out=str(tmp / "out"), bbox="-180,-90,180,90",
                         overlap=16, batch_size=3, device="cpu", progress=False, vectorize=False)  # fmt: skip
    return replace(base, **kw)


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_torch_thread_count_does_not_change_float_output(
    tmp_path: Path, real_model: Path, read_all, restore_threads
) -> None:
    outs = []
    for n in (1, 2):
        torch.set_num_threads(n)
        run(_config(tmp_path, real_model, out=str(tmp_path / f"t{n}"), float_output=True))
        outs.append(read_all(tmp_path / f"t{n}" / "probabilities.tif")[0])
    assert np.isfinite(outs[0]).sum() > 10_000
    np.testing.assert_array_equal(outs[0], outs[1])  # float32: any summation-order change would show


@pytest.mark.slow  # starts two worker processes (~50 s on 2 cores)
def test_two_worker_processes_equal_in_process(tmp_path: Path, real_model: Path, read_all, restore_threads) -> None:
    torch.set_num_threads(2)  # in-process with several threads; the dask workers run single-threaded
    run(_config(tmp_path, real_model, out=str(tmp_path / "solo"), float_output=True))
    res = run(_config(tmp_path, real_model, out=str(tmp_path / "dask"), workers=2, float_output=True))
    assert res.scenes[0].bands == 2
    for name in ("probabilities.tif", "classes.tif"):
        one = read_all(tmp_path / "solo" / name)[0]
        two = read_all(tmp_path / "dask" / name)[0]
        np.testing.assert_array_equal(one, two)
    assert np.isfinite(one).sum() > 10_000
