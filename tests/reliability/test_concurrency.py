"""Two runs into one output folder: the second is refused at once, the first is unharmed (issue 13)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

import geoseg.predict.run
from geoseg.cli import main
from geoseg.io.lock import LOCK_NAME
from geoseg.testing import write_random_model, write_scene, xy_image

pytestmark = pytest.mark.slow
_WARM = geoseg.predict.run  # imported here: the refusal is timed, not the imports of the in-process run


def _arrays(out: Path) -> dict[str, np.ndarray]:
    res = {}
    for name in ("probabilities.tif", "classes.tif"):
        with rasterio.open(out / name) as ds:
            res[name] = ds.read()
    return res


def test_concurrent_predicts_into_one_out(tmp_path: Path, geoseg_exe: str, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_random_model(tmp_path / "run" / "model", head_gain=20.0)
    scene = tmp_path / "scene.tif"
    grid = write_scene(scene, (xy_image(384, 384, 3, "uint16") % 200).astype("uint16"), date=dt.date(2024, 5, 6))
    b = grid.bounds
    bbox = f"{b[0]},{b[1]},{b[2]},{b[3]},{grid.crs.to_string()}"

    def args(out: Path, *extra: str) -> list[str]:
        return ["predict", str(scene), "-m", str(model), "--bbox", bbox, "--out", str(out), "--device", "cpu",
                "--min-area", "0", "--no-progress", *extra]  # fmt: skip

    solo = tmp_path / "solo"
    p = subprocess.run([geoseg_exe, *args(solo)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr

    out = tmp_path / "shared"
    first = subprocess.Popen([geoseg_exe, *args(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = out / LOCK_NAME
        deadline = time.monotonic() + 120
        while True:  # the first run holds the lock (its pid is written in it)
            try:
                if json.loads(lock.read_text()).get("pid") == first.pid:
                    break
            except (OSError, ValueError):
                pass
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "the first predict never took the lock"
            time.sleep(0.02)
        capsys.readouterr()
        t0 = time.perf_counter()
        rc = main(args(out, "--blend", "uniform"))  # the second run, same folder, other options
        refused_s = time.perf_counter() - t0
        err = capsys.readouterr().err.strip()
        still_running = first.poll() is None
        _, first_err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert rc == 2 and still_running
    assert refused_s < 1.0, refused_s
    assert len(err.splitlines()) == 1 and "in use by another geoseg run" in err and f"pid {first.pid}" in err, err
    assert "predict" in err  # the other run's command line is named
    assert first.returncode == 0, first_err
    assert json.loads((out / "run.json").read_text())["config"]["blend"] == "hann"
    a, s = _arrays(out), _arrays(solo)
    for name in a:
        assert np.array_equal(a[name], s[name]), name
    assert not lock.exists()
