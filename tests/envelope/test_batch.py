"""Batch envelopes: round trips (bytes, chunks, streaming writer), segment layout, STREAM
attacks (reorder, drop, duplicate, append, truncate), and the no-second-copy property."""

from __future__ import annotations

import io
import itertools
import os
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope import (
    BatchSealer,
    EnvelopeAuthenticationError,
    EnvelopeError,
    EnvelopeFormatError,
    EnvelopeLimitError,
    envelope_length,
    iter_open_batch,
    open_batch,
    open_record,
    read_header,
    seal_batch,
    seal_record,
)
from tests.envelope.support import DEK, OTHER_DEK, seal_arguments

SEGMENT = 64


def split_frames(envelope: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(header bytes, [(flag, ciphertext)]) per FORMAT.md section 3.4."""
    _, position = read_header(envelope)
    header, frames = envelope[:position], []
    while position < len(envelope):
        flag, length = struct.unpack_from(">BI", envelope, position)
        frames.append((flag, envelope[position + 5 : position + 5 + length]))
        position += 5 + length
    return header, frames


def join_frames(header: bytes, frames: list[tuple[int, bytes]]) -> bytes:
    return header + b"".join(struct.pack(">BI", flag, len(ct)) + ct for flag, ct in frames)


@settings(max_examples=60, deadline=None)
@given(
    plaintext=st.binary(max_size=1000),
    segment_size=st.sampled_from([16, 17, 64, 100, 1 << 20]),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=8),
)
def test_round_trip_bytes_and_chunks(plaintext: bytes, segment_size: int, cuts: list[int]) -> None:
    arguments = seal_arguments(segment_size=segment_size)
    whole = seal_batch(plaintext, **arguments)
    bounds = sorted({0, len(plaintext), *(c for c in cuts if c <= len(plaintext))})
    chunks = [plaintext[a:b] for a, b in itertools.pairwise(bounds)]
    chunked = seal_batch(iter(chunks), **arguments)
    for sealed in (whole, chunked):
        assert open_batch(sealed, DEK) == plaintext
        segments = list(iter_open_batch(sealed, DEK))
        expected_count = max(1, -(-len(plaintext) // segment_size))
        assert len(segments) == expected_count
        assert all(len(segment) == segment_size for segment in segments[:-1])
        assert envelope_length(sealed + b"tail") == len(sealed)
    # Chunking does not change the layout, only the random salt and id differ.
    assert len(whole) == len(chunked)


def test_empty_batch_is_one_empty_final_segment() -> None:
    sealed = seal_batch(b"", **seal_arguments())
    _, frames = split_frames(sealed)
    assert [(flag, len(ct)) for flag, ct in frames] == [(1, 16)]
    assert open_batch(sealed, DEK) == b""
    assert list(iter_open_batch(sealed, DEK)) == [b""]


def test_exact_multiple_has_no_empty_trailing_segment() -> None:
    sealed = seal_batch(bytes(3 * SEGMENT), **seal_arguments(segment_size=SEGMENT))
    _, frames = split_frames(sealed)
    assert [(flag, len(ct)) for flag, ct in frames] == [(0, 80), (0, 80), (1, 80)]


def test_streaming_writer_into_a_file_object() -> None:
    sink = io.BytesIO()
    plaintext = os.urandom(10 * SEGMENT + 7)
    with BatchSealer(**seal_arguments(segment_size=SEGMENT), sink=sink) as sealer:
        for start in range(0, len(plaintext), 33):
            sealer.write(plaintext[start : start + 33])
        # the header and every complete segment but the held-back one are already out
        assert sink.getbuffer().nbytes == sealer.bytes_written > 9 * (SEGMENT + 21)
    assert sealer.finished
    assert sink.getbuffer().nbytes == sealer.bytes_written
    assert open_batch(sink.getvalue(), DEK) == plaintext
    assert read_header(sink.getvalue())[0] == sealer.header


def test_in_memory_writer_returns_the_envelope() -> None:
    sealer = BatchSealer(**seal_arguments(segment_size=SEGMENT))
    sealer.write(b"a" * 100)
    sealer.write(bytearray(b"b" * 100))
    sealer.write(memoryview(b"c" * 100))
    sealed = sealer.finish()
    assert open_batch(sealed, DEK) == b"a" * 100 + b"b" * 100 + b"c" * 100
    with pytest.raises(EnvelopeError, match="already finished"):
        sealer.write(b"more")
    with pytest.raises(EnvelopeError, match="already finished"):
        sealer.finish()


def test_writer_aborted_by_an_exception_leaves_no_final_segment() -> None:
    sink = io.BytesIO()
    with pytest.raises(RuntimeError), BatchSealer(
        **seal_arguments(segment_size=SEGMENT), sink=sink
    ) as sealer:
        sealer.write(os.urandom(5 * SEGMENT))
        raise RuntimeError("producer failed")
    assert sealer.finished
    with pytest.raises(EnvelopeAuthenticationError):
        open_batch(sink.getvalue(), DEK)


def test_segment_size_bounds() -> None:
    with pytest.raises(EnvelopeFormatError, match="segment size 15 is below 16"):
        seal_batch(b"x", **seal_arguments(segment_size=15))
    with pytest.raises(EnvelopeLimitError, match="segment size 16777217 exceeds 16777216"):
        seal_batch(b"x", **seal_arguments(segment_size=(1 << 24) + 1))


def test_wrong_key_fails_before_any_plaintext() -> None:
    sealed = seal_batch(os.urandom(500), **seal_arguments(segment_size=SEGMENT))
    with pytest.raises(EnvelopeAuthenticationError, match=r"^envelope authentication failed$"):
        iter_open_batch(sealed, OTHER_DEK)


def test_open_batch_refuses_a_record() -> None:
    record = seal_record(b"x", **seal_arguments())
    with pytest.raises(EnvelopeFormatError, match="kind is 'record', expected 'batch'"):
        open_batch(record, DEK)


@pytest.fixture
def four_segments() -> tuple[bytes, list[tuple[int, bytes]], bytes]:
    plaintext = os.urandom(3 * SEGMENT + 10)
    header, frames = split_frames(seal_batch(plaintext, **seal_arguments(segment_size=SEGMENT)))
    assert [flag for flag, _ in frames] == [0, 0, 0, 1]
    return header, frames, plaintext


def test_swapped_segments_fail(four_segments: tuple) -> None:
    header, frames, _ = four_segments
    swapped = [frames[1], frames[0], frames[2], frames[3]]
    with pytest.raises(EnvelopeAuthenticationError):
        open_batch(join_frames(header, swapped), DEK)


def test_stream_stops_at_the_first_bad_segment(four_segments: tuple) -> None:
    header, frames, plaintext = four_segments
    swapped = [frames[0], frames[2], frames[1], frames[3]]
    segments = iter_open_batch(join_frames(header, swapped), DEK)
    assert next(segments) == plaintext[:SEGMENT]
    with pytest.raises(EnvelopeAuthenticationError):
        next(segments)


def test_dropped_middle_segment_fails(four_segments: tuple) -> None:
    header, frames, _ = four_segments
    with pytest.raises(EnvelopeAuthenticationError):
        open_batch(join_frames(header, [frames[0], frames[2], frames[3]]), DEK)


def test_duplicated_segment_fails(four_segments: tuple) -> None:
    header, frames, _ = four_segments
    with pytest.raises(EnvelopeAuthenticationError):
        open_batch(join_frames(header, [frames[0], frames[0], *frames[1:]]), DEK)


def test_truncation_at_a_segment_boundary_is_authentication_failure(four_segments: tuple) -> None:
    header, frames, _ = four_segments
    for keep in range(4):
        with pytest.raises(EnvelopeAuthenticationError):
            open_batch(join_frames(header, frames[:keep]), DEK)
        # ...and a structural fact for the key-less walker
        with pytest.raises(EnvelopeFormatError, match="ends before its final segment"):
            envelope_length(join_frames(header, frames[:keep]))


def test_cutting_the_final_flag_off_fails(four_segments: tuple) -> None:
    header, frames, _ = four_segments
    # Drop the real final segment and mark the previous one final: AAD flag differs.
    relabelled = [*frames[:2], (1, frames[2][1])]
    with pytest.raises(EnvelopeAuthenticationError):
        open_batch(join_frames(header, relabelled), DEK)


def test_appended_segment_fails(four_segments: tuple) -> None:
    header, frames, _ = four_segments
    extra = (1, frames[1][1])
    with pytest.raises(EnvelopeFormatError, match="trailing bytes after the final segment"):
        open_batch(join_frames(header, [*frames, extra]), DEK)
    # A final segment relabelled non-final so that the appended one is final:
    relabelled = [*frames[:3], (0, frames[3][1] + bytes(SEGMENT - 10)), extra]
    with pytest.raises(EnvelopeAuthenticationError):
        open_batch(join_frames(header, relabelled), DEK)


def test_segment_from_another_batch_under_the_same_key_fails(four_segments: tuple) -> None:
    header, frames, _ = four_segments
    _, other_frames = split_frames(
        seal_batch(os.urandom(3 * SEGMENT + 10), **seal_arguments(segment_size=SEGMENT))
    )
    mixed = [frames[0], other_frames[1], *frames[2:]]
    with pytest.raises(EnvelopeAuthenticationError):
        open_batch(join_frames(header, mixed), DEK)


def test_batch_header_grafted_onto_record_body_fails() -> None:
    record = seal_record(b"r" * 20, **seal_arguments())
    header, _ = read_header(record)
    assert header.kind == "record"
    with pytest.raises(EnvelopeFormatError):
        open_batch(record, DEK)
    with pytest.raises(EnvelopeError):
        open_record(record[:5] + b"\x02" + record[6:], DEK)


def test_sealing_does_not_copy_the_plaintext() -> None:
    plaintext = os.urandom(8 << 20)
    arguments = seal_arguments(segment_size=1 << 20)
    tracemalloc.start()
    try:
        sealed = seal_batch(plaintext, **arguments)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # ciphertext pieces + the joined envelope; a plaintext copy would add another 8 MiB
    assert peak < 2 * len(plaintext) + (2 << 20), peak
    assert open_batch(sealed, DEK) == plaintext


class _TrickleSink:
    """A raw-file-like sink that accepts at most 7 bytes per write, as raw streams may."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, piece: bytes | memoryview) -> int:
        taken = bytes(piece[:7])
        self.data += taken
        return len(taken)


def test_partial_writes_to_a_raw_sink_are_completed() -> None:
    sink = _TrickleSink()
    plaintext = os.urandom(3 * SEGMENT + 5)
    with BatchSealer(**seal_arguments(segment_size=SEGMENT), sink=sink) as sealer:  # type: ignore[arg-type]
        sealer.write(plaintext)
    assert len(sink.data) == sealer.bytes_written
    assert open_batch(bytes(sink.data), DEK) == plaintext
