"""Check a batch against the spec's declared input columns, row by row, without row loops.

What it does: for each declared column, brings the batch's column to the declared type and
marks the rows that break the declaration, each with one reason (the first that applies, in
this order): a value of the wrong type (a string that does not parse as the declared type, a
float that is not a whole number for an integer column, an integer out of the type's range, a
zone-less timestamp for a zoned column, ...), NaN in a float column, null in a non-nullable
column, a value below ``min`` / above ``max``, a string longer than ``max_length``.

Strings are parsed with a strict pattern first (``pc.match_substring_regex``), then cast; the
few values that match the pattern and still fail the cast (30 February, an integer just past
its range) are isolated by bisection, at most ``MAX_ISOLATED_PER_COLUMN`` per column.

What it does not: reasons never contain the offending value (it may be personal data); a
declared column that is missing from the batch is not a row problem but a
``FeatureInputError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import FeatureInputError
from .spec import ColumnSpec
from .types import is_numeric

MAX_ISOLATED_PER_COLUMN = 10_000

_DATE = r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
_UNIT_ORDER = ("s", "ms", "us", "ns")
_FRACTION_DIGITS = {"s": 0, "ms": 3, "us": 6, "ns": 9}
_ZONE = r"(Z|[+-]([01][0-9]|2[0-3])(:?[0-5][0-9])?)"
_STRING_PATTERNS = {
    "int": r"^-?[0-9]{1,20}$",
    "float": r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$",
    "bool": r"^(true|false|True|False|TRUE|FALSE|1|0)$",
    "date": f"^{_DATE}$",
}


@dataclass(frozen=True)
class RowViolation:
    """A row that breaks the declared input schema: which row, which column, why (no value)."""

    row_index: int
    column: str
    reason: str


@dataclass(frozen=True)
class ConformedColumn:
    """The column in its declared type (bad rows null) and, per reason, the rows that broke it."""

    values: pa.ChunkedArray
    problems: tuple[tuple[str, pa.ChunkedArray | pa.Array], ...]


def conform_column(values: pa.ChunkedArray, column: ColumnSpec) -> ConformedColumn:
    """Bring one batch column to ``column.type`` and flag every row that breaks ``column``."""
    values = _plain(values)
    problems: list[tuple[str, pa.ChunkedArray | pa.Array]] = []
    converted, wrong_type = _to_declared_type(values, column)
    if wrong_type is not None:
        problems.append((f"wrong type: expected {column.type_name}", wrong_type))
    if pa.types.is_floating(column.type) and len(converted):
        nan = pc.is_nan(converted)
        if pc.any(nan).as_py():
            problems.append(("NaN in a float column", pc.fill_null(nan, False)))
            converted = pc.if_else(nan, pa.scalar(None, column.type), converted)
    if not column.nullable and values.null_count:
        problems.append(("null in a non-nullable column", pc.is_null(values)))
    problems.extend(_range_problems(converted, column))
    return ConformedColumn(converted, tuple(problems))


def _plain(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dictionary-decoded, with large/view strings as plain strings."""
    if pa.types.is_dictionary(values.type):
        values = pc.cast(values, values.type.value_type)
    if pa.types.is_large_string(values.type) or pa.types.is_string_view(values.type):
        values = pc.cast(values, pa.string())
    return values


def _all_wrong(values: pa.ChunkedArray, target: pa.DataType) -> tuple[pa.ChunkedArray, pa.Array]:
    return (pa.chunked_array([pa.nulls(len(values), target)], type=target),
            pc.is_valid(values))


def _to_declared_type(values: pa.ChunkedArray, column: ColumnSpec):
    target, actual = column.type, values.type
    if actual == target:
        return values, None
    if pa.types.is_null(actual):
        return pc.cast(values, target), None
    if pa.types.is_string(actual):
        return _from_strings(values, column)
    if is_numeric(target) and is_numeric(actual):
        return _numeric_to_numeric(values, target)
    if pa.types.is_date32(target) and pa.types.is_date64(actual):
        return pc.cast(values, target), None
    if pa.types.is_timestamp(target) and pa.types.is_timestamp(actual):
        if (target.tz is None) != (actual.tz is None):
            return _all_wrong(values, target)
        if _UNIT_ORDER.index(target.unit) < _UNIT_ORDER.index(actual.unit):
            return pc.cast(values, target, safe=False), None   # coarser: truncates, no overflow
        return _cast_isolating(values, target, column)
    return _all_wrong(values, target)


def _integer_bounds(arrow_type: pa.DataType) -> tuple[int, int]:
    bits = arrow_type.bit_width
    if pa.types.is_signed_integer(arrow_type):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _numeric_to_numeric(values: pa.ChunkedArray, target: pa.DataType):
    actual = values.type
    if pa.types.is_floating(target):
        return pc.cast(values, target, safe=False), None
    low, high = _integer_bounds(target)
    if pa.types.is_integer(actual):
        actual_low, actual_high = _integer_bounds(actual)
        bad = None
        if low > actual_low:
            bad = pc.less(values, pa.scalar(low, actual))
        if high < actual_high:
            above = pc.greater(values, pa.scalar(high, actual))
            bad = above if bad is None else pc.or_(bad, above)
    else:
        in_range = pc.and_(pc.greater_equal(values, float(low)),
                           pc.less(values, float(high) + 1.0))
        whole = pc.equal(values, pc.floor(values))
        bad = pc.and_(pc.is_valid(values), pc.invert(pc.and_(in_range, whole)))
        bad = pc.fill_null(bad, True)
    if bad is None or not pc.any(bad).as_py():
        return pc.cast(values, target, safe=False), None
    bad = pc.fill_null(bad, False)
    kept = pc.if_else(bad, pa.scalar(None, actual), values)
    return pc.cast(kept, target, safe=False), bad


def _string_pattern(target: pa.DataType) -> str:
    if pa.types.is_integer(target):
        return _STRING_PATTERNS["int"]
    if pa.types.is_floating(target):
        return _STRING_PATTERNS["float"]
    if pa.types.is_boolean(target):
        return _STRING_PATTERNS["bool"]
    if pa.types.is_date32(target):
        return _STRING_PATTERNS["date"]
    digits = _FRACTION_DIGITS[target.unit]
    fraction = rf"(\.[0-9]{{1,{digits}}})?" if digits else ""
    zone = _ZONE if target.tz is not None else ""
    return (rf"^{_DATE}([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9]{fraction})?)?{zone}$"
            if target.tz is None else
            rf"^{_DATE}[T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9]{fraction})?{zone}$")


def _from_strings(values: pa.ChunkedArray, column: ColumnSpec):
    target = column.type
    if not (is_numeric(target) or pa.types.is_boolean(target) or pa.types.is_date32(target)
            or pa.types.is_timestamp(target)):
        return _all_wrong(values, target)
    ok = pc.match_substring_regex(values, _string_pattern(target))
    if pa.types.is_date32(target) or pa.types.is_timestamp(target):
        ok = pc.and_(ok, _real_calendar_date(values))
    ok = pc.fill_null(ok, False)
    bad = pc.and_(pc.is_valid(values), pc.invert(ok))
    candidates = pc.if_else(ok, values, pa.scalar(None, pa.string())) if pc.any(bad).as_py() \
        else values
    converted, isolated = _cast_isolating(candidates, target, column)
    if isolated is not None:
        bad = pc.or_(bad, isolated)
    return converted, bad if pc.any(bad).as_py() else None


def _real_calendar_date(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where the first 10 characters name a real day (no 30 February)."""
    day_text = pc.utf8_slice_codeunits(values, 0, 10)
    parsed = pc.strptime(day_text, format="%Y-%m-%d", unit="s", error_is_null=True)
    return pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), day_text)


def _cast_isolating(values: pa.ChunkedArray, target: pa.DataType, column: ColumnSpec):
    """Cast; if Arrow refuses, find the refused rows by bisection (bounded) and null them."""
    try:
        return pc.cast(values, target), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    flat = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    refused: list[int] = []
    pieces = _bisect_cast(flat, target, 0, refused, column)
    bad = pc.is_in(pa.array(np.arange(len(flat), dtype=np.int64)),
                   value_set=pa.array(refused, pa.int64()))
    return pa.chunked_array(pieces, type=target), bad


def _bisect_cast(values: pa.Array, target: pa.DataType, offset: int, refused: list[int],
                 column: ColumnSpec) -> list[pa.Array]:
    try:
        return [pc.cast(values, target)]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(values) == 1:
            refused.append(offset)
            if len(refused) > MAX_ISOLATED_PER_COLUMN:
                raise FeatureInputError(
                    f"column {column.name!r}: more than {MAX_ISOLATED_PER_COLUMN} values match "
                    f"the {column.type_name} pattern but do not convert") from None
            return [pa.nulls(1, target)]
    middle = len(values) // 2
    return (_bisect_cast(values.slice(0, middle), target, offset, refused, column)
            + _bisect_cast(values.slice(middle), target, offset + middle, refused, column))


def _range_problems(values: pa.ChunkedArray, column: ColumnSpec):
    problems = []
    if (column.min is not None or column.max is not None) and is_numeric(column.type) \
            and len(values):
        extremes = pc.min_max(values)
        low, high = extremes["min"].as_py(), extremes["max"].as_py()
        if column.min is not None and low is not None and low < column.min:
            problems.append((f"below the declared minimum {column.min}",
                             pc.fill_null(pc.less(values, column.min), False)))
        if column.max is not None and high is not None and high > column.max:
            problems.append((f"above the declared maximum {column.max}",
                             pc.fill_null(pc.greater(values, column.max), False)))
    if column.max_length is not None and pa.types.is_string(column.type) and len(values):
        lengths = pc.utf8_length(values)
        longest = pc.max(lengths).as_py()
        if longest is not None and longest > column.max_length:
            problems.append((f"longer than the declared max_length {column.max_length}",
                             pc.fill_null(pc.greater(lengths, column.max_length), False)))
    return problems
