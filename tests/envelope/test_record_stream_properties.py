"""Properties of record streams (docs/FORMAT.md section 13), with hypothesis: round trips;
every single-byte change is detected (structural, the stream's authentication error, or the
changed record's failure) and never yields a wrong plaintext; truncation at every length is a
structural error; on arbitrary bytes the readers raise nothing but EnvelopeError; limits."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envelope import (
    EnvelopeAuthenticationError,
    EnvelopeError,
    EnvelopeFormatError,
    EnvelopeLimitError,
    envelope_length,
    extract_stream_record,
    open_record_stream,
    open_stream_record,
    read_record_stream,
    read_stream_record,
    seal_record_stream,
)
from envelope.limits import MAX_EVENT_TIME_MS, MAX_STREAM_RECORDS
from tests.envelope.support import DEK, raw_header, seal_arguments

SMALL = [b"alpha", b"", b"gamma gamma", b"d" * 40]
SEALED = seal_record_stream(SMALL, event_times_ms=[1, None, 2**40, MAX_EVENT_TIME_MS],
                            **seal_arguments())
LAYOUT = read_record_stream(SEALED)
EXCERPT = extract_stream_record(SEALED, 2)

plaintext_lists = st.lists(st.binary(max_size=300), min_size=1, max_size=20)


@settings(max_examples=80, deadline=None)
@given(plaintexts=plaintext_lists, data=st.data())
def test_round_trip(plaintexts: list[bytes], data: st.DataObject) -> None:
    times = data.draw(st.lists(st.one_of(st.none(), st.integers(0, MAX_EVENT_TIME_MS)),
                               min_size=len(plaintexts), max_size=len(plaintexts)))
    sealed = seal_record_stream(plaintexts, event_times_ms=times, **seal_arguments())
    opened = open_record_stream(sealed, DEK)
    assert not opened.failures
    assert [r.plaintext for r in opened.records] == plaintexts
    assert [r.event_time_ms for r in opened.records] == [t or None for t in times]
    layout = read_record_stream(sealed)
    assert envelope_length(sealed) == layout.length == len(sealed)
    assert [r.record_id for r in opened.records] == list(layout.record_ids)
    index = data.draw(st.integers(0, len(plaintexts) - 1))
    assert open_stream_record(extract_stream_record(sealed, index), DEK) == opened.records[index]


def _check_detected(data: bytes) -> None:
    """Opening damaged bytes: a typed error, or failures; never a changed record."""
    try:
        opened = open_record_stream(data, DEK)
    except EnvelopeError:
        return
    assert opened.failures, "a changed byte went unnoticed"
    for failure in opened.failures:
        assert isinstance(failure.error, EnvelopeAuthenticationError)
    for record in opened.records:
        assert record.plaintext == SMALL[record.index]
        assert record.record_id == LAYOUT.record_ids[record.index]
        assert record.event_time_ms == LAYOUT.event_times_ms[record.index]


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_single_byte_change_is_detected(mask: int) -> None:
    for position in range(len(SEALED)):
        damaged = bytearray(SEALED)
        damaged[position] ^= mask
        _check_detected(bytes(damaged))


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), mask=st.integers(1, 255))
def test_any_byte_change_is_detected(position: int, mask: int) -> None:
    damaged = bytearray(SEALED)
    damaged[position % len(SEALED)] ^= mask
    _check_detected(bytes(damaged))


def test_a_changed_frame_byte_fails_only_its_record() -> None:
    for index, start in enumerate(LAYOUT.frame_offsets):
        # record id and ciphertext bytes: structure stays fine, the record fails alone
        for position in (*range(start + 4, start + 20), *range(start + 28,
                                                               LAYOUT.frame_end(index))):
            damaged = bytearray(SEALED)
            damaged[position] ^= 0x01
            opened = open_record_stream(bytes(damaged), DEK)
            assert [f.index for f in opened.failures] == [index]
            assert len(opened.records) == len(SMALL) - 1


def test_truncation_at_every_length_is_structural() -> None:
    for length in range(len(SEALED)):
        cut = SEALED[:length]
        for reader in (read_record_stream, envelope_length,
                       lambda data: open_record_stream(data, DEK)):
            with pytest.raises(EnvelopeFormatError):
                reader(cut)
    for length in range(len(EXCERPT)):
        with pytest.raises(EnvelopeFormatError):
            open_stream_record(EXCERPT[:length], DEK)


def _only_envelope_errors(data: bytes) -> None:
    for reader in (read_record_stream, envelope_length, read_stream_record,
                   lambda d: open_record_stream(d, DEK), lambda d: open_stream_record(d, DEK),
                   lambda d: extract_stream_record(d, 0)):
        with contextlib.suppress(EnvelopeError):  # anything else fails the test
            reader(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=600),
    st.binary(max_size=400).map(lambda body: SEALED[:LAYOUT.header_length] + body),
    st.binary(max_size=400).map(lambda body: raw_header(kind=3, segment_size=3) + body),
    st.binary(max_size=400).map(lambda body: EXCERPT[:9 + LAYOUT.header_length] + body),
    st.tuples(st.integers(0, len(SEALED)), st.binary(max_size=40)).map(
        lambda cut: SEALED[:cut[0]] + cut[1]),
))
def test_arbitrary_bytes_raise_only_envelope_errors(data: bytes) -> None:
    _only_envelope_errors(data)


@settings(max_examples=100, deadline=None)
@given(count=st.integers(0, 2**32 - 1))
def test_record_count_bounds(count: int) -> None:
    data = raw_header(kind=3, segment_size=count)
    if count == 0:
        with pytest.raises(EnvelopeFormatError, match="record count 0 is below 1"):
            read_record_stream(data)
    elif count > MAX_STREAM_RECORDS:
        with pytest.raises(EnvelopeLimitError, match="exceeds 65536"):
            read_record_stream(data)
    else:
        with pytest.raises(EnvelopeFormatError, match="truncated"):
            read_record_stream(data)


@settings(max_examples=100, deadline=None)
@given(length=st.integers(0, 2**32 - 1), event_time=st.integers(0, 2**64 - 1))
def test_frame_bounds_are_checked_before_anything_is_read(length: int, event_time: int
                                                          ) -> None:
    head = raw_header(kind=3, segment_size=1)
    frame = struct.pack(">I16sQ", length, b"\x01" * 16, event_time) + b"\x00" * 64
    try:
        layout = read_record_stream(head + frame)
    except EnvelopeLimitError:
        assert length > (1 << 20) + 16
    except EnvelopeFormatError:
        assert length < 16 or length != 64 or event_time > MAX_EVENT_TIME_MS
    else:
        assert length == 64 and event_time <= MAX_EVENT_TIME_MS
        assert layout.event_times_ms == (event_time or None,)
