"""SIGINT / SIGTERM to ``geoseg train``: exit 130 / 143, one line, ``run.json`` says ``interrupted`` (issue 13)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from geoseg.cli import main
from geoseg.train.synthetic import write_tile_dataset

pytestmark = pytest.mark.slow


def _status(run_json: Path) -> Any:
    try:
        return json.loads(run_json.read_text()).get("status")
    except (OSError, ValueError):
        return None


def _wait(cond: Any, proc: subprocess.Popen[str], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"train ended (rc {proc.returncode}) before {what}: {err}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _train(exe: str, data: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    args = [exe, "train", str(data), "--out", str(out), "--epochs", "500", "--batch-size", "4", "--workers", "0",
            "--no-progress", "--weights", "none", "--no-calibrate", *extra]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize(
    ("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_signal_to_train_exit_code_and_status(
    tmp_path: Path, geoseg_exe: str, sig: signal.Signals, code: int, word: str
) -> None:
    data = write_tile_dataset(tmp_path / "data", n_train=8, n_val=2)
    out = tmp_path / "run"
    proc = _train(geoseg_exe, data, out)
    try:
        _wait(lambda: (out / "metrics.csv").exists(), proc, 180, "the first epoch")  # mid-run, a model exists
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"geoseg: {word}; rerun with --resume"
    assert _status(out / "run.json") == "interrupted"
    assert not (out / ".geoseg.lock").exists()  # the lock is released and removed


def test_overwrite_killed_in_epoch_1_leaves_no_complete_old_run(tmp_path: Path, geoseg_exe: str) -> None:
    """`train --overwrite` killed (-9) at once must not leave the old model/ with a run.json saying complete."""
    data = write_tile_dataset(tmp_path / "data", n_train=8, n_val=2)
    out = tmp_path / "run"
    rc = main(["train", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "4", "--workers", "0",
               "--no-progress", "--weights", "none", "--no-calibrate"])  # fmt: skip
    assert rc == 0 and _status(out / "run.json") == "complete" and (out / "model").is_dir()
    old_model = (out / "model" / "config.json").read_text()
    proc = _train(geoseg_exe, data, out, "--overwrite")
    try:
        _wait(lambda: _status(out / "run.json") == "running", proc, 180, "the new run to start")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _status(out / "run.json") == "running"  # not "complete": `train && predict` style checks see it
    model_cfg = out / "model" / "config.json"
    assert not model_cfg.exists() or model_cfg.read_text() != old_model  # the old model is gone
