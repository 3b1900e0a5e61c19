"""Unusable ``--out`` locations are one-line errors before any work, in under a second (issue 13, item 5)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import geoseg.predict.run
import geoseg.tile.run
import geoseg.train.run
from geoseg.cli import main

_WARM = (geoseg.tile.run, geoseg.train.run, geoseg.predict.run)  # imported: time the check, not the imports


def _cmd(stage: str, tmp: Path, out: str) -> list[str]:
    if stage == "tile":
        return ["tile", str(tmp / "scene.tif"), "--labels", str(tmp / "labels.gpkg"), "--out", out]
    if stage == "train":
        return ["train", str(tmp / "data"), "--out", out]
    return ["predict", str(tmp / "scene.tif"), "-m", str(tmp / "run"), "--bbox", "0,0,1,1", "--out", out]


@pytest.mark.parametrize("stage", ["tile", "train", "predict"])
@pytest.mark.parametrize(
    ("where", "needle"),
    [("file", "exists and is not a folder"), ("under-file", "is a file, not a folder"), ("proc", "not writable")],
)
def test_bad_out_is_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stage: str, where: str, needle: str
) -> None:
    f = tmp_path / "taken"
    f.write_text("a file")
    out = {"file": str(f), "under-file": str(f / "out"), "proc": "/proc/geoseg-no/out"}[where]
    capsys.readouterr()
    t0 = time.perf_counter()
    rc = main(_cmd(stage, tmp_path, out))
    secs = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith(f"geoseg: error: --out {out}:") and needle in err, err
    assert secs < 1.0, secs
    assert f.read_text() == "a file" and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_pipeline_into_a_locked_out_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`geoseg run` holds OUT's lock too: a second pipeline into it stops at once, naming the holder."""
    import os

    from geoseg.io.lock import output_lock

    pipeline = Path(__file__).resolve().parents[2] / "pipelines" / "sample_aoi.yaml"
    out = tmp_path / "run"
    with output_lock(out):  # stands in for a pipeline that is running
        capsys.readouterr()
        t0 = time.perf_counter()
        rc = main(["run", str(pipeline), "--out", str(out)])
        secs = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert rc == 2 and secs < 5.0, secs
    assert len(err.splitlines()) == 1 and "in use by another geoseg run" in err and f"pid {os.getpid()}" in err, err
    assert not out.exists()  # nothing was written
