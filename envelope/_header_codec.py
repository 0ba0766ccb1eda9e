"""The byte-level codec of the envelope header (docs/FORMAT.md section 2): wire constants,
canonical encoders and the strict field decoder.

:func:`decode_header_fields` reads the 124-byte fixed part with one ``struct.unpack_from``
when that many bytes are present and walks the variable part with plain offsets over one
memoryview; a shorter input is read field by field so that the first missing field is the one
named in the error. Every length is bounded before it is sliced, and every error is the same
typed error, with the same text, that the field-by-field reader gives. Only fields that are
stored are copied out of the input. This module builds no :class:`EnvelopeHeader` (that is
``envelope.header``), computes no tag and holds no key.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, NoReturn

from envelope._wire import (
    BoundedReader,
    bytes_to_text,
    check_length,
    exact_bytes,
    text_to_bytes,
    u16_prefixed,
)
from envelope.errors import EnvelopeFormatError, EnvelopeLimitError
from envelope.keys import WrappedKey
from envelope.limits import (
    COMMITMENT_LENGTH,
    ENVELOPE_ID_LENGTH,
    HEADER_TAG_LENGTH,
    MAX_CONTEXT_BYTES,
    MAX_CONTEXT_ENTRIES,
    MAX_CONTEXT_KEY,
    MAX_CONTEXT_VALUE,
    MAX_KEK_URI,
    MAX_KEK_VERSION,
    MAX_PRODUCER_ID,
    MAX_REGION,
    MAX_SEGMENT_SIZE,
    MAX_STREAM_RECORDS,
    MAX_WRAPPED_KEY,
    MIN_SEGMENT_SIZE,
    SALT_LENGTH,
    SCHEMA_FINGERPRINT_LENGTH,
)

if TYPE_CHECKING:
    from envelope.header import EnvelopeHeader

MAGIC = b"SBEV"
FORMAT_VERSION = 1
ALGORITHM_AES256GCM_HKDF_SHA512 = 1  # AES-256-GCM, HKDF-SHA-512 key derivation, key-committed
SUPPORTED_ALGORITHMS = frozenset({ALGORITHM_AES256GCM_HKDF_SHA512})
KIND_RECORD = "record"
KIND_BATCH = "batch"
KIND_RECORD_STREAM = "record-stream"  # record profile 2 (FORMAT.md section 13)
KIND_CODES = {KIND_RECORD: 1, KIND_BATCH: 2, KIND_RECORD_STREAM: 3}
_KIND_NAMES = {code: name for name, code in KIND_CODES.items()}

# magic, version, kind, algorithm, envelope_id, schema_fingerprint, salt, commitment, segment_size
FIXED = struct.Struct(">4sBBH16s32s32s32sI")
FIXED_HEADER_LENGTH = FIXED.size  # 124

# The decoded fields, in the order decode_header_fields returns them.
HeaderFields = tuple[
    str,  # kind
    int,  # algorithm
    bytes,  # envelope_id
    bytes,  # schema_fingerprint
    bytes,  # salt
    bytes,  # commitment
    int,  # segment_size
    str,  # region
    str,  # producer_id
    dict[str, str],  # context
    int,  # core_end
    str,  # kek_uri
    str,  # kek_version
    bytes,  # wrapped key ciphertext
    int,  # tag_start
    int,  # end
]


def encode_core_header(header: EnvelopeHeader) -> bytes:
    """The canonical core header: everything but the key block and the tag.

    Refuses anything :func:`decode_header_fields` would; segment AADs bind exactly these bytes.
    """
    if header.algorithm not in SUPPORTED_ALGORITHMS:
        raise EnvelopeFormatError(f"unknown algorithm id {header.algorithm}")
    check_segment_size(header.kind, header.segment_size)
    fixed = FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        KIND_CODES[header.kind],
        header.algorithm,
        exact_bytes("envelope id", header.envelope_id, ENVELOPE_ID_LENGTH),
        exact_bytes("schema fingerprint", header.schema_fingerprint, SCHEMA_FINGERPRINT_LENGTH),
        exact_bytes("salt", header.salt, SALT_LENGTH),
        exact_bytes("commitment", header.commitment, COMMITMENT_LENGTH),
        header.segment_size,
    )
    region = text_to_bytes("region", header.region, minimum=1, maximum=MAX_REGION)
    producer = text_to_bytes(
        "producer id", header.producer_id, minimum=1, maximum=MAX_PRODUCER_ID
    )
    return b"".join(
        (fixed, u16_prefixed(region), u16_prefixed(producer), encode_context(header.context))
    )


def encode_key_block(wrapped: WrappedKey) -> bytes:
    """``kek_uri || kek_version || wrapped_key``, each u16-prefixed: what a rewrap replaces."""
    if not isinstance(wrapped, WrappedKey):
        raise EnvelopeFormatError(
            f"wrapped key must be WrappedKey, not {type(wrapped).__name__}"
        )
    uri = text_to_bytes("kek uri", wrapped.kek.uri, minimum=1, maximum=MAX_KEK_URI)
    version = text_to_bytes(
        "kek version", wrapped.kek.version, minimum=1, maximum=MAX_KEK_VERSION
    )
    return b"".join(
        (u16_prefixed(uri), u16_prefixed(version), u16_prefixed(wrapped.ciphertext))
    )


def encode_context(context: Mapping[str, str]) -> bytes:
    """``u16 count`` then ``u16 len || key || u16 len || value`` per entry, keys sorted."""
    if len(context) > MAX_CONTEXT_ENTRIES:
        raise EnvelopeLimitError(
            f"context entry count {len(context)} exceeds {MAX_CONTEXT_ENTRIES}"
        )
    entries = []
    for key, value in context.items():
        key_bytes = text_to_bytes("context key", key, minimum=1, maximum=MAX_CONTEXT_KEY)
        value_bytes = text_to_bytes(
            f"context value for {key!r}", value, minimum=0, maximum=MAX_CONTEXT_VALUE
        )
        entries.append((key_bytes, value_bytes))
    entries.sort()
    encoded = b"".join(u16_prefixed(k) + u16_prefixed(v) for k, v in entries)
    if len(encoded) > MAX_CONTEXT_BYTES:
        raise EnvelopeLimitError(f"context length {len(encoded)} exceeds {MAX_CONTEXT_BYTES}")
    return len(entries).to_bytes(2, "big") + encoded


def check_segment_size(kind: str, segment_size: int) -> None:
    """Record: exactly 0; batch: an int in [MIN_SEGMENT_SIZE, MAX_SEGMENT_SIZE]; record
    stream: the slot holds the record count, 1..MAX_STREAM_RECORDS."""
    if kind == KIND_RECORD:
        if segment_size != 0:
            raise EnvelopeFormatError(f"segment size {segment_size} must be 0 for a record")
        return
    if not isinstance(segment_size, int) or isinstance(segment_size, bool):
        raise EnvelopeFormatError("segment size must be an int")
    if kind == KIND_RECORD_STREAM:
        if segment_size > MAX_STREAM_RECORDS:
            raise EnvelopeLimitError(
                f"record count {segment_size} exceeds {MAX_STREAM_RECORDS}")
        if segment_size < 1:
            raise EnvelopeFormatError(f"record count {segment_size} is below 1")
        return
    if segment_size > MAX_SEGMENT_SIZE:
        raise EnvelopeLimitError(f"segment size {segment_size} exceeds {MAX_SEGMENT_SIZE}")
    if segment_size < MIN_SEGMENT_SIZE:
        raise EnvelopeFormatError(f"segment size {segment_size} is below {MIN_SEGMENT_SIZE}")


def decode_header_fields(view: memoryview) -> HeaderFields:
    """Every header field and the layout offsets, from a flat byte view (see ``HeaderFields``)."""
    return decode_fixed_part(view) + decode_variable_part(view)


def decode_fixed_part(view: memoryview) -> tuple[str, int, bytes, bytes, bytes, bytes, int]:
    """kind, algorithm, envelope id, schema fingerprint, salt, commitment, segment size."""
    if len(view) < FIXED_HEADER_LENGTH:
        _raise_short_fixed_part(view)
    (magic, version, kind_code, algorithm, envelope_id, schema_fingerprint, salt, commitment,
     segment_size) = FIXED.unpack_from(view)
    if magic != MAGIC:
        _raise_bad_magic(magic)
    _check_version(version)
    kind = _kind_name(kind_code)
    _check_algorithm(algorithm)
    check_segment_size(kind, segment_size)
    return kind, algorithm, envelope_id, schema_fingerprint, salt, commitment, segment_size


def decode_variable_part(
    view: memoryview,
) -> tuple[str, str, dict[str, str], int, str, str, bytes, int, int]:
    """region, producer id, context, core end, KEK URI, KEK version, wrapped key, tag start,
    end: everything after the fixed part (which must be there and valid)."""
    raw, position = _prefixed(view, FIXED_HEADER_LENGTH, "region", 1, MAX_REGION)
    region = bytes_to_text("region", raw)
    raw, position = _prefixed(view, position, "producer id", 1, MAX_PRODUCER_ID)
    producer_id = bytes_to_text("producer id", raw)
    context, core_end = _decode_context(view, position)
    raw, position = _prefixed(view, core_end, "kek uri", 1, MAX_KEK_URI)
    kek_uri = bytes_to_text("kek uri", raw)
    raw, position = _prefixed(view, position, "kek version", 1, MAX_KEK_VERSION)
    kek_version = bytes_to_text("kek version", raw)
    raw, tag_start = _prefixed(view, position, "wrapped key", 1, MAX_WRAPPED_KEY)
    wrapped_ciphertext = bytes(raw)
    remaining = len(view) - tag_start
    if remaining < HEADER_TAG_LENGTH:
        raise EnvelopeFormatError(
            f"header tag truncated: needs {HEADER_TAG_LENGTH} bytes, {remaining} remain"
        )
    return (region, producer_id, context, core_end, kek_uri, kek_version, wrapped_ciphertext,
            tag_start, tag_start + HEADER_TAG_LENGTH)


def _prefixed(
    view: memoryview, position: int, field: str, minimum: int, maximum: int
) -> tuple[memoryview, int]:
    """A ``u16 BE length || bytes`` field at ``position``: a view of it, and the next offset."""
    size = len(view)
    start = position + 2
    if start > size:
        raise EnvelopeFormatError(
            f"{field} length truncated: needs 2 bytes, {size - position} remain"
        )
    length = (view[position] << 8) | view[position + 1]
    if length > maximum or length < minimum:
        check_length(field, length, minimum=minimum, maximum=maximum)
    stop = start + length
    if stop > size:
        raise EnvelopeFormatError(f"{field} truncated: needs {length} bytes, {size - start} remain")
    return view[start:stop], stop


def _decode_context(view: memoryview, position: int) -> tuple[dict[str, str], int]:
    """The sorted, duplicate-free context entries and the offset after them (the core end)."""
    start = position + 2
    if start > len(view):
        raise EnvelopeFormatError(
            f"context entry count truncated: needs 2 bytes, {len(view) - position} remain"
        )
    count = (view[position] << 8) | view[position + 1]
    if count > MAX_CONTEXT_ENTRIES:
        raise EnvelopeLimitError(f"context entry count {count} exceeds {MAX_CONTEXT_ENTRIES}")
    position = start
    context: dict[str, str] = {}
    previous_key = b""
    for index in range(count):
        key_view, position = _prefixed(view, position, "context key", 1, MAX_CONTEXT_KEY)
        value_raw, position = _prefixed(view, position, "context value", 0, MAX_CONTEXT_VALUE)
        if position - start > MAX_CONTEXT_BYTES:
            raise EnvelopeLimitError(
                f"context length {position - start} exceeds {MAX_CONTEXT_BYTES}"
            )
        key_raw = bytes(key_view)
        if index and key_raw == previous_key:
            raise EnvelopeFormatError(f"context key {key_raw!r} is duplicated")
        if index and key_raw < previous_key:
            raise EnvelopeFormatError(f"context key {key_raw!r} is out of order")
        key = bytes_to_text("context key", key_raw)
        context[key] = bytes_to_text(f"context value for {key!r}", value_raw)
        previous_key = key_raw
    return context, position


def _raise_short_fixed_part(view: memoryview) -> NoReturn:
    """Read a too-short fixed part field by field, so the error names the first bad field."""
    reader = BoundedReader(view)
    present = bytes(view[: len(MAGIC)])
    if present != MAGIC[: len(present)]:
        _raise_bad_magic(present)
    reader.take(len(MAGIC), "magic")
    _check_version(reader.u8("version"))
    kind = _kind_name(reader.u8("kind"))
    _check_algorithm(reader.u16("algorithm"))
    reader.take(ENVELOPE_ID_LENGTH, "envelope id")
    reader.take(SCHEMA_FINGERPRINT_LENGTH, "schema fingerprint")
    reader.take(SALT_LENGTH, "salt")
    reader.take(COMMITMENT_LENGTH, "commitment")
    check_segment_size(kind, reader.u32("segment size"))
    # Unreachable for fewer than FIXED_HEADER_LENGTH bytes; fail closed all the same.
    raise EnvelopeFormatError(
        f"fixed header truncated: needs {FIXED_HEADER_LENGTH} bytes, {len(view)} remain"
    )


def _raise_bad_magic(present: bytes) -> NoReturn:
    raise EnvelopeFormatError(f"bad magic {present.hex()}, expected {MAGIC.hex()}")


def _check_version(version: int) -> None:
    if version != FORMAT_VERSION:
        raise EnvelopeFormatError(f"unsupported version {version}, expected {FORMAT_VERSION}")


def _kind_name(kind_code: int) -> str:
    if kind_code not in _KIND_NAMES:
        raise EnvelopeFormatError(
            f"kind {kind_code} is not 1 (record), 2 (batch) or 3 (record-stream)")
    return _KIND_NAMES[kind_code]


def _check_algorithm(algorithm: int) -> None:
    if algorithm not in SUPPORTED_ALGORITHMS:
        raise EnvelopeFormatError(f"unknown algorithm id {algorithm}")
