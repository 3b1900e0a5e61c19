"""Nothing half-written: stage outputs go to a hidden sibling directory, then are moved in."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged_output(out: str | Path) -> Iterator[Path]:
    """Yield a staging directory next to ``out``; on success move its entries into ``out``.

    On any exception the staging directory is removed and ``out`` is left as it was (and removed
    again if this call created it empty). Entries already in ``out`` with the same names are
    replaced only after the whole stage succeeded. Each entry is moved with one ``os.replace``
    (atomic per entry on one file system).
    """
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    for entry in sorted(stage.iterdir()):
        dest = out / entry.name
        if dest.is_dir() and not dest.is_symlink():
            trash = out / f".{entry.name}.old"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(dest, trash)
            os.replace(entry, dest)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(entry, dest)
    shutil.rmtree(stage, ignore_errors=True)
