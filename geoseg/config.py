"""Frozen, validated config objects, written next to every output as JSON.

Every JSON that geoseg writes carries ``geoseg_version`` and ``schema_version`` so any output
says how it was made. Writes are atomic (temporary name, then rename).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geoseg import SCHEMA_VERSION, __version__
from geoseg.errors import ConfigError
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


_NUMERIC = {
    "int": (int,),
    "float": (int, float),
    "int | None": (int, type(None)),
    "float | None": (int, float, type(None)),
}


def check_option_types(cfg: Any) -> None:
    """Raise :class:`~geoseg.errors.ConfigError` naming the option when a numeric field of a stage
    config dataclass holds a non-number (e.g. ``lr: fast`` in a pipeline file)."""
    import dataclasses

    from geoseg.errors import ConfigError

    for f in dataclasses.fields(cfg):
        kinds = _NUMERIC.get(str(f.type))
        if kinds is None:
            continue
        v = getattr(cfg, f.name)
        if isinstance(v, bool) or not isinstance(v, kinds):
            want = "an integer" if str(f.type).startswith("int") else "a number"
            raise ConfigError(f"--{f.name.replace('_', '-')}: expected {want}, got {v!r}")
