"""Opening a subset of a record stream (docs/FORMAT.md section 13.5): ``open_record_stream``
with ``indices``, pieces (``SBRX`` version 2) split without a key, and one-record excerpts of
many records from one walk. Properties with hypothesis: any subset opens exactly those
records, a piece opens exactly its records under their stream indices, every byte change of a
piece is detected, and bad index sets are a typed error."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope import (
    EnvelopeAuthenticationError,
    EnvelopeError,
    EnvelopeFormatError,
    RecordIndexError,
    extract_stream_piece,
    extract_stream_record,
    extract_stream_records,
    is_stream_excerpt,
    open_record_stream,
    open_stream_piece,
    open_stream_record,
    piece_records,
    read_record_stream,
    read_stream_piece,
    seal_record_stream,
)
from tests.envelope.support import DEK, OTHER_DEK, seal_arguments

PLAINTEXTS = [f"record {i}".encode() * (i % 3 + 1) for i in range(12)]
TIMES = [None if i % 4 == 0 else 1_000 * i for i in range(12)]
SEALED = seal_record_stream(PLAINTEXTS, event_times_ms=TIMES, **seal_arguments())
ALL = open_record_stream(SEALED, DEK).records


@st.composite
def stream_and_subset(draw: st.DrawFn) -> tuple[list[bytes], bytes, list[int]]:
    plaintexts = draw(st.lists(st.binary(max_size=80), min_size=1, max_size=24))
    sealed = seal_record_stream(plaintexts, **seal_arguments())
    subset = draw(st.lists(st.integers(0, len(plaintexts) - 1), unique=True))
    return plaintexts, sealed, subset


@settings(max_examples=60, deadline=None)
@given(case=stream_and_subset())
def test_any_subset_opens_exactly_those_records(case) -> None:
    plaintexts, sealed, subset = case
    opened = open_record_stream(sealed, DEK, indices=subset)
    assert not opened.failures
    assert [r.index for r in opened.records] == sorted(subset)
    assert [r.plaintext for r in opened.records] == [plaintexts[i] for i in sorted(subset)]
    whole = open_record_stream(sealed, DEK).records
    assert opened.records == [whole[i] for i in sorted(subset)]


@settings(max_examples=60, deadline=None)
@given(case=stream_and_subset())
def test_a_piece_opens_exactly_its_records_under_their_stream_indices(case) -> None:
    plaintexts, sealed, subset = case
    if not subset:
        with pytest.raises(RecordIndexError):
            extract_stream_piece(sealed, subset)
        return
    piece = extract_stream_piece(sealed, subset)
    assert is_stream_excerpt(piece) and not is_stream_excerpt(sealed)
    shape = read_stream_piece(piece)
    assert shape.indices == tuple(sorted(subset))
    assert shape.envelope_id == read_record_stream(sealed).header.envelope_id
    opened = open_stream_piece(piece, DEK)
    assert opened == open_record_stream(sealed, DEK, indices=subset)
    for excerpt, index in zip(piece_records(piece, subset), subset, strict=True):
        assert excerpt == extract_stream_record(sealed, index)
        assert open_stream_record(excerpt, DEK).plaintext == plaintexts[index]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_out_of_range_or_repeated_indices_are_a_typed_error(data: st.DataObject) -> None:
    good = data.draw(st.lists(st.integers(0, len(PLAINTEXTS) - 1), unique=True))
    bad = data.draw(st.one_of(
        st.integers(len(PLAINTEXTS), 2**40), st.integers(-(2**40), -1),
        st.sampled_from(good) if good else st.just(len(PLAINTEXTS))))
    indices = [*good, bad]
    for call in (lambda: open_record_stream(SEALED, DEK, indices=indices),
                 lambda: extract_stream_piece(SEALED, indices),
                 lambda: extract_stream_records(SEALED, indices)):
        with pytest.raises(RecordIndexError):
            call()
    assert issubclass(RecordIndexError, EnvelopeFormatError)


def test_indices_must_be_ints() -> None:
    for bad in ([True], [1.0], ["1"]):
        with pytest.raises(RecordIndexError):
            open_record_stream(SEALED, DEK, indices=bad)


def test_many_excerpts_from_one_walk_equal_the_single_ones() -> None:
    layout = read_record_stream(SEALED)
    wanted = [7, 0, 11, 3]
    expected = [extract_stream_record(SEALED, i) for i in wanted]
    assert extract_stream_records(SEALED, wanted) == expected
    assert extract_stream_records(SEALED, wanted, layout=layout) == expected
    assert extract_stream_piece(SEALED, wanted, layout=layout) == extract_stream_piece(
        SEALED, wanted)
    with pytest.raises(EnvelopeFormatError):
        extract_stream_records(SEALED[:-1], wanted, layout=layout)


def test_event_times_of_a_piece_are_its_records() -> None:
    shape = read_stream_piece(extract_stream_piece(SEALED, [4, 5, 8]))
    assert shape.event_times_ms == (None, 5_000, None)
    assert [r.event_time_ms for r in open_stream_piece(shape, DEK).records] == [None, 5_000,
                                                                               None]


def test_a_one_record_excerpt_is_a_piece_of_one() -> None:
    excerpt = extract_stream_record(SEALED, 9)
    assert read_stream_piece(excerpt).indices == (9,)
    assert open_stream_piece(excerpt, DEK).records == [ALL[9]]


PIECE = extract_stream_piece(SEALED, [1, 2, 6, 10])


def test_every_byte_change_of_a_piece_is_detected() -> None:
    for position in range(len(PIECE)):
        damaged = bytearray(PIECE)
        damaged[position] ^= 0x41
        try:
            opened = open_stream_piece(bytes(damaged), DEK)
        except EnvelopeError:
            continue
        assert opened.failures, f"a change at byte {position} went unnoticed"
        for record in opened.records:
            assert record == ALL[record.index]


def test_a_piece_cannot_move_a_record_to_another_index() -> None:
    """Relabel the piece's indices (still increasing): the frames' AAD names their own."""
    relabelled = bytearray(PIECE)
    struct.pack_into(">4I", relabelled, 9, 1, 2, 6, 11)
    opened = open_stream_piece(bytes(relabelled), DEK)
    assert [f.index for f in opened.failures] == [11]
    assert [r.index for r in opened.records] == [1, 2, 6]


def test_a_piece_under_another_key_fails_whole() -> None:
    with pytest.raises(EnvelopeAuthenticationError):
        open_stream_piece(PIECE, OTHER_DEK)


@pytest.mark.parametrize("change", ["unsorted", "repeated", "beyond_count", "trailing",
                                    "missing_frame", "version", "zero"])
def test_malformed_pieces_are_format_errors(change: str) -> None:
    data = bytearray(PIECE)
    if change == "unsorted":
        struct.pack_into(">2I", data, 9, 2, 1)
    elif change == "repeated":
        struct.pack_into(">2I", data, 9, 1, 1)
    elif change == "beyond_count":
        struct.pack_into(">I", data, 21, len(PLAINTEXTS))
    elif change == "trailing":
        data += b"\x00"
    elif change == "missing_frame":
        struct.pack_into(">I", data, 5, 5)
        data[9 + 16 : 9 + 16] = struct.pack(">I", 11)
    elif change == "version":
        data[4] = 3
    elif change == "zero":
        struct.pack_into(">I", data, 5, 0)
    with pytest.raises(EnvelopeFormatError):
        read_stream_piece(bytes(data))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_after_the_magic_raise_only_envelope_errors(data: bytes) -> None:
    for candidate in (b"SBRX\x02" + data, b"SBRX\x01" + data, data):
        with contextlib.suppress(EnvelopeError):   # anything else fails the test
            read_stream_piece(candidate)


def test_a_piece_of_a_piece_is_the_piece_of_the_stream() -> None:
    shape = read_stream_piece(PIECE)
    assert extract_stream_piece(shape, [10, 2]) == extract_stream_piece(SEALED, [2, 10])
    for bad in ([], [3], [2, 2]):
        with pytest.raises(RecordIndexError):
            extract_stream_piece(shape, bad)
