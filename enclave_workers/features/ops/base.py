"""What every feature operation provides: a binder that checks a feature against its input
column and returns a ``BoundFeature`` (output fields + a vectorized compute function).

What it does: the registry of op names, the ``BoundFeature`` record, and the small helpers that
binders share (type checks, typed null arrays).

What it does not: no op logic; each op family lives in its own module of this package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..spec import ColumnSpec, FeatureDef, FeatureSpec

Columns = Mapping[str, pa.ChunkedArray]
Keys = Mapping[str, bytes]
ComputeFn = Callable[[Columns, Keys], Sequence[pa.Array | pa.ChunkedArray]]


class OpSpecError(Exception):
    """A binder's complaint about one field of a feature; the compiler adds path and line."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class BoundFeature:
    """A feature checked against its input: what it outputs, reads, needs, and how to compute."""

    feature: FeatureDef
    outputs: tuple[pa.Field, ...]
    inputs: tuple[str, ...]
    key_names: tuple[str, ...]
    compute: ComputeFn


@dataclass(frozen=True)
class OpInfo:
    name: str
    binder: Callable[[FeatureDef, ColumnSpec, FeatureSpec], BoundFeature]
    reveals_input: bool
    summary: str


OPERATIONS: dict[str, OpInfo] = {}


def operation(name: str, *, reveals_input: bool, summary: str) -> Callable:
    """Register a binder under an op name. ``reveals_input``: the output carries raw values,
    so the op may not read an identifier column unless the feature says ``allow_identifier``."""

    def register(binder: Callable[[FeatureDef, ColumnSpec, FeatureSpec], BoundFeature]):
        if name in OPERATIONS:
            raise RuntimeError(f"feature op {name!r} registered twice")
        OPERATIONS[name] = OpInfo(name, binder, reveals_input, summary)
        return binder

    return register


def single_output(feature: FeatureDef, column: ColumnSpec, arrow_type: pa.DataType,
                  compute: Callable[[pa.ChunkedArray], pa.Array | pa.ChunkedArray],
                  key_names: Sequence[str] = ()) -> BoundFeature:
    """The common case: one input column in, one column named after the feature out."""
    source = column.name

    def compute_one(columns: Columns, keys: Keys) -> list[pa.Array | pa.ChunkedArray]:
        return [compute(columns[source])]

    return BoundFeature(feature, (pa.field(feature.name, arrow_type),), (source,),
                        tuple(key_names), compute_one)


def require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise OpSpecError(field, message)


def param(feature: FeatureDef, name: str, default: Any = None) -> Any:
    return feature.params.get(name, default)
