"""Record streams (record profile 2, docs/FORMAT.md section 13): round trips, the layout read
without a key, per-record failures beside opened siblings, stream-level errors, limits,
excerpts for dead letters, rewrap, and the read_header/envelope_length integration."""

from __future__ import annotations

import os
import struct

import pytest

from envelope import (
    KIND_RECORD_STREAM,
    MAX_STREAM_RECORDS,
    EnvelopeAuthenticationError,
    EnvelopeError,
    EnvelopeFormatError,
    EnvelopeLimitError,
    StreamRecord,
    envelope_length,
    extract_stream_record,
    open_batch,
    open_record,
    open_record_stream,
    open_stream_record,
    parse_envelope,
    read_header,
    read_record_stream,
    read_stream_record,
    rewrap_envelope,
    rewrap_header,
    seal_record,
    seal_record_stream,
)
from envelope.limits import MAX_EVENT_TIME_MS, MAX_STREAM_RECORD_PLAINTEXT
from envelope.record_stream import FRAME_HEAD_LENGTH, FRAME_OVERHEAD
from tests.envelope.support import DEK, OTHER_DEK, WRAPPED, raw_header, seal_arguments

PLAINTEXTS = [b"first record", b"", b"x" * 300, b'{"customer_id":"c-0004"}']
TIMES = [1_767_323_045_000, None, 0, MAX_EVENT_TIME_MS]


def _stream(plaintexts: list[bytes] = PLAINTEXTS, **overrides: object) -> bytes:
    return seal_record_stream(plaintexts, **seal_arguments(**overrides))


def _flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1:]


def test_round_trip_keeps_order_ids_and_event_times() -> None:
    sealed = _stream(event_times_ms=TIMES)
    opened = open_record_stream(sealed, DEK)
    assert not opened.failures
    assert [r.plaintext for r in opened.records] == PLAINTEXTS
    assert [r.index for r in opened.records] == [0, 1, 2, 3]
    assert [r.event_time_ms for r in opened.records] == [1_767_323_045_000, None, None,
                                                         MAX_EVENT_TIME_MS]
    layout = read_record_stream(sealed)
    assert [r.record_id for r in opened.records] == list(layout.record_ids)
    assert len(set(layout.record_ids)) == 4 and all(len(i) == 16 for i in layout.record_ids)
    assert layout.event_times_ms == (1_767_323_045_000, None, None, MAX_EVENT_TIME_MS)
    assert opened.header.kind == KIND_RECORD_STREAM == "record-stream"
    assert opened.header.record_count == 4 and opened.header.segment_size == 4


def test_layout_offsets_and_exact_overhead() -> None:
    sealed = _stream()
    layout = read_record_stream(sealed)
    header, header_length = read_header(sealed)
    assert header.kind == KIND_RECORD_STREAM and header_length == layout.header_length
    assert layout.length == len(sealed) == envelope_length(sealed)
    assert envelope_length(sealed + b"next envelope") == len(sealed)
    assert len(sealed) == header_length + sum(len(p) + FRAME_OVERHEAD for p in PLAINTEXTS)
    assert FRAME_OVERHEAD == 44
    for index, plaintext in enumerate(PLAINTEXTS):
        start, end = layout.frame_offsets[index], layout.frame_end(index)
        assert end - start == FRAME_HEAD_LENGTH + len(plaintext) + 16
        assert struct.unpack_from(">I", sealed, start)[0] == len(plaintext) + 16
        assert sealed[start + 4:start + 20] == layout.record_ids[index]


def test_parsed_envelope_and_memoryview_inputs() -> None:
    sealed = _stream()
    for given in (parse_envelope(sealed), memoryview(sealed)):
        opened = open_record_stream(given, DEK)
        assert [r.plaintext for r in opened.records] == PLAINTEXTS
        assert read_record_stream(given).record_count == 4


def test_two_streams_of_the_same_records_share_no_byte_pattern() -> None:
    first, second = _stream(), _stream()
    assert read_header(first)[0].salt != read_header(second)[0].salt
    assert set(read_record_stream(first).record_ids).isdisjoint(
        read_record_stream(second).record_ids)


def test_a_damaged_frame_fails_only_its_record() -> None:
    sealed = _stream()
    layout = read_record_stream(sealed)
    for offset_in_frame in (4, 19, 27, FRAME_HEAD_LENGTH, -1):  # id, event time, ciphertext, tag
        index = 2
        start, end = layout.frame_offsets[index], layout.frame_end(index)
        position = (end + offset_in_frame) if offset_in_frame < 0 else start + offset_in_frame
        opened = open_record_stream(_flip(sealed, position), DEK)
        assert [r.index for r in opened.records] == [0, 1, 3]
        assert [r.plaintext for r in opened.records] == [PLAINTEXTS[0], PLAINTEXTS[1],
                                                         PLAINTEXTS[3]]
        [failure] = opened.failures
        assert failure.index == 2
        assert isinstance(failure.error, EnvelopeAuthenticationError)
        assert str(failure.error) == "envelope authentication failed"


def test_frames_cannot_be_swapped_or_moved_between_streams() -> None:
    sealed = _stream([b"aaaa", b"bbbb"])
    layout = read_record_stream(sealed)
    first = sealed[layout.frame_offsets[0]:layout.frame_offsets[1]]
    second = sealed[layout.frame_offsets[1]:]
    swapped = sealed[:layout.header_length] + second + first
    opened = open_record_stream(swapped, DEK)
    assert not opened.records and [f.index for f in opened.failures] == [0, 1]
    other = _stream([b"cccc", b"dddd"])
    other_layout = read_record_stream(other)
    grafted = other[:other_layout.frame_offsets[1]] + second
    opened = open_record_stream(grafted, DEK)
    assert [r.plaintext for r in opened.records] == [b"cccc"]
    assert [f.index for f in opened.failures] == [1]


@pytest.mark.parametrize("where", ["salt", "count", "context", "key block", "tag"])
def test_header_damage_fails_the_whole_stream(where: str) -> None:
    sealed = _stream()
    layout = read_record_stream(sealed)
    offset = {"salt": 60, "count": 123, "context": layout.core_end - 1,
              "key block": layout.core_end + 5, "tag": layout.header_length - 1}[where]
    damaged = _flip(sealed, offset)
    if where == "count":  # 4 -> 5 records committed: the body is now one frame short
        with pytest.raises(EnvelopeFormatError, match="truncated: 5 records committed, 4"):
            open_record_stream(damaged, DEK)
        return
    with pytest.raises(EnvelopeAuthenticationError):
        open_record_stream(damaged, DEK)


def test_wrong_dek_fails_the_whole_stream() -> None:
    with pytest.raises(EnvelopeAuthenticationError, match=r"^envelope authentication failed$"):
        open_record_stream(_stream(), OTHER_DEK)


def test_structural_errors_come_before_authentication() -> None:
    sealed = _stream()
    layout = read_record_stream(sealed)
    last = layout.frame_offsets[-1]
    cases = {
        "trailing": (sealed + b"\x00", "1 trailing bytes after the record stream"),
        "dropped frame": (sealed[:last], "truncated: 4 records committed, 3 present"),
        "cut head": (sealed[:last + 10], "record 3 frame head truncated"),
        "cut ciphertext": (sealed[:-1], "record 3 ciphertext truncated"),
        "short length": (sealed[:last] + struct.pack(">I", 15) + sealed[last + 4:],
                         "record 3 length 15 is below 16"),
        "event time": (sealed[:last + 20] + struct.pack(">Q", MAX_EVENT_TIME_MS + 1)
                       + sealed[last + 28:], "record 3 event time"),
        "duplicate id": (sealed[:last + 4] + layout.record_ids[0] + sealed[last + 20:],
                         "record 3 repeats record id"),
    }
    for name, (data, message) in cases.items():
        for key in (DEK, OTHER_DEK):  # a wrong key never masks damage
            with pytest.raises(EnvelopeFormatError, match=message):
                open_record_stream(data, key)
        with pytest.raises(EnvelopeFormatError, match=message):
            read_record_stream(data)
        assert name


def test_a_huge_claimed_length_is_a_limit_error() -> None:
    sealed = _stream()
    last = read_record_stream(sealed).frame_offsets[-1]
    data = sealed[:last] + struct.pack(">I", 0xFFFFFFFF) + sealed[last + 4:]
    with pytest.raises(EnvelopeLimitError, match="record 3 length 4294967295 exceeds"):
        read_record_stream(data)


def test_header_count_bounds() -> None:
    for count, error, message in ((0, EnvelopeFormatError, "record count 0 is below 1"),
                                  (MAX_STREAM_RECORDS + 1, EnvelopeLimitError,
                                   "record count 65537 exceeds 65536")):
        with pytest.raises(error, match=message):
            read_record_stream(raw_header(kind=3, segment_size=count))
    with pytest.raises(EnvelopeFormatError, match="record stream truncated"):
        read_record_stream(raw_header(kind=3, segment_size=MAX_STREAM_RECORDS))


def test_sealing_limits_are_checked_before_sealing() -> None:
    with pytest.raises(EnvelopeFormatError, match="at least one record"):
        _stream([])
    with pytest.raises(EnvelopeLimitError, match="record count 65537 exceeds 65536"):
        _stream([b""] * (MAX_STREAM_RECORDS + 1))
    with pytest.raises(EnvelopeLimitError, match="record 1 plaintext length"):
        _stream([b"", bytes(MAX_STREAM_RECORD_PLAINTEXT + 1)])
    with pytest.raises(EnvelopeLimitError, match="record stream length"):
        _stream([bytes(MAX_STREAM_RECORD_PLAINTEXT)] * 48)
    for times, message in (([1], "1 event times for 2 records"),
                           ([1, -1], "record 1 event time -1 is negative"),
                           ([1, MAX_EVENT_TIME_MS + 1], "record 1 event time"),
                           ([1, True], "record 1 event time must be int"),
                           ([1, 2.5], "record 1 event time must be int")):
        with pytest.raises(EnvelopeFormatError, match=message):
            _stream([b"a", b"b"], event_times_ms=times)


def test_other_kinds_are_refused_and_streams_are_not_records() -> None:
    record = seal_record(b"x", **seal_arguments())
    with pytest.raises(EnvelopeFormatError, match="expected 'record-stream'"):
        open_record_stream(record, DEK)
    sealed = _stream()
    with pytest.raises(EnvelopeFormatError, match="expected 'record'"):
        open_record(sealed, DEK)
    with pytest.raises(EnvelopeFormatError, match="expected 'batch'"):
        open_batch(sealed, DEK)


def test_excerpt_keeps_one_record_sealed_and_opens_alone() -> None:
    sealed = _stream(event_times_ms=TIMES)
    layout = read_record_stream(sealed)
    for index in range(4):
        excerpt = extract_stream_record(sealed, index)
        assert excerpt[:4] == b"SBRX"
        assert not PLAINTEXTS[index] or PLAINTEXTS[index] not in excerpt
        described = read_stream_record(excerpt)
        assert (described.index, described.record_id) == (index, layout.record_ids[index])
        assert described.event_time_ms == layout.event_times_ms[index]
        assert open_stream_record(excerpt, DEK) == StreamRecord(
            index, layout.record_ids[index], layout.event_times_ms[index], PLAINTEXTS[index])
    excerpt = extract_stream_record(sealed, 2)
    with pytest.raises(EnvelopeAuthenticationError):
        open_stream_record(excerpt, OTHER_DEK)
    with pytest.raises(EnvelopeAuthenticationError):  # the index is bound by nonce and AAD
        open_stream_record(excerpt[:8] + b"\x01" + excerpt[9:], DEK)
    with pytest.raises(EnvelopeAuthenticationError):
        open_stream_record(_flip(excerpt, len(excerpt) - 1), DEK)
    with pytest.raises(EnvelopeFormatError, match="trailing"):
        open_stream_record(excerpt + b"\x00", DEK)
    with pytest.raises(EnvelopeFormatError, match="out of range"):
        open_stream_record(excerpt[:5] + struct.pack(">I", 4) + excerpt[9:], DEK)
    with pytest.raises(EnvelopeFormatError, match="bad magic"):
        read_stream_record(b"SBEV" + excerpt[4:])
    with pytest.raises(EnvelopeFormatError, match="out of range"):
        extract_stream_record(sealed, 4)


def test_rewrap_replaces_the_key_block_and_keeps_every_frame() -> None:
    from tests.envelope.test_rewrap import NEW_WRAPPED

    sealed = _stream(event_times_ms=TIMES)
    rewrapped = rewrap_envelope(sealed, DEK, NEW_WRAPPED)
    before, after = read_record_stream(sealed), read_record_stream(rewrapped)
    assert sealed[:before.core_end] == rewrapped[:after.core_end]
    assert sealed[before.header_length:] == rewrapped[after.header_length:]
    assert after.header.wrapped_key == NEW_WRAPPED
    assert before.header.wrapped_key == WRAPPED
    opened = open_record_stream(rewrapped, DEK)
    assert [r.plaintext for r in opened.records] == PLAINTEXTS and not opened.failures
    header, old_length = rewrap_header(sealed[:before.header_length + 10], DEK, NEW_WRAPPED)
    assert header + sealed[old_length:] == rewrapped
    with pytest.raises(EnvelopeAuthenticationError):
        rewrap_envelope(sealed, OTHER_DEK, NEW_WRAPPED)
    with pytest.raises(EnvelopeFormatError):
        rewrap_envelope(sealed[:-1], DEK, NEW_WRAPPED)


def test_many_records_overhead_is_under_45_bytes_plus_header_share() -> None:
    plaintexts = [os.urandom(100) for _ in range(1000)]
    sealed = _stream(plaintexts)
    header_length = read_header(sealed)[1]
    assert len(sealed) - 100 * 1000 == 44 * 1000 + header_length
    opened = open_record_stream(sealed, DEK)
    assert [r.plaintext for r in opened.records] == plaintexts


def test_errors_are_envelope_errors() -> None:
    for data in (b"", b"SBEV", _stream()[:200]):
        with pytest.raises(EnvelopeError):
            open_record_stream(data, DEK)


def test_envelope_length_stops_at_the_stream_length_bound() -> None:
    """Inside a larger buffer the walk refuses a stream that would pass 48 MiB."""
    from envelope import MAX_STREAM_LENGTH

    head = raw_header(kind=3, segment_size=60)
    frame = struct.pack(">I16sQ", MAX_STREAM_RECORD_PLAINTEXT + 16, b"\x00" * 16, 0)
    big = bytearray(head)
    for index in range(60):
        big += frame[:4] + index.to_bytes(16, "big") + frame[20:]
        big += bytes(MAX_STREAM_RECORD_PLAINTEXT + 16)
    assert len(big) > MAX_STREAM_LENGTH
    with pytest.raises(EnvelopeLimitError, match="exceeds 50331648 at record 47"):
        envelope_length(bytes(big))
    with pytest.raises(EnvelopeLimitError, match="record stream length"):
        read_record_stream(bytes(big))
