"""Usage errors and Ctrl-C through the *installed* console script (issue 13, items 0 and 2).

A usage error must print click's short usage message (``Usage: ...`` / ``Error: ...``), exit 2 and
never show a traceback, whichever click the installed typer raises (typer >= 0.25 vendors it).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geoseg.train.synthetic import write_tile_dataset


def _console_script() -> str:
    exe = Path(sys.executable).parent / "geoseg"
    found = str(exe) if exe.exists() else shutil.which("geoseg")
    assert found, "the geoseg console script is not installed (pip install -e .)"
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_console_script(), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("exprot", "foo"), "No such command 'exprot'"),  # unknown command
        (("predict", "--bogus"), "No such option: --bogus"),  # unknown option
        (("tile",), "Missing argument"),  # missing argument
        (("tile", "a.tif", "--out", "o"), "Missing option '--labels'"),  # missing option
        (("tile", "a", "--labels", "l", "--out", "o", "--tile-size", "abc"), "Invalid value for '--tile-size'"),
        (("train", "ds", "--out", "r", "--epochs", "1.5"), "Invalid value for '--epochs'"),  # bad value
    ],
    ids=["unknown-command", "unknown-option", "missing-argument", "missing-option", "bad-int", "bad-epochs"],
)
def test_usage_error_is_short_exit_2_no_traceback(args: tuple[str, ...], needle: str) -> None:
    p = _run(*args)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    assert needle in p.stderr
    assert p.stderr.lstrip().startswith("Usage: geoseg")
    assert len(p.stderr.strip().splitlines()) <= 6


def test_version_and_help_exit_0() -> None:
    v = _run("--version")
    assert v.returncode == 0 and v.stdout.startswith("geoseg ")
    h = _run("predict", "--help")
    assert h.returncode == 0 and "--aoi" in h.stdout and "Traceback" not in h.stderr


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line(tmp_path: Path) -> None:
    """SIGINT during training: exit 130 and 'interrupted', so `geoseg train ... && geoseg predict` stops."""
    data = write_tile_dataset(tmp_path / "data", n_train=8, n_val=2)
    out = tmp_path / "run"
    args = [_console_script(), "train", str(data), "--out", str(out), "--epochs", "200", "--batch-size", "4",
            "--workers", "0", "--no-progress", "--weights", "none"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.csv").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, "training ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err.strip().splitlines()[-1]
