"""ParsedEnvelope: parse once, open without parsing again, and no way to pair a header with
other bytes (constructor, attributes, subclassing, pickling, a mutable input buffer)."""

from __future__ import annotations

import copy
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope import (
    EnvelopeAuthenticationError,
    EnvelopeFormatError,
    ParsedEnvelope,
    envelope_length,
    iter_open_batch,
    open_batch,
    open_record,
    parse_envelope,
    read_header,
    seal_batch,
    seal_record,
)
from tests.envelope.parse_counting import count_header_parses
from tests.envelope.support import DEK, OTHER_DEK, seal_arguments


@pytest.fixture
def header_parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    return count_header_parses(monkeypatch)


def _record(plaintext: bytes = b'{"amount": 1}', **overrides: object) -> bytes:
    return seal_record(plaintext, **seal_arguments(**overrides))


def _batch(plaintext: bytes = bytes(range(256)) * 20) -> bytes:
    return seal_batch(plaintext, **seal_arguments(), segment_size=1024)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=2048))
def test_opening_a_parsed_record_equals_opening_its_bytes(plaintext: bytes) -> None:
    sealed = _record(plaintext)
    assert open_record(parse_envelope(sealed), DEK) == open_record(sealed, DEK) == plaintext


@settings(max_examples=15, deadline=None)
@given(st.binary(max_size=5000))
def test_opening_a_parsed_batch_equals_opening_its_bytes(plaintext: bytes) -> None:
    sealed = _batch(plaintext)
    parsed = parse_envelope(sealed)
    assert open_batch(parsed, DEK) == open_batch(sealed, DEK) == plaintext
    assert list(iter_open_batch(parsed, DEK)) == list(iter_open_batch(sealed, DEK))


def test_it_carries_what_read_header_returns_and_the_exact_bytes() -> None:
    for sealed in (_record(), _batch()):
        parsed = parse_envelope(sealed)
        header, header_length = read_header(sealed)
        assert parsed.header == header
        assert parsed.header_length == header_length == parsed.layout.end
        assert parsed.data is sealed  # bytes are kept, not copied
        assert bytes(parsed.view) == sealed and parsed.view.readonly
        assert envelope_length(parsed) == envelope_length(sealed) == len(sealed)
        assert ParsedEnvelope(sealed) == parsed and hash(ParsedEnvelope(sealed)) == hash(parsed)
        assert parsed.header.record_id in repr(parsed) and sealed.hex() not in repr(parsed)


def test_opening_a_parsed_envelope_parses_no_header_again(header_parses: list[int]) -> None:
    record, batch = _record(), _batch()
    parsed_record, parsed_batch = parse_envelope(record), parse_envelope(batch)
    assert header_parses[0] == 2
    open_record(parsed_record, DEK)
    open_batch(parsed_batch, DEK)
    list(iter_open_batch(parsed_batch, DEK))
    envelope_length(parsed_record)
    assert header_parses[0] == 2
    open_record(record, DEK)  # bytes are still parsed, once per call
    assert header_parses[0] == 3


def test_bad_bytes_raise_the_same_typed_error_as_read_header() -> None:
    truncated = _record()[:60]
    with pytest.raises(EnvelopeFormatError, match="salt truncated") as from_read:
        read_header(truncated)
    with pytest.raises(EnvelopeFormatError, match="salt truncated") as from_parse:
        parse_envelope(truncated)
    assert str(from_parse.value) == str(from_read.value)
    with pytest.raises(TypeError, match="bytes-like"):
        parse_envelope("SBEV")  # type: ignore[arg-type]


def test_a_parsed_envelope_is_still_checked_and_authenticated_when_opened() -> None:
    record, batch = _record(), _batch()
    with pytest.raises(EnvelopeFormatError, match="expected 'record'"):
        open_record(parse_envelope(batch), DEK)
    with pytest.raises(EnvelopeFormatError, match="expected 'batch'"):
        open_batch(parse_envelope(record), DEK)
    with pytest.raises(EnvelopeFormatError, match="trailing bytes"):
        open_record(parse_envelope(record + b"\x00"), DEK)
    with pytest.raises(EnvelopeAuthenticationError):
        open_batch(parse_envelope(batch[:-(5 + 1024 + 16)]), DEK)  # final segment dropped
    with pytest.raises(EnvelopeAuthenticationError):
        open_record(parse_envelope(record), OTHER_DEK)
    tampered = bytearray(record)
    tampered[-1] ^= 0x01
    with pytest.raises(EnvelopeAuthenticationError):
        open_record(parse_envelope(bytes(tampered)), DEK)


def test_the_constructor_parses_so_a_header_cannot_be_paired_with_other_bytes() -> None:
    eu, us = _record(region="eu"), _record(region="us")
    parsed = ParsedEnvelope(us)
    assert parsed.header.region == "us" and parsed.data == us
    with pytest.raises(TypeError):
        ParsedEnvelope(read_header(eu)[0], us)  # type: ignore[call-arg]
    with pytest.raises(AttributeError, match="immutable"):
        parsed._data = eu  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        parsed._header = read_header(eu)[0]  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del parsed._view
    with pytest.raises(AttributeError):
        parsed.header = read_header(eu)[0]  # type: ignore[misc]
    assert open_record(parsed, DEK) == b'{"amount": 1}' and parsed.header.region == "us"


def test_it_cannot_be_subclassed_to_override_its_header() -> None:
    with pytest.raises(TypeError, match="cannot be subclassed"):
        type("ForgedEnvelope", (ParsedEnvelope,), {})


def test_a_mutable_input_buffer_is_copied_before_parsing() -> None:
    sealed = _record(region="eu")
    buffer = bytearray(sealed)
    parsed = parse_envelope(buffer)
    buffer[:] = _record(region="us")
    assert parsed.data == sealed and parsed.header.region == "eu"
    assert open_record(parsed, DEK) == b'{"amount": 1}'
    assert parse_envelope(memoryview(sealed)).data == sealed


def test_pickling_and_copying_parse_the_bytes_again() -> None:
    sealed = _record()
    parsed = parse_envelope(sealed)
    pickled = pickle.loads(pickle.dumps(parsed))  # noqa: S301 - our own bytes
    for clone in (pickled, copy.copy(parsed), copy.deepcopy(parsed)):
        assert type(clone) is ParsedEnvelope and clone == parsed
        assert clone.header == parsed.header and open_record(clone, DEK) == b'{"amount": 1}'
    forged = pickle.dumps(parsed).replace(b"SBEV", b"XBEV")
    with pytest.raises(EnvelopeFormatError, match="bad magic"):
        pickle.loads(forged)  # noqa: S301 - the point: unpickling parses again
