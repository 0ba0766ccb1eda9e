"""The header-suffix cache of ``parse_header`` changes speed, never results.

For any damaged header, a parse with the cache primed by a header sharing its suffix gives
the same header and layout, or the same error type and message, as a parse with an empty
cache; headers built from the cache equal fully decoded ones field by field.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envelope.header as header_module
from envelope import EnvelopeError, seal_batch, seal_record
from envelope.header import parse_header
from tests.envelope.support import seal_arguments

ARGUMENTS = seal_arguments(context={"a": "1", "b": "2"})
RECORD = seal_record(os.urandom(40), **ARGUMENTS)
SIBLING = seal_record(b"sibling", **ARGUMENTS)  # same suffix, other salt and id


def outcome(data: bytes) -> object:
    try:
        header, layout = parse_header(data)
    except EnvelopeError as error:
        return type(error), str(error)
    return header, layout, dict(header.context)


def cold(monkeypatch: pytest.MonkeyPatch, data: bytes) -> object:
    monkeypatch.setattr(header_module, "_known_suffixes", ())
    return outcome(data)


def warm(data: bytes) -> object:
    parse_header(SIBLING)
    return outcome(data)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_damaged_headers_parse_the_same_with_and_without_the_cache(data: st.DataObject) -> None:
    damaged = bytearray(RECORD)
    if data.draw(st.booleans(), label="truncate"):
        damaged = damaged[: data.draw(st.integers(0, len(RECORD)), label="keep")]
    else:
        bit = data.draw(st.integers(0, len(RECORD) * 8 - 1), label="bit")
        damaged[bit // 8] ^= 1 << (bit % 8)
    with pytest.MonkeyPatch.context() as monkeypatch:
        expected = cold(monkeypatch, bytes(damaged))
        assert warm(bytes(damaged)) == expected


def test_cached_headers_equal_decoded_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for envelope in (RECORD, seal_batch(os.urandom(90), **seal_arguments(segment_size=32))):
        expected = cold(monkeypatch, envelope)
        assert header_module._known_suffixes  # the cold parse remembered the suffix
        assert outcome(envelope) == expected
        header = outcome(envelope)[0]
        assert header.record_id == envelope[8:24].hex()
        with pytest.raises(AttributeError):
            header.region = "us"  # still frozen


def test_the_cache_stays_small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(header_module, "_known_suffixes", ())
    for index in range(20):
        parse_header(seal_record(b"x", **seal_arguments(producer_id=f"p{index}")))
    assert len(header_module._known_suffixes) == header_module._SUFFIX_CACHE_SIZE
