"""Frozen, validated config objects, written next to every output as JSON.

Every JSON that geoseg writes carries ``geoseg_version`` and ``schema_version`` so any output
says how it was made. Writes are atomic (temporary name, then rename).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from geoseg import SCHEMA_VERSION, __version__
from geoseg.errors import ConfigError, RegistryError
from geoseg.io.output import atomic_path


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (dt.date, dt.datetime)):
        return obj.isoformat()
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) dataclass config."""
    out = _jsonable(cfg)
    if not isinstance(out, dict):
        raise TypeError("config must serialise to a mapping")
    return out


def stamp(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` with ``geoseg_version``, ``schema_version`` and ``created`` (UTC) in front."""
    head = {
        "geoseg_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return {**head, **_jsonable(dict(payload))}


def write_json(path: str | os.PathLike[str], payload: Mapping[str, Any], *, stamped: bool = True) -> Path:
    """Atomically write ``payload`` (stamped with version info) as pretty JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = stamp(payload) if stamped else _jsonable(dict(payload))
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    return path


def read_json(path: str | os.PathLike[str], *, what: str = "config") -> dict[str, Any]:
    """Read a geoseg JSON file, with a one-line error when missing, corrupt or from a newer schema."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: {what} not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable {what} ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} must be a JSON object")
    sv = data.get("schema_version", SCHEMA_VERSION)
    if isinstance(sv, int) and sv > SCHEMA_VERSION:
        raise ConfigError(f"{path}: schema_version {sv} is newer than this geoseg ({SCHEMA_VERSION}); upgrade geoseg")
    return data


_NUMBER = {"int": (int,), "float": (int, float)}


def _kinds(annotation: str) -> tuple[tuple[type, ...], bool, bool] | None:
    """``(accepted types, optional, sequence)`` of a checked field annotation (int, float, bool, their
    ``| None`` and ``tuple[..., ...]`` forms), else None (not checked here)."""
    text = annotation.replace(" ", "")
    optional = text.endswith("|None")
    text = text.removesuffix("|None")
    sequence = text.startswith("tuple[") and text.endswith(",...]")
    if sequence:
        text = text[len("tuple[") : -len(",...]")]
    if text == "bool" and not sequence:
        return (bool,), optional, False
    if text in _NUMBER:
        return _NUMBER[text], optional, sequence
    return None


def _ok(value: Any, kinds: tuple[type, ...]) -> bool:
    if kinds == (bool,):
        return isinstance(value, bool)
    return not isinstance(value, bool) and isinstance(value, kinds)


def check_option_types(cfg: Any) -> None:
    """Raise :class:`~geoseg.errors.ConfigError` naming the option (``--lr``) when a field of a stage
    config dataclass annotated ``int``, ``float``, ``bool`` (or ``... | None``, ``tuple[float, ...]``)
    holds another type, e.g. ``lr: fast`` or ``size_bins: [banana]`` in a pipeline file."""
    for f in dataclasses.fields(cfg):
        found = _kinds(str(f.type))
        if found is None:
            continue
        kinds, optional, sequence = found
        v = getattr(cfg, f.name)
        if optional and v is None:
            continue
        want = "true or false" if kinds == (bool,) else "an integer" if kinds == (int,) else "a number"
        if sequence:
            if not isinstance(v, (tuple, list)) or not all(_ok(x, kinds) for x in v):
                want = "a list of " + {"an integer": "integers"}.get(want, "numbers")
                raise ConfigError(f"{option_name(f.name)}: expected {want}, got {v!r}")
        elif not _ok(v, kinds):
            raise ConfigError(f"{option_name(f.name)}: expected {want}, got {v!r}")


def option_name(field: str) -> str:
    """The command-line spelling of a config field: ``min_area`` -> ``--min-area``."""
    return "--" + field.replace("_", "-")


@contextlib.contextmanager
def naming(option: str) -> Iterator[None]:
    """Turn a :class:`~geoseg.errors.RegistryError` (unknown name; lists the valid ones) raised inside
    into a :class:`~geoseg.errors.ConfigError` naming ``option``: ``--blend: unknown blend window ...``."""
    try:
        yield
    except RegistryError as e:
        raise ConfigError(f"{option}: {e}") from None


class StageConfig:
    """Base of every stage's options (``TileConfig``, ``TrainConfig``, ``PredictConfig``, ...).

    Subclasses are frozen dataclasses; constructing one runs, in order, :meth:`normalize` (coerce
    values, e.g. ``"8"`` -> ``8``), :func:`check_option_types` and :meth:`validate` (range and choice
    checks that need no file). So a config that exists is valid, whoever built it (CLI, pipeline file,
    Python), and every problem is a one-line :class:`~geoseg.errors.ConfigError` naming the option as
    the command line spells it (``--threshold``; ``geoseg run`` adds the file and the stage).
    """

    def __post_init__(self) -> None:
        self.normalize()
        check_option_types(self)
        self.validate()

    def normalize(self) -> None:
        """Coerce field values in place before the checks (default: nothing)."""

    def validate(self) -> None:
        """Raise :class:`~geoseg.errors.ConfigError` for an out-of-range option (default: nothing)."""

    def _set(self, name: str, value: Any) -> None:
        """Assign a field of the frozen dataclass (for :meth:`normalize` only)."""
        object.__setattr__(self, name, value)
