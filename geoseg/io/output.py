"""Output folders: checked before any work (:func:`check_writable_dir`); nothing half-written
(:func:`atomic_path` for one file, :func:`staged_output` for a stage: outputs go to
``OUT/.geoseg-stage``, then are moved in)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from geoseg.errors import OutputError, first_line

log = logging.getLogger(__name__)


@functools.cache
def _umask() -> int:
    """The process umask, read once: ``os.umask`` can only be read by setting it, and setting it to 0 for a
    moment while another thread (a background chunk writer, a dask thread worker) creates a file would
    give that file world-writable permissions."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (``.NAME.<random><suffix>``, same folder, so the rename is
    atomic) to write to; on success it is renamed onto ``path`` with ``os.replace``, with the
    permissions a plain ``open`` would give (umask applied), on error it is removed and ``path`` is
    untouched. The one temp-name scheme of every geoseg writer: a kill at any moment leaves either
    the old file or the new one, never a torn one (plus, at worst, a hidden ``.tmp`` sibling).
    ``fsync=True`` flushes the file to disk before the rename (checkpoints, models); ``suffix`` is for
    writers that insist on an extension (GDAL's GPKG driver: ``".tmp.gpkg"``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        raise


def warn_if_low_space(path: str | Path, need_bytes: float, what: str = "--out") -> bool:
    """Log a warning when the file system of ``path`` (or its nearest existing ancestor) has less free
    space than ``need_bytes`` (a rough, usually pessimistic estimate of the output). Returns True if so."""
    probe = Path(path)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return False
    if free >= need_bytes:
        return False
    log.warning(
        "%s %s: %.1f GB free, the output may need up to about %.1f GB; free space or choose another %s",
        what, path, free / 1e9, need_bytes / 1e9, what,
    )  # fmt: skip
    return True


def check_writable_dir(path: str | Path, what: str = "--out") -> Path:
    """Check that ``path`` is (or can be created as) a writable folder; creates nothing.

    Raises :class:`~geoseg.errors.OutputError` (one line naming ``what`` and the path) when ``path``
    is an existing file, when an ancestor is a file, or when the folder (or, if it does not exist
    yet, its nearest existing ancestor) does not accept a new file. Writability is probed by creating
    and removing a temporary file, so it holds for root, ACLs and read-only mounts alike. Cheap
    (milliseconds); call it before any work. Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path}: exists and is not a folder; remove it or choose another {what}")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{what} {path}: {probe} is a file, not a folder; choose another {what}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".geoseg-probe-", dir=probe)
    except OSError as e:
        where = "" if probe == path else f"cannot create it: {probe} is "
        raise OutputError(
            f"{what} {path}: {where}not writable ({e.strerror or first_line(e)}); fix the permissions or choose "
            f"another {what}"
        ) from None
    os.close(fd)
    os.unlink(tmp)
    return path


#: staging folder of :func:`staged_output`, inside the output folder
STAGE_DIR = ".geoseg-stage"


@contextlib.contextmanager
def staged_output(out: str | Path) -> Iterator[Path]:
    """Yield a staging directory ``out/.geoseg-stage`` (:data:`STAGE_DIR`); on success move its entries into ``out``.

    On any exception the staging directory is removed and ``out`` is left as it was (and removed
    again if this call created it empty). After a ``kill -9`` the staging directory stays inside
    ``out`` (never a hidden sibling) and the next run into ``out`` deletes it first. Entries already
    in ``out`` with the same names are replaced only after the whole stage succeeded. Each entry is
    moved with one ``os.replace`` (atomic per entry on one file system).
    """
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = out / STAGE_DIR
    if stage.exists():
        shutil.rmtree(stage)
    legacy = out.parent / f".{out.name}.partial"  # the former staging sibling, left by a kill -9 of an older run
    if legacy.is_dir():
        shutil.rmtree(legacy, ignore_errors=True)
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
        if entry.name == STAGE_DIR:
            continue
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
