"""Progress on a non-terminal stderr: a few plain lines, not bar frames; ``-q`` silences it."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from geoseg.predict.run import PredictConfig, run
from geoseg.progress import LineProgress, set_quiet
from geoseg.testing import write_scene, xy_image


def test_predict_progress_off_a_terminal_is_a_few_lines(
    tmp_path: Path, identity_model: Path, identity, capfd: pytest.CaptureFixture[str]
) -> None:
    scene = tmp_path / "s.tif"
    write_scene(scene, xy_image(240, 240, 3, "uint16"))  # tile 32, overlap 8: 10 x 10 windows
    cfg = PredictConfig(scenes=(str(scene),), model=str(identity_model), out=str(tmp_path / "o"),
                        bbox="-180,-90,180,90", overlap=8, progress=True, vectorize=False, batch_size=1)  # fmt: skip
    res = run(cfg, predict_fn=identity)
    assert res.scenes[0].windows == 100
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("predict:")]
    assert "\r" not in err
    assert 2 <= len(lines) and len(err.splitlines()) < 30
    assert re.fullmatch(r"predict: 100/100 windows, [\d.e+]+ windows/s, \S+ elapsed", lines[-1])
    assert any(re.match(r"predict: \d+/100 windows, .*, eta \d+s", ln) for ln in lines[:-1])

    set_quiet(True)
    try:
        run(cfg.__class__(**{**cfg.__dict__, "out": str(tmp_path / "q")}), predict_fn=identity)
    finally:
        set_quiet(False)
    assert "predict:" not in capfd.readouterr().err


def test_line_progress_every_10_percent_or_interval() -> None:
    t = [0.0]
    buf = io.StringIO()
    bar = LineProgress(total=1000, desc="tile", unit="tiles", file=buf, interval=5.0, clock=lambda: t[0])
    for _ in range(1000):
        t[0] += 0.001  # 1 s in all: only the 10 % steps print
        bar.update(1)
    bar.close()
    assert len(buf.getvalue().splitlines()) == 10
    buf2 = io.StringIO()
    slow = LineProgress(total=None, desc="scan", unit="chunks", file=buf2, interval=5.0, clock=lambda: t[0])
    for _ in range(60):
        t[0] += 1.0  # 60 s, no total: a line when 5 s (or a tenth of the elapsed time) have passed
        slow.update(1)
    slow.close()
    lines = buf2.getvalue().splitlines()
    assert 6 <= len(lines) <= 13 and lines[-1].startswith("scan: 60 chunks, 1 chunks/s")


def test_line_progress_supports_the_tqdm_calls_geoseg_makes() -> None:
    """Every bar method a stage calls exists off a terminal too (train's epoch bar uses set_postfix_str)."""
    buf = io.StringIO()
    bar = LineProgress(total=4, desc="epoch 1/2", unit="batch", file=buf, interval=1e9)
    for _ in range(4):
        bar.update(1)
        bar.set_postfix(loss="0.5", refresh=False)
    bar.set_postfix_str("loss=0.5 validating", refresh=True)
    bar.set_postfix(loss="0.5", val_mIoU="0.9", refresh=True)
    bar.set_description("epoch 1/2")
    bar.refresh()
    bar.close()
    lines = buf.getvalue().splitlines()
    assert lines[-1].startswith("epoch 1/2: 4/4 batch") and "val_mIoU=0.9" in lines[-1]  # the scores get a line
    assert len(lines) <= 6


@pytest.mark.slow  # a 1040² scene (vectorize shows a bar from 2 x 2 blocks of 1024²): ~25 s on 2 cores
def test_no_progress_also_silences_the_vectorize_bar(
    tmp_path: Path, identity_model: Path, identity, capfd: pytest.CaptureFixture[str]
) -> None:
    scene = tmp_path / "s.tif"
    write_scene(scene, (xy_image(1040, 1040, 3, "uint16") % 2).astype("uint16"))  # 2 x 2 vectorize blocks
    base = {"scenes": (str(scene),), "model": str(identity_model), "bbox": "-180,-90,180,90", "overlap": 0,
            "batch_size": 64, "vectorize": True}  # fmt: skip
    run(PredictConfig(out=str(tmp_path / "on"), progress=True, **base), predict_fn=identity)
    assert "vectorize:" in capfd.readouterr().err  # the bar exists (off a terminal: lines)
    run(PredictConfig(out=str(tmp_path / "off"), progress=False, **base), predict_fn=identity)
    err = capfd.readouterr().err
    assert "vectorize:" not in err and "predict:" not in err
