"""``open_records`` / ``seal_records`` / ``RecordOpener``: many records under one DEK.

The batch calls must be exactly as strict as the one-record calls: for every input,
``open_records`` gives what ``open_record`` gives (the plaintext, or an error of the same
type with the same message), whether the opener has already validated the header's
variable part (the cached path) or not. ``seal_records`` makes envelopes that
``open_record`` opens and whose headers are those ``seal_record`` writes. The fast HKDF is
checked against ``cryptography``'s.
"""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope import (
    EnvelopeAuthenticationError,
    EnvelopeError,
    EnvelopeFormatError,
    EnvelopeLimitError,
    RecordOpener,
    open_record,
    open_records,
    parse_envelope,
    read_header,
    seal_batch,
    seal_record,
    seal_records,
)
from envelope._keyschedule import _SHA512, _hkdf_sha512_96_openssl, hkdf_sha512_96
from tests.envelope.support import DEK, OTHER_DEK, seal_arguments

ARGUMENTS = seal_arguments(context={"a": "1", "b": "2"})
RECORD = seal_record(os.urandom(100), **ARGUMENTS)
WARM = seal_record(b"warm-up", **ARGUMENTS)  # same header suffix: primes the opener's cache


def one_by_one(envelope: bytes) -> bytes | tuple[type, str]:
    try:
        return open_record(envelope, DEK)
    except EnvelopeError as error:
        return type(error), str(error)


def batched(result: bytes | EnvelopeError) -> bytes | tuple[type, str]:
    return result if isinstance(result, bytes) else (type(result), str(result))


@settings(max_examples=40, deadline=None)
@given(plaintexts=st.lists(st.binary(max_size=300), max_size=12))
def test_seal_records_round_trip_through_both_openers(plaintexts: list[bytes]) -> None:
    sealed = seal_records(plaintexts, **ARGUMENTS)
    assert [open_record(envelope, DEK) for envelope in sealed] == plaintexts
    assert open_records(sealed, DEK) == plaintexts
    assert open_records([parse_envelope(e) for e in sealed], DEK) == plaintexts
    assert len({read_header(e)[0].salt for e in sealed}) == len(sealed)  # fresh salt each


def test_seal_records_headers_match_seal_record() -> None:
    (batch,) = seal_records([b"x" * 100], **ARGUMENTS)
    single = seal_record(b"x" * 100, **ARGUMENTS)
    assert len(batch) == len(single)
    header_b, length_b = read_header(batch)
    header_s, length_s = read_header(single)
    assert length_b == length_s
    for field in ("kind", "algorithm", "wrapped_key", "region", "producer_id",
                  "schema_fingerprint", "context", "segment_size"):
        assert getattr(header_b, field) == getattr(header_s, field), field


def test_seal_records_refuses_bad_fields_and_sizes_before_sealing() -> None:
    with pytest.raises(EnvelopeFormatError):
        seal_records([b"x"], **seal_arguments(region=""))
    with pytest.raises(EnvelopeLimitError):
        seal_records([b"x", bytes((1 << 24) + 1)], **ARGUMENTS)


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "cached"])
@settings(max_examples=250, deadline=None)
@given(data=st.data())
def test_any_flip_or_cut_gives_what_open_record_gives(warm: bool, data: st.DataObject) -> None:
    damaged = bytearray(RECORD)
    if data.draw(st.booleans(), label="truncate"):
        damaged = damaged[: data.draw(st.integers(0, len(RECORD) - 1), label="keep")]
    else:
        bit = data.draw(st.integers(0, len(RECORD) * 8 - 1), label="bit")
        damaged[bit // 8] ^= 1 << (bit % 8)
    if data.draw(st.booleans(), label="append"):
        damaged += b"\x00"
    envelope = bytes(damaged)
    opener = RecordOpener(DEK)
    if warm:
        assert opener.open(WARM) == b"warm-up"
    (result,) = opener.open_many([envelope])
    assert batched(result) == one_by_one(envelope)


def test_every_header_bit_flip_matches_on_the_cached_path() -> None:
    opener = RecordOpener(DEK)
    opener.open(WARM)
    header_length = read_header(RECORD)[1]
    for bit in range(header_length * 8):
        damaged = bytearray(RECORD)
        damaged[bit // 8] ^= 1 << (bit % 8)
        (result,) = opener.open_many([bytes(damaged)])
        assert isinstance(result, EnvelopeError)
        assert batched(result) == one_by_one(bytes(damaged)), bit


def test_errors_take_the_place_of_their_record_only() -> None:
    good = seal_records([b"a", b"b", b"c"], **ARGUMENTS)
    batch = seal_batch(b"not a record", **seal_arguments(segment_size=64))
    other_key = seal_record(b"z", **seal_arguments(data_key=OTHER_DEK))
    results = open_records([good[0], b"junk", batch, other_key, good[1][:-1], good[2]], DEK)
    assert results[0] == b"a" and results[5] == b"c"
    assert isinstance(results[1], EnvelopeFormatError)
    assert isinstance(results[2], EnvelopeFormatError) and "expected 'record'" in str(results[2])
    assert isinstance(results[3], EnvelopeAuthenticationError)
    assert isinstance(results[4], EnvelopeFormatError)


def test_a_different_header_suffix_is_decoded_in_full() -> None:
    opener = RecordOpener(DEK)
    other = seal_record(b"p", **seal_arguments(region="us", context={"x": "y"}))
    assert opener.open_many([RECORD, other, parse_envelope(other)])[1:] == [b"p", b"p"]
    assert "2 cached" in repr(opener) and "secret" in repr(opener)


def test_opener_wants_a_data_key() -> None:
    with pytest.raises(TypeError):
        RecordOpener(b"\x00" * 32)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(secret=st.binary(max_size=80), salt=st.binary(min_size=1, max_size=200),
       info=st.binary(max_size=40))
def test_fast_hkdf_equals_cryptography_hkdf(secret: bytes, salt: bytes, info: bytes) -> None:
    """Any secret, salt (shorter and longer than SHA-512's block) and info; the envelope's
    are 32, 32 and 23 bytes. Both the built-in-SHA-512 path and the OpenSSL fallback."""
    expected = HKDF(algorithm=hashes.SHA512(), length=96, salt=salt, info=info).derive(secret)
    assert hkdf_sha512_96(secret, salt, info) == expected
    assert _hkdf_sha512_96_openssl(secret, salt, info) == expected


def test_the_fast_hkdf_runs_on_the_builtin_sha512_here() -> None:
    assert _SHA512 is not None   # CPython 3.11+ ships one; else the OpenSSL path is taken
