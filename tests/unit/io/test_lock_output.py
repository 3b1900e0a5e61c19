"""Output folder lock (geoseg.io.lock) and the up-front output check (geoseg.io.output.check_writable_dir)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geoseg.errors import LockedError, OutputError, first_line
from geoseg.io.lock import LOCK_NAME, output_lock
from geoseg.io.output import check_writable_dir


def test_second_lock_refused_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_lock(out) as lock:
        info = json.loads(lock.read_text())
        assert info["pid"] == os.getpid() and info["host"] and info["started"] and info["command"]
        with pytest.raises(LockedError) as e, output_lock(out):
            pass
        msg = str(e.value)
        assert "\n" not in msg and f"pid {os.getpid()}" in msg and "in use by another geoseg run" in msg
        assert lock.exists()  # the refused attempt left the holder's lock alone
    assert not out.exists()  # created by the lock, still empty: removed again
    with output_lock(out):  # free again
        pass


def test_lock_keeps_existing_folder_and_its_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.txt").write_text("x")
    with output_lock(out):
        (out / "new.txt").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt", "result.txt"]


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = "import os, sys\nfrom geoseg.io.lock import output_lock\nwith output_lock(sys.argv[1]):\n    os._exit(9)\n"
    subprocess.run([sys.executable, "-c", code, str(out)], check=False, timeout=60)
    stale = json.loads((out / LOCK_NAME).read_text())  # left behind by the dead process
    assert stale["pid"] != os.getpid()
    with output_lock(out) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()


def test_lock_on_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="not a folder"), output_lock(f):
        pass


def test_check_writable_dir(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert check_writable_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # creates nothing
    assert check_writable_dir(tmp_path) == tmp_path
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_writable_dir(f)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable_dir(f / "sub")
    with pytest.raises(OutputError, match="not writable"):  # /proc refuses new files, even for root
        check_writable_dir("/proc/geoseg-test/out")
    assert list(tmp_path.iterdir()) == [f]  # the probe file is gone


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_writable_dir(ro)
        with pytest.raises(OutputError, match="cannot create it"):
            check_writable_dir(ro / "out")
    finally:
        ro.chmod(0o755)


def test_first_line() -> None:
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(EOFError()) == "EOFError"
    assert first_line(RuntimeError("\n\n  second\nthird")) == "second"
    assert first_line(RuntimeError("abcdef"), 3) == "abc"


def test_low_free_space_warns_with_the_figures(tmp_path, caplog) -> None:
    import shutil

    from geoseg.io.output import warn_if_low_space

    free = shutil.disk_usage(tmp_path).free
    with caplog.at_level("WARNING", logger="geoseg.io.output"):
        assert warn_if_low_space(tmp_path / "not" / "yet", 10 * free + 1e12) is True  # nearest existing ancestor
        assert warn_if_low_space(tmp_path, 1024) is False
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "GB free" in warned[0] and "--out" in warned[0]
