"""Numeric scaling and binning: ``standardize``, ``min_max``, ``clip``, ``log1p``, ``bucketize``.

What it does, each with ``pyarrow.compute`` over whole columns (nulls stay null):

- ``standardize``: ``(x - mean) / std`` as float64, with the mean and std given in the spec.
- ``min_max``: ``(x - min) / (max - min)`` as float64; ``clip: true`` then bounds it to [0, 1].
- ``clip``: ``min(max(x, lower), upper)``; an integer column with integer bounds that fit its
  type keeps its type, otherwise float64.
- ``log1p``: ``ln(1 + x)`` as float64; ``x <= -1`` (outside the domain) becomes null.
- ``bucketize``: int32 ``i`` with ``boundaries[i-1] <= x < boundaries[i]``: 0 below the first
  boundary, ``len(boundaries)`` at or above the last.

What it does not: nothing here learns statistics from the batch (a batch's output must not
depend on what else was in it); the parameters are configuration.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ..spec import ColumnSpec, FeatureDef, FeatureSpec
from ..types import is_numeric
from .base import BoundFeature, operation, param, require, single_output


def _require_numeric(feature: FeatureDef, column: ColumnSpec) -> None:
    require(is_numeric(column.type), "input",
            f"{feature.op} needs a numeric column, {column.name!r} is {column.type_name}")


def _as_float(values: pa.ChunkedArray) -> pa.ChunkedArray:
    return values if values.type == pa.float64() else pc.cast(values, pa.float64())


@operation("standardize", reveals_input=False, summary="(x - mean) / std")
def bind_standardize(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    _require_numeric(feature, column)
    mean, std = float(param(feature, "mean")), float(param(feature, "std"))
    return single_output(feature, column, pa.float64(),
                         lambda x: pc.divide(pc.subtract(_as_float(x), mean), std))


@operation("min_max", reveals_input=False, summary="(x - min) / (max - min)")
def bind_min_max(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    _require_numeric(feature, column)
    low, high = float(param(feature, "min")), float(param(feature, "max"))
    require(high > low, "max", f"max ({high}) must be greater than min ({low})")
    span = high - low
    clip = bool(param(feature, "clip", False))

    def scale(x: pa.ChunkedArray) -> pa.ChunkedArray:
        scaled = pc.divide(pc.subtract(_as_float(x), low), span)
        if clip:
            scaled = pc.min_element_wise(pc.max_element_wise(scaled, 0.0, skip_nulls=False),
                                         1.0, skip_nulls=False)
        return scaled

    return single_output(feature, column, pa.float64(), scale)


def _fits(value: object, arrow_type: pa.DataType) -> bool:
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    try:
        pa.scalar(value, type=arrow_type)
    except (pa.ArrowInvalid, OverflowError):
        return False
    return True


@operation("clip", reveals_input=False, summary="bound x to [lower, upper]")
def bind_clip(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    _require_numeric(feature, column)
    lower, upper = param(feature, "lower"), param(feature, "upper")
    if lower is not None and upper is not None:
        require(lower <= upper, "upper", f"upper ({upper}) is below lower ({lower})")
    bounds = [b for b in (lower, upper) if b is not None]
    keep_type = pa.types.is_integer(column.type) and all(_fits(b, column.type) for b in bounds)
    out_type = column.type if keep_type else pa.float64()

    def clip(x: pa.ChunkedArray) -> pa.ChunkedArray:
        x = x if keep_type else _as_float(x)
        if lower is not None:
            x = pc.max_element_wise(x, pa.scalar(lower, type=out_type), skip_nulls=False)
        if upper is not None:
            x = pc.min_element_wise(x, pa.scalar(upper, type=out_type), skip_nulls=False)
        return x

    return single_output(feature, column, out_type, clip)


@operation("log1p", reveals_input=False, summary="ln(1 + x); null for x <= -1")
def bind_log1p(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    _require_numeric(feature, column)

    def log1p(x: pa.ChunkedArray) -> pa.ChunkedArray:
        x = _as_float(x)
        result = pc.log1p(x)
        outside = pc.less_equal(x, -1.0)
        if pc.any(outside).as_py():
            result = pc.if_else(outside, pa.scalar(None, pa.float64()), result)
        return result

    return single_output(feature, column, pa.float64(), log1p)


@operation("bucketize", reveals_input=False, summary="index of the boundary interval, int32")
def bind_bucketize(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    _require_numeric(feature, column)
    boundaries = [float(b) for b in param(feature, "boundaries")]
    for i in range(1, len(boundaries)):
        require(boundaries[i] > boundaries[i - 1], "boundaries",
                f"boundaries must strictly increase (item {i}: {boundaries[i]} after "
                f"{boundaries[i - 1]})")

    def bucketize(x: pa.ChunkedArray) -> pa.ChunkedArray:
        x = _as_float(x)
        index = pc.cast(pc.greater_equal(x, boundaries[0]), pa.int32())
        for boundary in boundaries[1:]:
            index = pc.add(index, pc.cast(pc.greater_equal(x, boundary), pa.int32()))
        return index

    return single_output(feature, column, pa.int32(), bucketize)
