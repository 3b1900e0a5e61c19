"""One run per output folder: an advisory ``flock`` on ``OUT/.geoseg.lock``.

:func:`output_lock` is used by each stage's ``run`` (tile, train, predict) and by ``geoseg run``.
A second run into a locked folder raises :class:`~geoseg.errors.LockedError` at once, naming the
holder (pid, host, command, start time, read from the lock file). The kernel releases a ``flock``
when its holder dies, however it dies, so the lock of a killed run is simply taken over; the stale
lock file it left is rewritten. The lock file is removed when the run ends.

Limits: advisory (only geoseg runs honour it); on file systems without ``flock`` (some network
mounts) the run goes ahead unlocked with a warning.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from geoseg.errors import LockedError, OutputError, first_line

log = logging.getLogger(__name__)

LOCK_NAME = ".geoseg.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


def _command() -> str:
    argv = [Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]
    text = " ".join(shlex.quote(a) for a in argv).replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."


def _holder(fd: int) -> str:
    """What the lock file says about its holder, as a short phrase."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 65536).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "a run that is just starting"
    g = info.get
    return f"pid {g('pid')} on {g('host', '?')}, started {g('started', '?')}: {g('command', '?')}"


def _created_dirs(path: Path) -> list[Path]:
    """The folders that ``path.mkdir(parents=True)`` would create, deepest first."""
    missing = []
    p = path
    while not p.exists() and p.parent != p:
        missing.append(p)
        p = p.parent
    return missing


@contextlib.contextmanager
def output_lock(out: str | Path, what: str = "--out") -> Iterator[Path]:
    """Hold the lock of output folder ``out`` for the ``with`` block; creates ``out`` if missing.

    Raises :class:`LockedError` immediately (never waits) if another process holds it. On exit the
    lock file is removed, and so are the folders this call created if they are still empty (a run
    that failed before writing anything leaves no trace). Yields the lock file's path.
    """
    out = Path(out)
    created = _created_dirs(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{what} {out}: exists and is not a folder; remove it or choose another {what}") from None
    except OSError as e:
        raise OutputError(f"{what} {out}: cannot create it ({first_line(e)}); choose another {what}") from None
    path = out / LOCK_NAME
    fd = -1
    try:
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OutputError(f"{what} {out}: cannot create {LOCK_NAME} ({first_line(e)})") from None
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                fd = -1
                raise LockedError(
                    f"{what} {out}: in use by another geoseg run ({holder}); wait for it to end or choose "
                    f"another {what}"
                ) from None
            except OSError as e:  # e.g. ENOLCK / EOPNOTSUPP on some network file systems
                log.warning("%s: cannot lock (%s); running without protection against concurrent runs", out, e)
                break
            # the previous holder may have unlinked the file between our open and our flock: retry on a fresh one
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
            fd = -1
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": _command(),
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode())
        yield path
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(path)  # unlink while still holding the lock, then release
            os.close(fd)
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break


__all__ = ["LOCK_NAME", "output_lock"]
