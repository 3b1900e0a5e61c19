"""Predict inputs that run but deserve a warning or a one-line error: nodata scenes, sub-pixel AOIs,
band statistics far from the model's, unreachable schedulers, precise extents in messages."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest

from geoseg.errors import ConfigError, NoOverlapError
from geoseg.predict.run import PredictConfig, run
from geoseg.testing import write_scene

N = 64  # scene size (px); res 0.5 m, origin (500000, 40000) in EPSG:32636


def _scene(tmp: Path, data: np.ndarray, name: str = "s.tif", **kw) -> Path:
    path = tmp / name
    write_scene(path, data, crs="EPSG:32636", origin=(500_000.0, 40_000.0), res=0.5, **kw)
    return path


def _normal(seed: int = 0) -> np.ndarray:  # like the real_model's training data: mean 100, std 50
    return np.clip(np.random.default_rng(seed).normal(100, 50, (3, N, N)), 0, 65535).astype("uint16")


def _cfg(tmp: Path, scene: Path, model: Path, **kw) -> PredictConfig:
    opts = {"bbox": "-180,-90,180,90", "device": "cpu", "progress": False, "vectorize": False, **kw}
    return PredictConfig(scenes=(str(scene),), model=str(model), out=str(tmp / "out"), **opts)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_scene_like_training_data_gives_no_warning(tmp_path, real_model, caplog) -> None:
    with caplog.at_level("WARNING", logger="geoseg"):
        run(_cfg(tmp_path, _scene(tmp_path, _normal()), real_model))
    assert _warnings(caplog) == []


def test_band_statistics_far_from_training_warn_naming_the_bands(tmp_path, real_model, caplog) -> None:
    data = _normal()
    data[1] = 20_000  # band 2 on another scale (e.g. a uint16 band into a uint8-trained model)
    with caplog.at_level("WARNING", logger="geoseg"):
        run(_cfg(tmp_path, _scene(tmp_path, data), real_model))
    (msg,) = [m for m in _warnings(caplog) if "training statistics" in m]
    assert "band 2 (median 2e+04" in msg and "band 1" not in msg and "band 3" not in msg


def test_all_nodata_scene_warns(tmp_path, real_model, caplog) -> None:
    scene = _scene(tmp_path, np.zeros((3, N, N), "uint16"), nodata=0)
    with caplog.at_level("WARNING", logger="geoseg"):
        run(_cfg(tmp_path, scene, real_model))
    assert any("no valid pixel inside the AOI" in m and "s.tif" in m for m in _warnings(caplog))


def test_all_nan_scene_warns(tmp_path, real_model, caplog) -> None:
    scene = _scene(tmp_path, np.full((3, N, N), np.nan, "float32"))
    with caplog.at_level("WARNING", logger="geoseg"):
        run(_cfg(tmp_path, scene, real_model))
    assert any("no valid pixel inside the AOI" in m for m in _warnings(caplog))


def test_aoi_overlapping_by_a_quarter_pixel_warns(tmp_path, real_model, caplog) -> None:
    scene = _scene(tmp_path, _normal())
    bbox = "499990,39960,500000.125,40010,EPSG:32636"  # 0.125 m = a quarter of a 0.5 m pixel
    with caplog.at_level("WARNING", logger="geoseg"):
        run(_cfg(tmp_path, scene, real_model, bbox=bbox))
    warned = _warnings(caplog)
    assert any("less than a pixel" in m for m in warned), warned
    assert any("no valid pixel" in m for m in warned)


def test_no_overlap_message_prints_extents_with_all_digits(tmp_path, real_model) -> None:
    path = tmp_path / "far.tif"
    write_scene(path, _normal(), crs="EPSG:32636", origin=(500_000.25, 3_628_543.5), res=0.5)
    with pytest.raises(NoOverlapError) as e:
        run(_cfg(tmp_path, path, real_model, bbox="0,0,10,10,EPSG:32636"))
    assert "3628543.5" in str(e.value) and "500000.25" in str(e.value) and "e+06" not in str(e.value)


def test_unreachable_scheduler_is_a_quick_one_line_error(tmp_path, real_model) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=f"--scheduler tcp://127.0.0.1:{port}: cannot connect") as e:
        run(_cfg(tmp_path, _scene(tmp_path, _normal()), real_model, scheduler=f"tcp://127.0.0.1:{port}"))
    assert time.monotonic() - t0 < 25 and "\n" not in str(e.value)
    assert not (tmp_path / "out" / ".geoseg-predict").exists()
