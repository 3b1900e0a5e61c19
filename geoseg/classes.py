"""The class table: ids, names, colours, background, boundary and foreground, in one place.

One table travels through the pipeline, in three on-disk forms, all read and written here:

* ``dataset.json`` (written by ``geoseg tile``) and ``model/config.json`` (written by ``geoseg
  train``): ``classes`` = ``[{"id", "name", "color"}, ...]`` plus ``boundary_class`` (id or null);
* GeoTIFF tags of ``classes.tif`` (written by ``geoseg predict``): ``CLASS_NAMES`` = JSON
  ``{id: name}``; the colours are the raster's colour table; there is no boundary tag (the boundary
  class is recognised by its name, ``boundary``, which is what ``geoseg tile`` calls it).

Conventions: id 0 is background; the boundary class (``--boundary-width``) is an id or None;
*foreground* (object) classes are all others. Colours are ``#rrggbb``; a class without one gets
:func:`default_color` (the palette ``geoseg tile`` writes). Functions that take ``classes``
accept a :class:`ClassTable` or the ``list[dict]`` form (see :meth:`ClassTable.of`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from geoseg.errors import ConfigError

__all__ = [
    "BACKGROUND",
    "BACKGROUND_COLOR",
    "BOUNDARY_COLOR",
    "BOUNDARY_NAME",
    "PALETTE",
    "ClassEntry",
    "ClassTable",
    "ClassesLike",
    "as_class_dicts",
    "default_color",
    "hex_rgb",
]

BACKGROUND = 0
BOUNDARY_NAME = "boundary"
#: the one default palette: foreground class ``i`` (1-based) gets ``PALETTE[(i - 1) % len(PALETTE)]``
PALETTE = (
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c",
    "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000",
)  # fmt: skip
BACKGROUND_COLOR = "#000000"
BOUNDARY_COLOR = "#ffff00"
_TAG_NAMES = "CLASS_NAMES"
_TAG_BOUNDARY = "BOUNDARY_CLASS"


def hex_rgb(color: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` (or ``"#rgb"``) -> ``(r, g, b)`` ints 0-255: the one colour parser of geoseg."""
    c = color.lstrip("#")
    if len(c) == 3:
        c = "".join(ch * 2 for ch in c)
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def default_color(class_id: int, boundary: int | None = None) -> str:
    """Colour of a class that has none: black background, yellow boundary, else the palette."""
    if class_id == BACKGROUND:
        return BACKGROUND_COLOR
    if class_id == boundary:
        return BOUNDARY_COLOR
    return PALETTE[(class_id - 1) % len(PALETTE)]


@dataclass(frozen=True)
class ClassEntry:
    """One class: ``id`` (pixel value / probability band ``id + 1``), ``name``, ``color`` ``#rrggbb``."""

    id: int
    name: str
    color: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "color": self.color}


@dataclass(frozen=True)
class ClassTable:
    """The classes of a dataset / model / prediction, in their stored order (ids unique)."""

    entries: tuple[ClassEntry, ...]
    boundary: int | None = None

    def __post_init__(self) -> None:
        ids = [e.id for e in self.entries]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"class table: duplicate class ids in {ids}")
        if self.boundary is not None and self.boundary not in ids:
            raise ConfigError(f"class table: boundary class {self.boundary} is not among the ids {ids}")

    # ------------------------------------------------------------------ views
    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(e.id for e in self.entries)

    @property
    def by_id(self) -> dict[int, ClassEntry]:
        return {e.id: e for e in self.entries}

    @property
    def names(self) -> dict[int, str]:
        """``{id: name}`` in table order."""
        return {e.id: e.name for e in self.entries}

    @property
    def colors(self) -> dict[int, str]:
        """``{id: "#rrggbb"}`` in table order."""
        return {e.id: e.color for e in self.entries}

    @property
    def foreground(self) -> tuple[int, ...]:
        """Object class ids, ascending: not background (0) and not the boundary class."""
        return tuple(sorted(i for i in self.ids if i != BACKGROUND and i != self.boundary))

    @property
    def num_classes(self) -> int:
        """``max id + 1`` (the number of probability bands / model outputs)."""
        return max(self.ids) + 1 if self.entries else 0

    def foreground_dicts(self) -> list[dict[str, Any]]:
        """The foreground entries in table order, in the ``list[dict]`` form."""
        fg = set(self.foreground)
        return [e.to_json() for e in self.entries if e.id in fg]

    # ------------------------------------------------------------------ construction
    @classmethod
    def of(
        cls, classes: ClassTable | Sequence[Mapping[str, Any] | str], boundary: int | None = None,
        *, infer_boundary: bool = False,
    ) -> ClassTable:  # fmt: skip
        """A table from a table or the ``list[dict]`` form (a bare name means ``{"id": index, "name"}``).

        ``boundary`` (if given) overrides the table's; with ``infer_boundary`` and no boundary id,
        a class named ``boundary`` (any case) is the boundary class. Missing names become
        ``class<id>``, missing colours :func:`default_color`.
        """
        if isinstance(classes, ClassTable):
            if boundary is None or boundary == classes.boundary:
                return classes
            return cls(classes.entries, boundary)
        raw: list[tuple[int, str, Any]] = []
        for i, c in enumerate(classes):
            if isinstance(c, str):
                raw.append((i, c, None))
            else:
                cid = int(c["id"])
                raw.append((cid, str(c.get("name", f"class{cid}")), c.get("color")))
        if boundary is None and infer_boundary:
            boundary = next((i for i, n, _ in raw if n.lower() == BOUNDARY_NAME), None)
        bnd = int(boundary) if boundary is not None else None
        return cls(tuple(ClassEntry(i, n, str(col or default_color(i, bnd))) for i, n, col in raw), bnd)

    @classmethod
    def from_dataset_json(cls, info: Mapping[str, Any]) -> ClassTable:
        """The table of a ``dataset.json`` dict, sorted by id; a missing background (0) or boundary
        class entry is added. :class:`ConfigError` when there is no ``classes`` list."""
        raw = info.get("classes")
        if not isinstance(raw, list) or not raw:
            raise ConfigError("dataset.json has no 'classes' list; re-run geoseg tile")
        b = info.get("boundary_class")
        bnd = int(b) if b is not None else None
        entries = [{"id": int(c["id"]), "name": str(c["name"]), "color": c.get("color")} for c in raw]
        ids = {e["id"] for e in entries}
        if BACKGROUND not in ids:
            entries.insert(0, {"id": BACKGROUND, "name": "background"})
        if bnd is not None and bnd not in ids:
            entries.append({"id": bnd, "name": BOUNDARY_NAME})
        entries.sort(key=lambda e: e["id"])
        return cls.of(entries, bnd)

    @classmethod
    def from_model_config(cls, cfg: Mapping[str, Any]) -> ClassTable:
        """The table of a model ``config.json`` dict (``classes`` + ``boundary_class``), in stored order."""
        b = cfg.get("boundary_class")
        return cls.of(cfg["classes"], int(b) if b is not None else None)

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], colors: Mapping[int, str] | None = None) -> ClassTable | None:
        """The table of a ``classes.tif`` from its dataset tags (keys in any case) and colour table
        ``colors`` (``{id: "#rrggbb"}``); None when there is no readable ``CLASS_NAMES`` tag.

        The boundary class is the ``BOUNDARY_CLASS`` tag if present, else a class named ``boundary``.
        """
        low = {k.upper(): v for k, v in tags.items()}
        try:
            names = {int(k): str(v) for k, v in json.loads(low[_TAG_NAMES]).items()}
        except (KeyError, ValueError, TypeError, AttributeError):
            return None
        colors = colors or {}
        b = low.get(_TAG_BOUNDARY)
        try:
            bnd = int(b) if b not in (None, "", "None", "null") else None  # type: ignore[arg-type]
        except ValueError:
            bnd = None
        entries = [{"id": i, "name": n, "color": colors.get(i)} for i, n in sorted(names.items())]
        return cls.of(entries, bnd if bnd in names else None, infer_boundary=True)

    # ------------------------------------------------------------------ serialisation
    def to_json(self) -> list[dict[str, Any]]:
        """The ``classes`` list of dataset.json / config.json: ``[{"id", "name", "color"}, ...]``."""
        return [e.to_json() for e in self.entries]

    def to_tags(self) -> dict[str, str]:
        """The class tags ``geoseg predict`` writes on ``classes.tif`` (colours go in its colour table)."""
        return {_TAG_NAMES: json.dumps(self.names)}


#: what functions taking ``classes`` accept: a table or its ``list[dict]`` form
ClassesLike = ClassTable | Sequence[Mapping[str, Any]]


def as_class_dicts(classes: ClassesLike) -> list[dict[str, Any]]:
    """The ``list[dict]`` form of ``classes`` (a table's :meth:`ClassTable.to_json`; dicts as given)."""
    return classes.to_json() if isinstance(classes, ClassTable) else [dict(c) for c in classes]
