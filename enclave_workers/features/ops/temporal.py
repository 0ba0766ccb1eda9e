"""Calendar features: ``date_parts`` and ``age_from``.

What it does:

- ``date_parts``: from a timestamp or date32 column, the requested parts as int32 columns named
  ``<name>_<part>``: ``year``, ``month`` (1-12), ``day`` (1-31), ``dow`` (Monday = 0 ... Sunday =
  6), ``hour`` (0-23, timestamps only). ``tz`` (an IANA name) reads a zoned timestamp's wall
  clock in that zone; without it, a zoned timestamp is read in its own zone and a naive one as
  written.
- ``age_from``: whole years from a date (the ``input``, e.g. a birth date) to a ``reference``
  column (e.g. the event time), as int32: the year difference, minus one if the reference's
  (month, day) comes before the input's. Someone born on 29 February turns a year older on
  1 March in common years. Zoned timestamps are read as calendar dates in ``tz`` (default: the
  reference column's zone).

What it does not: no time arithmetic beyond calendar fields; a null on either side gives null.
Known limit: Arrow reads the system's time-zone database, and with "slim" TZif files it applies
no daylight-saving rules after 2037, so local parts of instants after 2037 in DST zones can be
off by the DST offset (UTC is exact).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ..spec import ColumnSpec, FeatureDef, FeatureSpec
from ..types import UnknownTypeError, check_time_zone, is_temporal, is_zoned_timestamp
from .base import BoundFeature, Columns, Keys, OpSpecError, operation, param, require

_PART_KERNELS = {
    "year": pc.year,
    "month": pc.month,
    "day": pc.day,
    "dow": pc.day_of_week,   # Monday = 0 by default (count_from_zero, week_start=1)
    "hour": pc.hour,
}


def _checked_tz(feature: FeatureDef) -> str | None:
    tz = param(feature, "tz")
    if tz is not None:
        try:
            check_time_zone(tz)
        except UnknownTypeError as exc:
            raise OpSpecError("tz", str(exc)) from None
    return tz


def in_zone(values: pa.ChunkedArray, tz: str | None) -> pa.ChunkedArray:
    """A zoned timestamp re-labelled to ``tz`` (same instants; wall-clock fields change)."""
    if tz is None or not is_zoned_timestamp(values.type) or values.type.tz == tz:
        return values
    return pc.cast(values, pa.timestamp(values.type.unit, tz=tz))


@operation("date_parts", reveals_input=False, summary="year/month/day/dow/hour as int32 columns")
def bind_date_parts(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    require(is_temporal(column.type), "input",
            f"date_parts needs a timestamp or date32 column, {column.name!r} is "
            f"{column.type_name}")
    tz = _checked_tz(feature)
    if tz is not None:
        require(is_zoned_timestamp(column.type), "tz",
                f"tz needs a time-zone-aware timestamp column, {column.name!r} is "
                f"{column.type_name}")
    parts = list(param(feature, "parts"))
    if pa.types.is_date32(column.type):
        require("hour" not in parts, "parts", f"{column.name!r} is a date: it has no hour")
    source = column.name

    def compute(columns: Columns, keys: Keys) -> list:
        values = in_zone(columns[source], tz)
        return [pc.cast(_PART_KERNELS[part](values), pa.int32()) for part in parts]

    outputs = tuple(pa.field(f"{feature.name}_{part}", pa.int32()) for part in parts)
    return BoundFeature(feature, outputs, (source,), (), compute)


@operation("age_from", reveals_input=False, summary="whole years from a date to a reference")
def bind_age_from(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    require(is_temporal(column.type), "input",
            f"age_from needs a date32 or timestamp column, {column.name!r} is {column.type_name}")
    reference = spec.column(param(feature, "reference"))
    require(reference is not None, "reference",
            f"reference column {param(feature, 'reference')!r} is not declared in input.columns")
    assert reference is not None
    require(is_temporal(reference.type), "reference",
            f"reference needs a date32 or timestamp column, {reference.name!r} is "
            f"{reference.type_name}")
    tz = _checked_tz(feature)
    if tz is None and is_zoned_timestamp(reference.type):
        tz = reference.type.tz
    source, reference_name = column.name, reference.name

    def compute(columns: Columns, keys: Keys) -> list:
        born = in_zone(columns[source], tz)
        at = in_zone(columns[reference_name], tz)
        years = pc.subtract(pc.year(at), pc.year(born))
        at_month, born_month = pc.month(at), pc.month(born)
        before_birthday = pc.or_(
            pc.less(at_month, born_month),
            pc.and_(pc.equal(at_month, born_month), pc.less(pc.day(at), pc.day(born))))
        age = pc.subtract(years, pc.cast(before_birthday, pa.int64()))
        return [pc.cast(age, pa.int32())]

    return BoundFeature(feature, (pa.field(feature.name, pa.int32()),),
                        (source, reference_name), (), compute)
