"""``passthrough`` and ``drop``: a column out as it came in, or explicitly not at all.

What it does: ``passthrough`` copies a validated input column under the feature's name;
``drop`` records that a column is deliberately left out (it matters when the spec sets
``input.unconsumed_columns: passthrough``, and it documents intent either way).

What it does not: neither op transforms values. ``passthrough`` reveals raw values, so it may not
read an identifier column unless the feature sets ``allow_identifier: true``.
"""

from __future__ import annotations

from ..spec import ColumnSpec, FeatureDef, FeatureSpec
from .base import BoundFeature, operation, single_output


@operation("passthrough", reveals_input=True, summary="copy the column unchanged")
def bind_passthrough(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    return single_output(feature, column, column.type, lambda values: values)


@operation("drop", reveals_input=False, summary="leave the column out of the output")
def bind_drop(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    def compute_nothing(columns, keys) -> list:
        return []

    return BoundFeature(feature, (), (column.name,), (), compute_nothing)
