"""``open_batch_into``: the whole plaintext decrypted in place into a caller's buffer.

It must give exactly what ``open_batch`` gives, accept any writable contiguous buffer
(bytearray, an Arrow buffer), refuse what it cannot write to, keep every check of the
streaming opener (kind, structure, commitment, header tag, STREAM order) and leave no
unauthenticated plaintext in the caller's buffer when a segment fails.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope import (
    EnvelopeAuthenticationError,
    EnvelopeError,
    EnvelopeFormatError,
    open_batch,
    open_batch_into,
    parse_envelope,
    seal_batch,
    seal_record,
)
from tests.envelope.support import DEK, OTHER_DEK, seal_arguments
from tests.envelope.test_batch import join_frames, split_frames

SEGMENT = 64


@settings(max_examples=60, deadline=None)
@given(plaintext=st.binary(max_size=700), segment_size=st.sampled_from([16, 17, 64, 1 << 20]))
def test_same_plaintext_as_open_batch(plaintext: bytes, segment_size: int) -> None:
    envelope = seal_batch(plaintext, **seal_arguments(segment_size=segment_size))
    opened = open_batch_into(envelope, DEK)
    assert isinstance(opened, bytearray)
    assert bytes(opened) == plaintext == open_batch(envelope, DEK)
    assert bytes(open_batch_into(parse_envelope(envelope), DEK)) == plaintext


def test_into_an_arrow_buffer_of_the_exact_length() -> None:
    plaintext = os.urandom(5 * SEGMENT + 3)
    envelope = seal_batch(plaintext, **seal_arguments(segment_size=SEGMENT))
    sizes: list[int] = []

    def allocate(size: int) -> pa.Buffer:
        sizes.append(size)
        return pa.allocate_buffer(size)

    buffer = open_batch_into(envelope, DEK, allocate)
    assert sizes == [len(plaintext)]
    assert isinstance(buffer, pa.Buffer)
    assert buffer.to_pybytes() == plaintext


def test_a_larger_buffer_is_filled_at_its_start() -> None:
    plaintext = os.urandom(2 * SEGMENT)
    envelope = seal_batch(plaintext, **seal_arguments(segment_size=SEGMENT))
    buffer = open_batch_into(envelope, DEK, lambda size: bytearray(b"\xee" * (size + 8)))
    assert bytes(buffer) == plaintext + b"\xee" * 8


@pytest.mark.parametrize("allocate", [bytes, lambda size: bytearray(size - 1), lambda size: 7])
def test_unusable_buffers_are_refused(allocate: object) -> None:
    envelope = seal_batch(os.urandom(100), **seal_arguments(segment_size=SEGMENT))
    with pytest.raises(EnvelopeError, match="allocate must return"):
        open_batch_into(envelope, DEK, allocate)  # type: ignore[arg-type]


def test_wrong_key_and_wrong_kind_fail_before_allocation() -> None:
    envelope = seal_batch(os.urandom(100), **seal_arguments(segment_size=SEGMENT))
    calls: list[int] = []
    with pytest.raises(EnvelopeAuthenticationError):
        open_batch_into(envelope, OTHER_DEK, lambda size: calls.append(size) or bytearray(size))
    record = seal_record(b"{}", **seal_arguments())
    with pytest.raises(EnvelopeFormatError, match="expected 'batch'"):
        open_batch_into(record, DEK, lambda size: calls.append(size) or bytearray(size))
    assert calls == []


def test_trailing_bytes_and_truncation_fail() -> None:
    envelope = seal_batch(os.urandom(3 * SEGMENT), **seal_arguments(segment_size=SEGMENT))
    with pytest.raises(EnvelopeFormatError, match="trailing bytes"):
        open_batch_into(envelope + b"\x00", DEK)
    header, frames = split_frames(envelope)
    with pytest.raises(EnvelopeAuthenticationError):
        open_batch_into(join_frames(header, frames[:2]), DEK)


def test_a_bad_segment_leaves_the_buffer_zeroed() -> None:
    plaintext = os.urandom(3 * SEGMENT + 10)
    header, frames = split_frames(seal_batch(plaintext, **seal_arguments(segment_size=SEGMENT)))
    tampered = frames[2][1][:5] + bytes([frames[2][1][5] ^ 1]) + frames[2][1][6:]
    broken = join_frames(header, [frames[0], frames[1], (0, tampered), frames[3]])
    kept: list[bytearray] = []

    def allocate(size: int) -> bytearray:
        kept.append(bytearray(b"\xee" * size))
        return kept[0]

    with pytest.raises(EnvelopeAuthenticationError):
        open_batch_into(broken, DEK, allocate)
    # Segments 0-2 were written (2 failed its tag): all zero now; 3 was never reached.
    assert bytes(kept[0][: 3 * SEGMENT]) == bytes(3 * SEGMENT)
    assert bytes(kept[0][3 * SEGMENT :]) == b"\xee" * 10


def test_reordered_segments_fail() -> None:
    header, frames = split_frames(
        seal_batch(os.urandom(3 * SEGMENT + 1), **seal_arguments(segment_size=SEGMENT)))
    with pytest.raises(EnvelopeAuthenticationError):
        open_batch_into(join_frames(header, [frames[1], frames[0], *frames[2:]]), DEK)


BATCH = seal_batch(os.urandom(3 * SEGMENT + 7), **seal_arguments(segment_size=SEGMENT))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_flip_or_cut_fails_like_open_batch(data: st.DataObject) -> None:
    """Whatever is damaged, open_batch_into raises what open_batch raises (type and text)
    and hands out no buffer."""
    damaged = bytearray(BATCH)
    if data.draw(st.booleans(), label="truncate"):
        damaged = damaged[: data.draw(st.integers(0, len(BATCH) - 1), label="keep")]
    else:
        bit = data.draw(st.integers(0, len(BATCH) * 8 - 1), label="bit")
        damaged[bit // 8] ^= 1 << (bit % 8)
    envelope = bytes(damaged)
    with pytest.raises(EnvelopeError) as expected:
        open_batch(envelope, DEK)
    with pytest.raises(EnvelopeError) as caught:
        open_batch_into(envelope, DEK, pa.allocate_buffer)
    assert type(caught.value) is type(expected.value)
    assert str(caught.value) == str(expected.value)
