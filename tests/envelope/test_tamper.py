"""Tamper detection: any flipped bit and any truncation of a record or a batch fails with a
typed EnvelopeError, and a flip inside the header is a format or authentication error."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope import (
    EnvelopeAuthenticationError,
    EnvelopeError,
    EnvelopeFormatError,
    open_batch,
    open_record,
    read_header,
    seal_batch,
    seal_record,
)
from tests.envelope.support import DEK, seal_arguments

RECORD = seal_record(os.urandom(100), **seal_arguments(context={"a": "1", "b": "2"}))
BATCH = seal_batch(os.urandom(150), **seal_arguments(segment_size=64, context={"a": "1"}))

CASES: dict[str, tuple[bytes, Callable[[bytes, object], bytes]]] = {
    "record": (RECORD, open_record),
    "batch": (BATCH, open_batch),
}
HEADER_LENGTHS = {kind: read_header(envelope)[1] for kind, (envelope, _) in CASES.items()}


def flip(data: bytes, bit: int) -> bytes:
    changed = bytearray(data)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def assert_flip_fails(kind: str, bit: int) -> None:
    """Opening ``kind`` with ``bit`` flipped raises a typed EnvelopeError; a flip inside the
    header, a format or authentication error."""
    envelope, opener = CASES[kind]
    with pytest.raises(EnvelopeError) as caught:
        opener(flip(envelope, bit), DEK)
    if bit // 8 < HEADER_LENGTHS[kind]:
        assert isinstance(caught.value, (EnvelopeFormatError, EnvelopeAuthenticationError))


@pytest.mark.parametrize("kind", CASES)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_flipped_bit_fails_with_a_typed_error(kind: str, data: st.DataObject) -> None:
    envelope, _ = CASES[kind]
    assert_flip_fails(kind, data.draw(
        st.integers(min_value=0, max_value=len(envelope) * 8 - 1), label="bit"))


@pytest.mark.parametrize("kind", CASES)
def test_every_bit_is_covered(kind: str) -> None:
    """Exhaustive: no single-bit change anywhere ever opens; in the header it is a format
    or authentication error."""
    envelope, _ = CASES[kind]
    for bit in range(len(envelope) * 8):
        assert_flip_fails(kind, bit)


@pytest.mark.parametrize("kind", CASES)
def test_every_truncation_fails_with_a_typed_error(kind: str) -> None:
    envelope, opener = CASES[kind]
    for length in range(len(envelope)):
        with pytest.raises(EnvelopeError):
            opener(envelope[:length], DEK)


@pytest.mark.parametrize("kind", CASES)
@settings(max_examples=50, deadline=None)
@given(extra=st.binary(min_size=1, max_size=40))
def test_appended_bytes_fail(kind: str, extra: bytes) -> None:
    envelope, opener = CASES[kind]
    with pytest.raises(EnvelopeError):
        opener(envelope + extra, DEK)


def test_untouched_envelopes_open() -> None:
    """The control for the tests above: the same bytes, unmodified, do open."""
    assert len(open_record(RECORD, DEK)) == 100
    assert len(open_batch(BATCH, DEK)) == 150
