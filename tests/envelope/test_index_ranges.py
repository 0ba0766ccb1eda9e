"""``index_ranges`` / ``parse_index_ranges``: how a stream's records are named outside the
stream (``<stream id>#0-2,5``), and read back."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from envelope import MAX_STREAM_RECORDS, STREAM_RECORD_MARK, index_ranges, parse_index_ranges


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


@given(st.sets(st.integers(min_value=0, max_value=MAX_STREAM_RECORDS - 1), min_size=1))
def test_a_name_reads_back_to_its_indices(indices: set[int]) -> None:
    assert parse_index_ranges(index_ranges(sorted(indices))) == indices


@given(st.text(max_size=40))
def test_any_other_text_is_refused(text: str) -> None:
    parsed = parse_index_ranges(text)
    assert parsed is None or index_ranges(sorted(parsed)) == text


def test_known_names_and_no_indices() -> None:
    assert index_ranges([3]) == "3"
    assert index_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert parse_index_ranges("0-2,5,7-8") == {0, 1, 2, 5, 7, 8}
    with pytest.raises(ValueError):
        index_ranges([])


@pytest.mark.parametrize("text", [
    "", "3-", "-3", "5-2", "1,,2", "a", "1-2-3", "0x1", " 1", "\u00b2", "1-\u0663",
    f"0-{MAX_STREAM_RECORDS}", "0-99999999999999",
    "01", "2,1", "1,1", "0,1", "0-1,2", "3-3",  # not the one name of their set
])
def test_malformed_or_not_canonical_text_is_not_indices(text: str) -> None:
    assert parse_index_ranges(text) is None
