"""one_hot and categorical against plain Python."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from .support import run_one

VOCAB = ["DE", "FR", "US"]
batches = st.lists(st.none() | st.sampled_from(["DE", "FR", "US", "GB", "de", ""]), max_size=40)
SETTINGS = settings(max_examples=40, deadline=None)


@SETTINGS
@given(values=batches)
def test_one_hot_matches_python(values):
    out = run_one("string", values, {"op": "one_hot", "vocabulary": VOCAB})
    assert list(out) == ["f__DE", "f__FR", "f__US", "f__oov"]
    for entry in VOCAB:
        assert out[f"f__{entry}"] == [None if v is None else int(v == entry) for v in values]
    assert out["f__oov"] == [None if v is None else int(v not in VOCAB) for v in values]


@SETTINGS
@given(values=batches, oov=st.sampled_from([None, -1, 99]))
def test_categorical_matches_python(values, oov):
    feature = {"op": "categorical", "vocabulary": VOCAB}
    if oov is not None:
        feature["oov_code"] = oov
    out = run_one("string", values, feature)["f"]
    oov_code = len(VOCAB) if oov is None else oov
    assert out == [None if v is None else (VOCAB.index(v) if v in VOCAB else oov_code)
                   for v in values]


@SETTINGS
@given(values=st.lists(st.none() | st.integers(0, 6), max_size=30))
def test_categorical_integer_vocabulary(values):
    out = run_one("int64", values, {"op": "categorical", "vocabulary": [1, 3, 5]})["f"]
    assert out == [None if v is None else ([1, 3, 5].index(v) if v in (1, 3, 5) else 3)
                   for v in values]
