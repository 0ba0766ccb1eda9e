"""Column type names of the spec (``float64``, ``timestamp[us, UTC]``) <-> Arrow types.

What it does: parses the small, closed set of type names a spec may declare and answers the
type questions the compiler asks (is this numeric, temporal, time-zone aware).

What it does not: no casting of data (``conform.py`` does that) and no nested types: a feature
spec describes flat records.
"""

from __future__ import annotations

import re
import zoneinfo

import pyarrow as pa

_SIMPLE_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "date32": pa.date32(),
}
_TIMESTAMP = re.compile(r"timestamp\[(s|ms|us|ns)(?:,\s*([A-Za-z0-9_+\-/]{1,64}))?\]")
MAX_TYPE_NAME_CHARS = 96


class UnknownTypeError(ValueError):
    """A type name outside the closed set; the spec loader turns it into a spec problem."""


def parse_type(name: str) -> pa.DataType:
    """One spec type name -> its Arrow type; time zones must be IANA names (or UTC)."""
    if len(name) > MAX_TYPE_NAME_CHARS:
        raise UnknownTypeError(f"type name longer than {MAX_TYPE_NAME_CHARS} characters")
    if name in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[name]
    match = _TIMESTAMP.fullmatch(name)
    if match is None:
        known = ", ".join([*_SIMPLE_TYPES, "timestamp[UNIT]", "timestamp[UNIT, TZ]"])
        raise UnknownTypeError(f"unknown type {name!r} (known: {known})")
    unit, tz = match.group(1), match.group(2)
    if tz is not None:
        check_time_zone(tz)
    return pa.timestamp(unit, tz=tz)


def check_time_zone(tz: str) -> None:
    """Raise ``UnknownTypeError`` unless ``tz`` names a zone in the IANA database."""
    if tz == "UTC":
        return
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise UnknownTypeError(f"unknown time zone {tz!r} (use an IANA name)") from None


def type_name(arrow_type: pa.DataType) -> str:
    """The spec's name for an Arrow type (inverse of ``parse_type`` where one exists)."""
    if pa.types.is_timestamp(arrow_type):
        if arrow_type.tz is None:
            return f"timestamp[{arrow_type.unit}]"
        return f"timestamp[{arrow_type.unit}, {arrow_type.tz}]"
    for name, known in _SIMPLE_TYPES.items():
        if known == arrow_type:
            return name
    return str(arrow_type)


def is_numeric(arrow_type: pa.DataType) -> bool:
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)


def is_temporal(arrow_type: pa.DataType) -> bool:
    return pa.types.is_timestamp(arrow_type) or pa.types.is_date32(arrow_type)


def is_zoned_timestamp(arrow_type: pa.DataType) -> bool:
    return pa.types.is_timestamp(arrow_type) and arrow_type.tz is not None
