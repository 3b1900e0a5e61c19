"""One exception tree rooted at :class:`GeosegError`.

Each subclass also inherits the matching builtin, so callers may catch either. The CLI turns
any ``GeosegError`` into one line on stderr and exit code 2; messages must name the file and say
what to do.
"""

from __future__ import annotations

from collections.abc import Iterable


class GeosegError(Exception):
    """Base of every error geoseg raises on purpose."""

    exit_code = 2


class InputError(GeosegError, ValueError):
    """An input file or option is unusable."""


class InputNotFoundError(GeosegError, FileNotFoundError):
    """An input file does not exist."""


class RasterReadError(InputError):
    """A raster cannot be opened or read (corrupt, not a raster)."""


class CRSError(InputError):
    """A scene or layer has no CRS, or an unusable one."""


class CRSMismatchError(InputError):
    """Two inputs that must share a CRS/grid do not."""


class LabelsError(InputError):
    """A label layer is empty, lacks a named field, or has unusable values."""


class DateFormatError(InputError):
    """A date string could not be parsed."""


class NoOverlapError(InputError):
    """Inputs do not overlap (labels vs scenes, AOI vs scenes)."""


class ConfigError(InputError):
    """A configuration (options, pipeline file, config.json) is invalid."""


class ModelError(InputError):
    """A model directory is unreadable or incompatible with the input."""


class DeviceError(GeosegError, RuntimeError):
    """The requested compute device is not available."""


class OfflineError(GeosegError, RuntimeError):
    """Something needed the network, which is not reachable."""


class RegistryError(GeosegError, KeyError):
    """An unknown name was asked of a registry; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0]) if self.args else ""


class EmptyResultError(GeosegError, RuntimeError):
    """A stage produced nothing usable (e.g. no tile passed the filters)."""


class OutputError(InputError):
    """An output location is unusable (a file where a folder is needed, not writable)."""


class ClusterError(GeosegError, RuntimeError):
    """The dask cluster cannot run the work (e.g. no worker left); an unreachable scheduler is a ConfigError."""


class LockedError(GeosegError, RuntimeError):
    """Another geoseg run holds the output folder's lock."""


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM (the CLI installs the handler); exit code 143.

    A subclass of ``KeyboardInterrupt`` so every interrupt cleanup path treats both alike.
    """


def first_line(e: BaseException, limit: int | None = None) -> str:
    """The first non-blank line of ``str(e)`` (at most ``limit`` characters), else the exception's type name.

    The one helper for quoting a library's message in a one-line error; never fails on empty messages.
    """
    for line in str(e).splitlines():
        if line.strip():
            text = line.strip()
            return text[:limit] if limit else text
    return type(e).__name__


def format_bounds(bounds: Iterable[float]) -> str:
    """``(minx, miny, maxx, maxy)`` for messages: 10 significant digits (mm in UTM metres, ~1e-8 in degrees)."""
    return "(" + ", ".join(f"{float(v):.10g}" for v in bounds) + ")"
