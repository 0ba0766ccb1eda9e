"""Record envelopes: round trips, wrong keys, kinds, trailing bytes and sealing-side checks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope import (
    DataKey,
    EnvelopeAuthenticationError,
    EnvelopeFormatError,
    EnvelopeLimitError,
    envelope_length,
    open_record,
    read_header,
    seal_batch,
    seal_record,
)
from tests.envelope.support import DEK, OTHER_DEK, SCHEMA, WRAPPED, seal_arguments

# Text that the format accepts: no control characters, non-empty where required.
_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=20
)
_CONTEXTS = st.dictionaries(_TEXT, st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=30
), max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    plaintext=st.binary(max_size=2048),
    context=_CONTEXTS,
    region=st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=16
    ),
)
def test_round_trip(plaintext: bytes, context: dict[str, str], region: str) -> None:
    sealed = seal_record(plaintext, **seal_arguments(context=context, region=region))
    assert open_record(sealed, DEK) == plaintext
    header, header_length = read_header(sealed)
    assert header.kind == "record"
    assert header.region == region
    assert dict(header.context) == context
    assert list(header.context) == sorted(context, key=lambda key: key.encode())
    assert header.wrapped_key == WRAPPED
    assert header.schema_fingerprint == SCHEMA
    assert header.segment_size == 0
    assert envelope_length(sealed + b"next record") == len(sealed)
    assert len(sealed) == header_length + 4 + len(plaintext) + 16


def test_every_seal_uses_fresh_salt_and_id() -> None:
    first, second = (seal_record(b"same", **seal_arguments()) for _ in range(2))
    header_one, _ = read_header(first)
    header_two, _ = read_header(second)
    assert header_one.salt != header_two.salt
    assert header_one.envelope_id != header_two.envelope_id
    assert header_one.record_id == header_one.envelope_id.hex()
    assert first[-30:] != second[-30:]


def test_accepts_bytearray_and_memoryview() -> None:
    sealed = seal_record(memoryview(b"view"), **seal_arguments())
    assert open_record(bytearray(sealed), DEK) == b"view"
    assert open_record(memoryview(sealed), DEK) == b"view"


def _assert_uniform(error: BaseException) -> None:
    assert type(error) is EnvelopeAuthenticationError
    assert str(error) == "envelope authentication failed"
    assert error.args == ("envelope authentication failed",)
    # no chained InvalidTag or other detail is shown in a traceback
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def test_wrong_key_and_bad_tag_fail_the_same_way() -> None:
    sealed = seal_record(b"secret", **seal_arguments())
    with pytest.raises(EnvelopeAuthenticationError) as wrong_key:
        open_record(sealed, OTHER_DEK)  # fails at the commitment
    with pytest.raises(EnvelopeAuthenticationError) as bad_tag:
        open_record(sealed[:-1] + bytes([sealed[-1] ^ 1]), DEK)  # fails at the tag
    _assert_uniform(wrong_key.value)
    _assert_uniform(bad_tag.value)


def test_open_record_refuses_a_batch() -> None:
    batch = seal_batch(b"rows", **seal_arguments())
    with pytest.raises(EnvelopeFormatError, match="kind is 'batch', expected 'record'"):
        open_record(batch, DEK)


def test_trailing_bytes_are_rejected() -> None:
    sealed = seal_record(b"x", **seal_arguments())
    with pytest.raises(EnvelopeFormatError, match="1 trailing bytes after the record"):
        open_record(sealed + b"\x00", DEK)


def test_plaintext_over_16_mib_is_refused() -> None:
    with pytest.raises(EnvelopeLimitError, match="record plaintext length 16777217 exceeds"):
        seal_record(bytes((1 << 24) + 1), **seal_arguments())


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"region": "r" * 300}, EnvelopeLimitError, "region length 300 exceeds 64"),
        ({"region": ""}, EnvelopeFormatError, "region is empty"),
        ({"producer_id": "p" * 257}, EnvelopeLimitError, "producer id length 257 exceeds 256"),
        ({"producer_id": "a\x00b"}, EnvelopeFormatError, "producer id contains a control"),
        ({"schema_fingerprint": bytes(31)}, EnvelopeFormatError, "schema fingerprint length 31"),
        ({"context": {"": "v"}}, EnvelopeFormatError, "context key is empty"),
        ({"context": {"k": "v" * 1025}}, EnvelopeLimitError, "context value for 'k' length"),
        ({"context": {f"k{i}": "" for i in range(33)}}, EnvelopeLimitError,
         "context entry count 33 exceeds 32"),
        ({"context": {f"key-{i:03}": "v" * 300 for i in range(30)}}, EnvelopeLimitError,
         "context length .* exceeds 8192"),
        ({"context": {"k": "\ud800"}}, EnvelopeFormatError, "not encodable as UTF-8"),
        ({"data_key": b"k" * 32}, TypeError, "data_key must be DataKey"),
    ],
)
def test_sealing_refuses_what_parsing_would(
    overrides: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        seal_record(b"x", **seal_arguments(**overrides))


def test_simulated_keys_seal_the_same_way() -> None:
    simulated = DataKey(DEK.secret_bytes(), simulated=True)
    sealed = seal_record(b"x", **seal_arguments(data_key=simulated))
    assert open_record(sealed, DEK) == b"x"
