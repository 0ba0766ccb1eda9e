"""Rows that break the declared input schema are reported and excluded; the rest proceed."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_workers.features import FeatureInputError, RowViolation, compile_spec

from .support import spec_for

COLUMNS = [
    {"name": "amount", "type": "float64", "nullable": False, "min": 0, "max": 1000},
    {"name": "n", "type": "int8"},
    {"name": "code", "type": "string", "max_length": 3},
    {"name": "at", "type": "timestamp[us, UTC]"},
]
FEATURES = [{"name": "a", "op": "passthrough", "input": "amount"},
            {"name": "n2", "op": "passthrough", "input": "n"},
            {"name": "c", "op": "passthrough", "input": "code"},
            {"name": "t", "op": "passthrough", "input": "at"}]


def _run(table: pa.Table):
    return compile_spec(spec_for(COLUMNS, FEATURES)).apply(table, {})


def test_each_kind_of_violation_is_named_and_the_row_excluded():
    table = pa.table({
        "amount": ["1.5", "abc", None, "-1", "1001", "nan", "7", "8", "9", "10"],
        "n": ["1", "2", "3", "4", "5", "6", "300", "2.5", "9", "10"],
        "code": ["ab", "ab", "ab", "ab", "ab", "ab", "ab", "ab", "abcd", "ab"],
        "at": ["2024-01-01T00:00:00Z"] * 9 + ["2024-02-30T00:00:00Z"],
    })
    result = _run(table)
    assert result.violations == [
        RowViolation(1, "amount", "wrong type: expected float64"),
        RowViolation(2, "amount", "null in a non-nullable column"),
        RowViolation(3, "amount", "below the declared minimum 0"),
        RowViolation(4, "amount", "above the declared maximum 1000"),
        RowViolation(5, "amount", "wrong type: expected float64"),
        RowViolation(6, "n", "wrong type: expected int8"),
        RowViolation(7, "n", "wrong type: expected int8"),
        RowViolation(8, "code", "longer than the declared max_length 3"),
        RowViolation(9, "at", "wrong type: expected timestamp[us, UTC]"),
    ]
    assert result.source_rows.to_pylist() == [0]
    assert result.table.to_pydict() == {
        "a": [1.5], "n2": [1], "c": ["ab"],
        "t": [dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)]}


def test_typed_input_violations_nan_float_to_int_and_naive_timestamps():
    table = pa.table({
        "amount": pa.array([1.0, float("nan"), 2.0], pa.float64()),
        "n": pa.array([1.0, 2.0, 1.5], pa.float64()),
        "code": pa.array(["a", "b", "c"]).dictionary_encode(),
        "at": pa.array([0, 1, 2], pa.timestamp("ns", tz="UTC")),
    })
    result = _run(table)
    assert result.violations == [RowViolation(1, "amount", "NaN in a float column"),
                                 RowViolation(2, "n", "wrong type: expected int8")]
    naive = table.set_column(3, "at", pa.array([0, 1, 2], pa.timestamp("us")))
    reasons = {(v.row_index, v.column) for v in _run(naive).violations}
    assert {(0, "at"), (1, "at"), (2, "at")} <= reasons


def test_one_violation_per_row_and_column_but_every_column_reported():
    table = pa.table({"amount": [None, 5.0], "n": ["x", "1"], "code": [None, "a"],
                      "at": [None, None]}).cast(pa.schema([
                          ("amount", pa.float64()), ("n", pa.string()), ("code", pa.string()),
                          ("at", pa.string())]))
    result = _run(table)
    assert result.violations == [RowViolation(0, "amount", "null in a non-nullable column"),
                                 RowViolation(0, "n", "wrong type: expected int8")]
    assert result.table.num_rows == 1


def test_a_missing_declared_column_is_an_input_error():
    with pytest.raises(FeatureInputError, match=r"lacks declared column.*code"):
        _run(pa.table({"amount": [1.0], "n": [1], "at": ["2024-01-01T00:00:00Z"]}))


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=False),
                               st.text(max_size=5)), max_size=40))
def test_every_row_is_either_output_or_violation(rows):
    texts = [None if r is None else (repr(r) if isinstance(r, float) else r) for r in rows]
    table = pa.table({"amount": pa.array(texts, pa.string()),
                      "n": pa.nulls(len(rows), pa.int8()), "code": pa.nulls(len(rows),
                                                                          pa.string()),
                      "at": pa.nulls(len(rows), pa.timestamp("us", "UTC"))})
    result = _run(table)
    bad = {v.row_index for v in result.violations}
    assert sorted(bad | set(result.source_rows.to_pylist())) == list(range(len(rows)))
    assert not bad & set(result.source_rows.to_pylist())
    for row, value in zip(result.source_rows.to_pylist(), result.table["a"].to_pylist(),
                          strict=True):
        assert 0 <= value <= 1000 and float(texts[row]) == value
