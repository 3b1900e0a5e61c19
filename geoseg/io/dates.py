"""Scene and label dates: parse strings, read GeoTIFF tags, find dates in file names."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from geoseg.errors import DateFormatError

_FORMATS = (
    "%Y-%m-%d",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y:%m:%d %H:%M:%S",  # TIFFTAG_DATETIME
    "%Y:%m:%d",
    "%Y%m%d",
    "%Y/%m/%d",
    "%Y-%m",
    "%Y",
)
_NAME_DATE = re.compile(r"(?<!\d)((?:19|20)\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)")


def parse_date(value: Any, *, source: str = "date") -> dt.date | None:
    """Parse a date-like value to :class:`datetime.date`; ``None``/NaN/empty give ``None``.

    Accepts dates, datetimes, pandas Timestamps, ISO 8601 strings (with or without time and zone),
    TIFF ``YYYY:MM:DD HH:MM:SS``, ``YYYYMMDD``, ``YYYY-MM`` and ``YYYY``. Anything else raises
    :class:`DateFormatError` naming ``source``.
    """
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN
        return None
    if hasattr(value, "to_pydatetime"):
        try:
            return value.to_pydatetime().date()  # pandas Timestamp (NaT raises)
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    s = str(value).strip()
    if not s or s.lower() in {"nat", "nan", "none", "null"}:
        return None
    try:
        return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).date()
    except ValueError:
        pass
    for fmt in _FORMATS:
        try:
            return dt.datetime.strptime(s, fmt).date()
        except ValueError:
            continue
    raise DateFormatError(
        f"{source}: unknown date format {s!r}; use ISO 8601 (YYYY-MM-DD), YYYYMMDD or 'YYYY:MM:DD HH:MM:SS'"
    )


def date_from_tags(tags: dict[str, str], *, source: str) -> dt.date | None:
    """Acquisition date from GeoTIFF tags (``ACQUISITIONDATETIME``, then ``TIFFTAG_DATETIME``)."""
    for key in ("ACQUISITIONDATETIME", "ACQUISITION_DATETIME", "TIFFTAG_DATETIME"):
        if tags.get(key):
            return parse_date(tags[key], source=f"{source} tag {key}")
    return None


def date_from_name(path: str | Path) -> dt.date | None:
    """An 8-digit ``YYYYMMDD`` date in the file name, if there is exactly one plausible one."""
    m = _NAME_DATE.findall(Path(path).name)
    if not m:
        return None
    y, mo, d = m[-1]
    try:
        return dt.date(int(y), int(mo), int(d))
    except ValueError:
        return None
