"""generalize, fill_null, passthrough and drop against plain Python."""

from __future__ import annotations

import datetime as dt
import math

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_workers.features import compile_spec

from .support import assert_close, run_one, spec_for

SETTINGS = settings(max_examples=40, deadline=None)


@SETTINGS
@given(values=st.lists(st.none() | st.text(max_size=10), max_size=30), n=st.integers(1, 6))
def test_generalize_truncates_strings(values, n):
    out = run_one("string", values, {"op": "generalize", "length": n, "allow_identifier": True})
    assert out["f"] == [None if v is None else v[:n] for v in values]


@SETTINGS
@given(values=st.lists(st.none() | st.integers(-10**9, 10**9), max_size=30),
       step=st.integers(1, 1000))
def test_generalize_floors_integers_to_a_step(values, step):
    out = run_one("int64", values, {"op": "generalize", "step": step})["f"]
    assert out == [None if v is None else (v // step) * step for v in values]


@SETTINGS
@given(values=st.lists(st.none() | st.floats(-1e6, 1e6), max_size=30),
       step=st.sampled_from([0.5, 2.5, 10.0]))
def test_generalize_floors_floats_to_a_step(values, step):
    out = run_one("float64", values, {"op": "generalize", "step": step})["f"]
    assert_close(out, [None if v is None else math.floor(v / step) * step for v in values])


@SETTINGS
@given(values=st.lists(st.none() | st.datetimes(
    min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1),
    timezones=st.just(dt.timezone.utc)), max_size=30))
def test_generalize_coarsens_timestamps(values):
    hours = run_one("timestamp[us, UTC]", values, {"op": "generalize", "unit": "hour"})["f"]
    months = run_one("timestamp[us, UTC]", values, {"op": "generalize", "unit": "month"})["f"]
    assert hours == [None if v is None else v.replace(minute=0, second=0, microsecond=0)
                     for v in values]
    assert months == [None if v is None else
                      v.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
                      for v in values]


@SETTINGS
@given(values=st.lists(st.none() | st.integers(-100, 100), max_size=30))
def test_fill_null_constant_and_strategies(values):
    constant = run_one("int32", values, {"op": "fill_null", "value": 7})["f"]
    assert constant == [7 if v is None else v for v in values]
    present = [v for v in values if v is not None]
    for strategy, fill in (("min", min(present, default=None)),
                           ("max", max(present, default=None))):
        out = run_one("int32", values, {"op": "fill_null", "strategy": strategy})["f"]
        assert out == [fill if v is None else v for v in values]
    forward = run_one("int32", values, {"op": "fill_null", "strategy": "forward"})["f"]
    last, expected = None, []
    for v in values:
        last = v if v is not None else last
        expected.append(last)
    assert forward == expected


def test_fill_null_mean_on_floats():
    out = run_one("float64", [1.0, None, 3.0], {"op": "fill_null", "strategy": "mean"})["f"]
    assert out == [1.0, 2.0, 3.0]
    assert run_one("float64", [None, None], {"op": "fill_null", "strategy": "mean"})["f"] == [
        None, None]


def test_other_ops_keep_nulls_and_empty_batches_work():
    for feature, column_type in (({"op": "standardize", "mean": 0, "std": 1}, "float64"),
                                 ({"op": "one_hot", "vocabulary": ["a"]}, "string"),
                                 ({"op": "pseudonymize", "key": "k"}, "string"),
                                 ({"op": "date_parts", "parts": ["year"]}, "timestamp[us, UTC]"),
                                 ({"op": "generalize", "unit": "day"}, "timestamp[us, UTC]")):
        out = run_one(column_type, [], feature, keys={"k": bytes(16)})
        assert all(v == [] for v in out.values())


def test_passthrough_drop_and_unconsumed_columns():
    columns = [{"name": "email", "type": "string", "identifier": True},
               {"name": "a", "type": "int64"}, {"name": "b", "type": "string"},
               {"name": "c", "type": "float64"}]
    spec = spec_for(columns, [{"name": "a2", "op": "passthrough", "input": "a"},
                              {"name": "no_c", "op": "drop", "input": "c"}],
                    )
    table = pa.table({"email": ["x@y"], "a": [1], "b": ["keep?"], "c": [1.5], "extra": [0]})
    assert compile_spec(spec).apply(table, {}).table.column_names == ["a2"]
    document = spec.to_json_document()
    document["input"]["unconsumed_columns"] = "passthrough"
    compiled = compile_spec(type(spec).from_dict(document))
    result = compiled.apply(table, {})
    assert result.table.column_names == ["a2", "b"]
    assert result.table.to_pydict() == {"a2": [1], "b": ["keep?"]}
