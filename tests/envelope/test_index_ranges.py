"""``index_ranges``: how a stream's records are named outside the stream (``<id>#0-2,5``)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from envelope import STREAM_RECORD_MARK, index_ranges


def _expand(text: str) -> list[int]:
    indices: list[int] = []
    for run in text.split(","):
        first, _, last = run.partition("-")
        indices.extend(range(int(first), int(last or first) + 1))
    return indices


@given(st.sets(st.integers(min_value=0, max_value=5000), min_size=1, max_size=200))
def test_the_ranges_name_exactly_the_indices(indices: set[int]) -> None:
    ordered = sorted(indices)
    text = index_ranges(ordered)
    assert _expand(text) == ordered
    assert STREAM_RECORD_MARK not in text and " " not in text
    # runs are maximal: no two runs touch
    runs = [_expand(run) for run in text.split(",")]
    assert all(later[0] > earlier[-1] + 1 for earlier, later in itertools.pairwise(runs))


def test_known_names_and_no_indices() -> None:
    assert index_ranges([3]) == "3"
    assert index_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    with pytest.raises(ValueError):
        index_ranges([])
