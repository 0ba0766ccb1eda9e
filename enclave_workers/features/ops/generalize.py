"""``generalize``: make a value less precise, so that it identifies fewer people.

What it does, by the parameter given (exactly one):

- ``length: N`` on a string column: the first N characters (code points).
- ``step: S`` on a numeric column: rounded *down* to a multiple of S (``floor(x / S) * S``); an
  integer column with an integer step keeps its type, otherwise float64.
- ``unit: U`` on a timestamp or date32 column: the start of its year, quarter, month, week
  (weeks start on Monday), day, hour, minute or second, in the column's own time zone.

What it does not: no randomization; nulls stay null. The output is a coarsened raw value, so an
identifier column needs ``allow_identifier: true``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ..spec import ColumnSpec, FeatureDef, FeatureSpec
from ..types import is_numeric, is_temporal
from .base import BoundFeature, operation, param, require, single_output

_DATE_UNITS = ("year", "quarter", "month", "week", "day")


def floor_to_step_int(x: pa.ChunkedArray, step: int) -> pa.ChunkedArray:
    """Integer floor to a multiple of ``step`` (Arrow's integer division truncates to zero)."""
    quotient = pc.divide(x, pa.scalar(step, x.type))
    remainder = pc.subtract(x, pc.multiply(quotient, pa.scalar(step, x.type)))
    quotient = pc.subtract(quotient, pc.cast(pc.less(remainder, 0), x.type))
    return pc.multiply(quotient, pa.scalar(step, x.type))


@operation("generalize", reveals_input=True, summary="truncate text, floor numbers or times")
def bind_generalize(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    length, step, unit = param(feature, "length"), param(feature, "step"), param(feature, "unit")
    if length is not None:
        require(pa.types.is_string(column.type), "length",
                f"length generalizes strings, {column.name!r} is {column.type_name}")
        return single_output(feature, column, pa.string(),
                             lambda x: pc.utf8_slice_codeunits(x, 0, length))
    if step is not None:
        require(is_numeric(column.type), "step",
                f"step generalizes numbers, {column.name!r} is {column.type_name}")
        if pa.types.is_integer(column.type) and isinstance(step, int) and not isinstance(
                step, bool):
            try:
                pa.scalar(step, type=column.type)
            except (pa.ArrowInvalid, OverflowError):
                require(False, "step", f"step {step} does not fit {column.type_name}")
            return single_output(feature, column, column.type,
                                 lambda x: floor_to_step_int(x, step))
        step_f = float(step)
        return single_output(
            feature, column, pa.float64(),
            lambda x: pc.multiply(pc.floor(pc.divide(pc.cast(x, pa.float64()), step_f)), step_f))
    require(is_temporal(column.type), "unit",
            f"unit generalizes timestamps and dates, {column.name!r} is {column.type_name}")
    if pa.types.is_date32(column.type):
        require(unit in _DATE_UNITS, "unit", f"{column.name!r} is a date: unit must be one of "
                                             f"{', '.join(_DATE_UNITS)}")
    return single_output(feature, column, column.type,
                         lambda x: pc.floor_temporal(x, unit=unit))
