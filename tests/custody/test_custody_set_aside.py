"""The names dead letters and late lines give a stream's records, read back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from envelope import MAX_STREAM_RECORDS, index_ranges
from pipelines.custody_set_aside import is_envelope_id, parse_index_ranges


@given(st.sets(st.integers(min_value=0, max_value=MAX_STREAM_RECORDS - 1), min_size=1))
def test_index_ranges_read_back(indices: set[int]) -> None:
    assert parse_index_ranges(index_ranges(sorted(indices))) == indices


@given(st.text(max_size=40))
def test_other_text_is_refused_or_read_as_indices(text: str) -> None:
    parsed = parse_index_ranges(text)
    assert parsed is None or (parsed and parse_index_ranges(index_ranges(sorted(parsed)))
                              == parsed)


def test_malformed_ranges_are_not_indices() -> None:
    for text in ("", "3-", "-3", "5-2", "1,,2", "a", "1-2-3", "0x1", " 1",
                 f"0-{MAX_STREAM_RECORDS}", "0-99999999999999", "\u00b2", "1-\u0663"):
        assert parse_index_ranges(text) is None, text
    assert is_envelope_id("0" * 32) and not is_envelope_id("0" * 31)
    assert not is_envelope_id("A" * 32)
