"""``staged_output``: staging inside ``--out``; what a kill -9 leaves is removed by the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from geoseg.io.output import STAGE_DIR, staged_output


def test_stage_inside_out_and_moved_on_success(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staged_output(out) as stage:
        assert stage == out / STAGE_DIR
        (stage / "a.txt").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no sibling


_KILLED = """
import sys, time
from geoseg.io.output import staged_output
with staged_output(sys.argv[1]) as stage:
    (stage / "big.bin").write_bytes(b"0" * 1000)
    print("staged", flush=True)
    time.sleep(60)
"""


def test_kill_9_leftovers_removed_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    legacy = tmp_path / ".out.partial"  # where older releases staged: also cleaned
    legacy.mkdir()
    (legacy / "old.bin").write_bytes(b"1")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(out)], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"staged"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / STAGE_DIR / "big.bin").exists()  # visible inside --out, not a hidden sibling
    with staged_output(out) as stage:
        assert not any(stage.iterdir()) and not legacy.exists()
        (stage / "new.txt").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]


def test_failure_removes_stage_and_created_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_output(out) as stage:
        (stage / "a.txt").write_text("x")
        raise RuntimeError("boom")
    assert not out.exists()
