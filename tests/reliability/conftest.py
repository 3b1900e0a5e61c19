"""Kill / interrupt / concurrency tests: they drive the installed console script as real subprocesses."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def geoseg_exe() -> str:
    """Path of the installed ``geoseg`` console script (next to this interpreter)."""
    exe = Path(sys.executable).parent / "geoseg"
    found = str(exe) if exe.exists() else shutil.which("geoseg")
    assert found, "the geoseg console script is not installed (pip install -e .)"
    return found
