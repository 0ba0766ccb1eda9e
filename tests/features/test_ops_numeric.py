"""Numeric ops against plain-Python computations on hypothesis batches (nulls, empties)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from .support import assert_close, run_one

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
float_batches = st.lists(st.none() | finite, max_size=40)
int_batches = st.lists(st.none() | st.integers(-10**6, 10**6), max_size=40)
SETTINGS = settings(max_examples=40, deadline=None)


@SETTINGS
@given(values=float_batches, mean=finite, std=st.floats(0.001, 1e4))
def test_standardize_matches_python(values, mean, std):
    out = run_one("float64", values, {"op": "standardize", "mean": mean, "std": std})["f"]
    expected = [None if v is None else (v - mean) / std for v in values]
    assert_close(out, expected)


@SETTINGS
@given(values=int_batches)
def test_standardize_accepts_integers(values):
    out = run_one("int64", values, {"op": "standardize", "mean": 2.0, "std": 4.0})["f"]
    assert out == [None if v is None else (v - 2.0) / 4.0 for v in values]


@SETTINGS
@given(values=float_batches, clip=st.booleans())
def test_min_max_matches_python(values, clip):
    out = run_one("float64", values, {"op": "min_max", "min": -50.0, "max": 150.0,
                                      "clip": clip})["f"]
    expected = []
    for v in values:
        if v is None:
            expected.append(None)
            continue
        scaled = (v + 50.0) / 200.0
        expected.append(min(max(scaled, 0.0), 1.0) if clip else scaled)
    assert_close(out, expected)


@SETTINGS
@given(values=int_batches, lower=st.integers(-1000, 0), upper=st.integers(0, 1000))
def test_clip_integers_keeps_type_and_nulls(values, lower, upper):
    out = run_one("int32", values, {"op": "clip", "lower": lower, "upper": upper})["f"]
    assert out == [None if v is None else min(max(v, lower), upper) for v in values]


@SETTINGS
@given(values=float_batches)
def test_clip_one_sided_float(values):
    out = run_one("float64", values, {"op": "clip", "upper": 3.5})["f"]
    assert out == [None if v is None else min(v, 3.5) for v in values]


@SETTINGS
@given(values=st.lists(st.none() | st.floats(-5, 1e6, allow_nan=False), max_size=40))
def test_log1p_matches_math_and_nulls_outside_domain(values):
    out = run_one("float64", values, {"op": "log1p"})["f"]
    expected = [None if v is None or v <= -1 else math.log1p(v) for v in values]
    assert_close(out, expected)


@SETTINGS
@given(values=float_batches,
       boundaries=st.lists(finite, min_size=1, max_size=8, unique=True).map(sorted))
def test_bucketize_matches_python(values, boundaries):
    out = run_one("float64", values, {"op": "bucketize", "boundaries": boundaries})["f"]
    expected = [None if v is None else sum(1 for b in boundaries if v >= b) for v in values]
    assert out == expected


def test_bucketize_edges_follow_the_definition():
    out = run_one("float64", [9.99, 10, 99.9, 100, 999, 1000, 5000, None],
                  {"op": "bucketize", "boundaries": [10, 100, 1000]})["f"]
    assert out == [0, 1, 1, 2, 2, 3, 3, None]
