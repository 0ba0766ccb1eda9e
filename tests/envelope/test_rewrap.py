"""Rewrap: a new key block and header tag, the core header and every payload byte unchanged;
the DEK and the current header are checked first; the header-prefix variant for big files."""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope import (
    MAX_HEADER_LENGTH,
    EnvelopeAuthenticationError,
    EnvelopeFormatError,
    KeyReference,
    WrappedKey,
    open_batch,
    open_record,
    read_header,
    rewrap_envelope,
    rewrap_header,
    seal_batch,
    seal_record,
)
from envelope.header import parse_header
from tests.envelope.support import DEK, OTHER_DEK, WRAPPED, seal_arguments

NEW_WRAPPED = WrappedKey(KeyReference("local://keyring/eu/kek-1", "2"), b"\x5a" * 61)


def parts(envelope: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(core header, key block, header tag, body) per FORMAT.md section 2."""
    _, layout = parse_header(envelope)
    return (
        envelope[: layout.core_end],
        envelope[layout.core_end : layout.tag_start],
        envelope[layout.tag_start : layout.end],
        envelope[layout.end :],
    )


@settings(max_examples=25, deadline=None)
@given(
    plaintext=st.binary(max_size=600),
    kind=st.sampled_from(["record", "batch"]),
    new_ciphertext=st.binary(min_size=1, max_size=300),
    new_version=st.text(alphabet="0123456789abcdef", min_size=1, max_size=40),
)
def test_rewrap_changes_only_the_key_block_and_tag(
    plaintext: bytes, kind: str, new_ciphertext: bytes, new_version: str
) -> None:
    if kind == "record":
        sealed, opener = seal_record(plaintext, **seal_arguments()), open_record
    else:
        sealed, opener = seal_batch(plaintext, **seal_arguments(segment_size=64)), open_batch
    new_key = WrappedKey(KeyReference("gcp-kms://projects/p/x", new_version), new_ciphertext)
    rewrapped = rewrap_envelope(sealed, DEK, new_key)
    old_core, old_block, old_tag, old_body = parts(sealed)
    new_core, new_block, new_tag, new_body = parts(rewrapped)
    assert new_core == old_core
    assert new_body == old_body  # every segment frame, byte for byte
    assert new_block != old_block
    assert new_tag != old_tag
    header = read_header(rewrapped)[0]
    assert header.wrapped_key == new_key
    assert header.commitment == read_header(sealed)[0].commitment
    assert opener(rewrapped, DEK) == plaintext


def test_rewrap_back_restores_the_original_bytes() -> None:
    sealed = seal_batch(os.urandom(300), **seal_arguments(segment_size=64))
    there = rewrap_envelope(sealed, DEK, NEW_WRAPPED)
    back = rewrap_envelope(there, DEK, WRAPPED)
    assert back == sealed


@pytest.mark.parametrize("kind", ["record", "batch"])
def test_wrong_dek_is_refused_uniformly(kind: str) -> None:
    sealer = seal_record if kind == "record" else seal_batch
    sealed = sealer(b"payload", **seal_arguments())
    with pytest.raises(EnvelopeAuthenticationError, match=r"^envelope authentication failed$"):
        rewrap_envelope(sealed, OTHER_DEK, NEW_WRAPPED)


def test_a_changed_key_block_or_tag_is_refused() -> None:
    sealed = seal_record(b"payload", **seal_arguments())
    core, block, tag, body = parts(sealed)
    changed_block = block[:-1] + bytes([block[-1] ^ 0x01])
    changed_tag = tag[:-1] + bytes([tag[-1] ^ 0x80])
    for tampered in (core + changed_block + tag + body, core + block + changed_tag + body):
        with pytest.raises(EnvelopeAuthenticationError):
            rewrap_envelope(tampered, DEK, NEW_WRAPPED)
        with pytest.raises(EnvelopeAuthenticationError):
            open_record(tampered, DEK)


def test_a_key_block_grafted_without_a_new_tag_does_not_open() -> None:
    """Segments do not bind the key block: the header tag alone must catch the swap."""
    sealed = seal_batch(os.urandom(200), **seal_arguments(segment_size=64))
    rewrapped = rewrap_envelope(sealed, DEK, NEW_WRAPPED)
    core, _, old_tag, body = parts(sealed)
    _, new_block, _, _ = parts(rewrapped)
    with pytest.raises(EnvelopeAuthenticationError):
        open_batch(core + new_block + old_tag + body, DEK)


def test_rewrap_does_not_vouch_for_the_payload() -> None:
    sealed = seal_record(b"payload!", **seal_arguments())
    damaged = sealed[:-1] + bytes([sealed[-1] ^ 0x01])
    rewrapped = rewrap_envelope(damaged, DEK, NEW_WRAPPED)  # header checks, body untouched
    assert parts(rewrapped)[3] == parts(damaged)[3]
    with pytest.raises(EnvelopeAuthenticationError):
        open_record(rewrapped, DEK)


def test_structural_problems_are_format_errors() -> None:
    record = seal_record(b"x", **seal_arguments())
    with pytest.raises(EnvelopeFormatError, match="1 trailing bytes after the envelope"):
        rewrap_envelope(record + b"\x00", DEK, NEW_WRAPPED)
    batch = seal_batch(os.urandom(200), **seal_arguments(segment_size=64))
    last_frame = len(batch) - (5 + 8 + 16)
    with pytest.raises(EnvelopeFormatError, match="ends before its final segment"):
        rewrap_envelope(batch[:last_frame], DEK, NEW_WRAPPED)
    with pytest.raises(EnvelopeFormatError, match="new wrapped key must be WrappedKey"):
        rewrap_envelope(record, DEK, b"not a wrapped key")  # type: ignore[arg-type]
    with pytest.raises(EnvelopeFormatError, match="header tag truncated"):
        rewrap_header(record[: read_header(record)[1] - 1], DEK, NEW_WRAPPED)
    with pytest.raises(TypeError, match="data_key must be DataKey"):
        rewrap_envelope(record, DEK.secret_bytes(), NEW_WRAPPED)  # type: ignore[arg-type]


def test_header_prefix_rewrap_of_a_large_file_copies_the_body() -> None:
    plaintext = os.urandom(200_000)
    sealed = seal_batch(plaintext, **seal_arguments(segment_size=4096))
    source = io.BytesIO(sealed)
    prefix = source.read(MAX_HEADER_LENGTH)
    new_header, old_length = rewrap_header(prefix, DEK, NEW_WRAPPED)
    assert old_length == read_header(sealed)[1]
    source.seek(old_length)
    target = io.BytesIO()
    target.write(new_header)
    target.write(source.read())
    assert target.getvalue() == rewrap_envelope(sealed, DEK, NEW_WRAPPED)
    assert open_batch(target.getvalue(), DEK) == plaintext


def test_the_longest_header_fits_max_header_length() -> None:
    context = {f"k{index:02}": "v" * 249 for index in range(31)}
    context["k31"] = "v" * (8192 - 31 * (2 + 3 + 2 + 249) - (2 + 3 + 2))
    longest = WrappedKey(KeyReference("u" * 1024, "v" * 128), b"w" * 4096)
    sealed = seal_record(
        b"",
        **seal_arguments(
            wrapped_key=longest, region="r" * 64, producer_id="p" * 256, context=context
        ),
    )
    assert read_header(sealed)[1] == MAX_HEADER_LENGTH == 13_928
