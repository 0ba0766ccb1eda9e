"""Helpers for the feature tests: build one-feature specs and run them on Python lists."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from enclave_workers.features import FeatureSpec, compile_spec

KEY = bytes(range(32))


def spec_for(columns: list[dict[str, Any]], features: list[dict[str, Any]],
             **extra: Any) -> FeatureSpec:
    return FeatureSpec.from_dict({"version": 1, "input": {"columns": columns},
                                  "features": features, **extra})


def run_one(column_type: str, values: list, feature: dict[str, Any], *,
            arrow_type: pa.DataType | None = None, keys: dict[str, bytes] | None = None,
            extra_columns: dict[str, tuple[str, list]] | None = None) -> dict[str, list]:
    """Run a single feature over one column ``x``; return the output columns as lists."""
    columns = [{"name": "x", "type": column_type}]
    data = {"x": pa.array(values, type=arrow_type)}
    for name, (type_text, column_values) in (extra_columns or {}).items():
        columns.append({"name": name, "type": type_text})
        data[name] = pa.array(column_values)
    compiled = compile_spec(spec_for(columns, [{"name": "f", "input": "x", **feature}]))
    table = pa.table(data).cast(pa.schema([
        pa.field(c["name"], compiled.spec.column(c["name"]).type) for c in columns]))
    result = compiled.apply(table, keys or {})
    assert result.violations == []
    assert result.table.schema.equals(compiled.output_schema, check_metadata=False)
    return result.table.to_pydict()


def assert_close(actual: list, expected: list, *, rel: float = 1e-12, abs_: float = 1e-12):
    """Element-wise: the same nulls, and numbers equal within tolerance."""
    assert len(actual) == len(expected)
    for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
        if e is None or a is None:
            assert a is None and e is None, f"row {index}: {a!r} != {e!r}"
        else:
            assert math.isclose(a, e, rel_tol=rel, abs_tol=abs_), f"row {index}: {a} != {e}"
