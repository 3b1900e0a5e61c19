"""Progress reporting used by every stage: a tqdm bar on a terminal, plain lines elsewhere.

``tqdm(...)`` here is a drop-in for ``tqdm.tqdm`` (same common arguments). When stderr is a
terminal it *is* a tqdm bar. When it is not (CI, ``nohup``, a log file, QGIS), it returns a
:class:`LineProgress`, which writes one line such as ``predict: 40/120 windows, 12.0 windows/s,
eta 7s`` when another 10 % is done or ``interval`` seconds have passed (the interval grows to a
tenth of the elapsed time, so a long run writes O(log t) time lines), and a last line on close.
:func:`set_quiet` (``geoseg -q``) turns every progress output off.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

_QUIET = {"on": False}


def set_quiet(quiet: bool) -> None:
    """``geoseg -q``: no progress output from any stage (process-wide)."""
    _QUIET["on"] = bool(quiet)


@contextlib.contextmanager
def quiet_progress(quiet: bool = True) -> Iterator[None]:
    """No progress output inside the block when ``quiet`` (a stage's ``--no-progress`` over its library calls)."""
    old = _QUIET["on"]
    _QUIET["on"] = old or bool(quiet)
    try:
        yield
    finally:
        _QUIET["on"] = old


def is_quiet() -> bool:
    return _QUIET["on"] or os.environ.get("GEOSEG_QUIET", "") not in ("", "0")


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _fmt_s(s: float) -> str:
    s = max(0, round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class LineProgress:
    """Line-per-step progress for non-terminal streams (see the module docstring). tqdm-compatible subset."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        total: float | None = None,
        desc: str | None = None,
        unit: str = "it",
        *,
        file: IO[str] | None = None,
        interval: float = 5.0,
        step: float = 0.1,
        clock: Any = time.monotonic,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc or "progress", unit
        self.file, self.interval, self.step, self.clock = file, interval, step, clock
        self.n = 0
        self.postfix = ""
        self.shown = ""  # the postfix of the last line written
        self.t0 = self.last_t = clock()
        self.last_frac = 0.0
        self.lines = 0
        self.closed = False

    # tqdm API used by geoseg ------------------------------------------------------------
    def update(self, n: float = 1) -> None:
        self.n += n  # type: ignore[assignment]
        now = self.clock()
        frac = self.n / self.total if self.total else 0.0
        wait = max(self.interval, 0.1 * (now - self.t0))
        if (self.total and frac >= 1.0) or frac - self.last_frac >= self.step or now - self.last_t >= wait:
            self._emit(now)
            self.last_frac = frac - (frac % self.step) if self.step > 0 else frac

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kw: Any) -> None:
        items = {**(ordered_dict or {}), **kw}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # a last line when the bar did not end on one, or when its postfix changed since (e.g. val scores)
        if self.n and (not self.total or self.n < self.total or self.lines == 0 or self.postfix != self.shown):
            self._emit(self.clock(), done=True)

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        try:
            for x in self.iterable:
                yield x
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -------------------------------------------------------------------------------------
    def _emit(self, now: float, done: bool = False) -> None:
        el = max(now - self.t0, 1e-9)
        rate = self.n / el
        n = f"{self.n:g}/{self.total:g}" if self.total else f"{self.n:g}"
        parts = [f"{self.desc}: {n} {self.unit}", f"{rate:.3g} {self.unit}/s"]
        if self.total and self.n < self.total and rate > 0 and not done:
            parts.append(f"eta {_fmt_s((self.total - self.n) / rate)}")
        else:
            parts.append(f"{_fmt_s(el)} elapsed")
        if self.postfix:
            parts.append(self.postfix)
        stream = self.file or sys.stderr
        stream.write(", ".join(parts) + "\n")
        stream.flush()
        self.lines += 1
        self.last_t = now
        self.shown = self.postfix


def tqdm(iterable: Iterable[Any] | None = None, *args: Any, **kw: Any) -> Any:
    """A tqdm bar on a terminal, a :class:`LineProgress` elsewhere, nothing when disabled or quiet."""
    from tqdm import tqdm as _tqdm

    stream = kw.get("file") or sys.stderr
    if kw.get("disable") or is_quiet():
        return _tqdm(iterable, *args, **{**kw, "disable": True})
    if _is_terminal(stream):
        return _tqdm(iterable, *args, **kw)
    return LineProgress(
        iterable, total=kw.get("total"), desc=kw.get("desc"), unit=kw.get("unit", "it"), file=kw.get("file")
    )


__all__ = ["LineProgress", "is_quiet", "quiet_progress", "set_quiet", "tqdm"]
