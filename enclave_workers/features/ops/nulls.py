"""``fill_null``: the one op that turns nulls into values (elsewhere nulls stay null).

What it does: fills with a constant ``value`` (of the column's type; dates and timestamps as ISO
8601 text, zoned timestamps with their offset), or with a ``strategy``: ``forward`` / ``backward``
(the previous / next non-null value in the batch), ``min`` / ``max`` / ``mean`` (of the batch's
non-null values; ``mean`` only for float columns). A batch with no non-null value stays null.

What it does not: the strategies depend on the batch's other rows, by definition; use a constant
``value`` where a row's features must not depend on its neighbours. The output carries raw
values, so an identifier column needs ``allow_identifier: true``.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..spec import ColumnSpec, FeatureDef, FeatureSpec
from ..types import is_numeric, is_temporal
from .base import BoundFeature, OpSpecError, operation, param, require, single_output


def _fill_scalar(value: Any, column: ColumnSpec) -> pa.Scalar:
    arrow_type = column.type
    kind_ok = (
        (pa.types.is_string(arrow_type) and isinstance(value, str))
        or (pa.types.is_boolean(arrow_type) and isinstance(value, bool))
        or (pa.types.is_integer(arrow_type) and isinstance(value, int)
            and not isinstance(value, bool))
        or (pa.types.is_floating(arrow_type) and isinstance(value, int | float)
            and not isinstance(value, bool))
        or (is_temporal(arrow_type) and isinstance(value, str))
    )
    require(kind_ok, "value", f"value {value!r} is not a {column.type_name} "
                              "(dates and timestamps are ISO 8601 text)")
    try:
        if is_temporal(arrow_type):
            return pc.cast(pa.scalar(value), arrow_type)
        return pa.scalar(value, type=arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError):
        raise OpSpecError("value", f"value {value!r} does not fit {column.type_name}") from None


def _fill_by_strategy(strategy: str, x: pa.ChunkedArray) -> pa.ChunkedArray:
    if not x.null_count:
        return x
    if strategy == "forward":
        return pc.fill_null_forward(x)
    if strategy == "backward":
        return pc.fill_null_backward(x)
    if strategy == "mean":
        fill = pc.mean(x)
    else:
        fill = pc.min_max(x)["min" if strategy == "min" else "max"]
    if not fill.is_valid:
        return x
    return pc.fill_null(x, pc.cast(fill, x.type))


@operation("fill_null", reveals_input=True, summary="replace nulls by a value or a strategy")
def bind_fill_null(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    strategy = param(feature, "strategy")
    if strategy is None:
        fill = _fill_scalar(param(feature, "value"), column)
        return single_output(feature, column, column.type, lambda x: pc.fill_null(x, fill))
    if strategy == "mean":
        require(pa.types.is_floating(column.type), "strategy",
                f"strategy 'mean' needs a float column, {column.name!r} is {column.type_name}")
    if strategy in ("min", "max"):
        require(is_numeric(column.type) or is_temporal(column.type)
                or pa.types.is_string(column.type), "strategy",
                f"strategy {strategy!r} needs an ordered column, "
                f"{column.name!r} is {column.type_name}")
    return single_output(feature, column, column.type, lambda x: _fill_by_strategy(strategy, x))
