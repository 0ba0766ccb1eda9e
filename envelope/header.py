"""The authenticated header of envelope format v1: its dataclass, encoders and strict parser.

The header is the same for records and batches (docs/FORMAT.md section 2) and has three
parts: the **core header** (fixed fields, region, producer, context), the **key block**
(KEK URI, KEK version, wrapped DEK) and the 32-byte **header tag**. It is parsed without any
key: magic and version first, every length bounded before it is read, text strict UTF-8, the
encryption context sorted by UTF-8 bytes with unique keys. Parsing proves structure only;
authenticity comes from the key commitment and the header tag (``envelope._keyschedule``),
which the openers check before decrypting, and from every segment's AAD, which binds the
core header. This module computes no tag and holds no key.

:func:`parse_envelope` parses once for many uses: its :class:`ParsedEnvelope` keeps the header
together with the exact (immutable) bytes it was parsed from, so a caller that first reads the
header (to group by key) and then opens the envelope does not parse it twice. The body after
the header is not examined here; the openers walk it.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn, final

from envelope._wire import (
    BoundedReader,
    as_byte_view,
    bytes_to_text,
    exact_bytes,
    text_to_bytes,
    u16_prefixed,
)
from envelope.errors import EnvelopeFormatError, EnvelopeLimitError
from envelope.keys import KeyReference, WrappedKey
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
    MAX_WRAPPED_KEY,
    MIN_SEGMENT_SIZE,
    SALT_LENGTH,
    SCHEMA_FINGERPRINT_LENGTH,
)

__all__ = [
    "ALGORITHM_AES256GCM_HKDF_SHA512",
    "FORMAT_VERSION",
    "KIND_BATCH",
    "KIND_RECORD",
    "MAGIC",
    "EnvelopeHeader",
    "HeaderLayout",
    "ParsedEnvelope",
    "encode_core_header",
    "encode_key_block",
    "parse_envelope",
    "parse_header",
    "read_header",
    "view_and_header",
]

MAGIC = b"SBEV"
FORMAT_VERSION = 1
ALGORITHM_AES256GCM_HKDF_SHA512 = 1  # AES-256-GCM, HKDF-SHA-512 key derivation, key-committed
SUPPORTED_ALGORITHMS = frozenset({ALGORITHM_AES256GCM_HKDF_SHA512})
KIND_RECORD = "record"
KIND_BATCH = "batch"
_KIND_CODES = {KIND_RECORD: 1, KIND_BATCH: 2}
_KIND_NAMES = {code: name for name, code in _KIND_CODES.items()}

# magic, version, kind, algorithm, envelope_id, schema_fingerprint, salt, commitment, segment_size
_FIXED = struct.Struct(">4sBBH16s32s32s32sI")
FIXED_HEADER_LENGTH = _FIXED.size  # 124


@dataclass(frozen=True)
class EnvelopeHeader:
    """Everything an envelope says about itself before its ciphertext."""

    kind: str
    algorithm: int
    envelope_id: bytes
    wrapped_key: WrappedKey
    region: str
    producer_id: str
    schema_fingerprint: bytes
    context: Mapping[str, str]
    salt: bytes
    commitment: bytes
    segment_size: int

    def __post_init__(self) -> None:
        if self.kind not in _KIND_CODES:
            raise EnvelopeFormatError(f"kind {self.kind!r} is not 'record' or 'batch'")
        if not isinstance(self.context, Mapping):
            raise EnvelopeFormatError(
                f"context must be a mapping, not {type(self.context).__name__}"
            )
        ordered = dict(sorted(self.context.items(), key=lambda item: _sort_key(item[0])))
        object.__setattr__(self, "context", MappingProxyType(ordered))

    @property
    def record_id(self) -> str:
        """Hex of the envelope id: how dead letters and logs name this envelope."""
        return self.envelope_id.hex()


def _sort_key(key: object) -> bytes:
    if not isinstance(key, str):
        raise EnvelopeFormatError(f"context key must be str, not {type(key).__name__}")
    return key.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class HeaderLayout:
    """Where the header's parts lie: core ``[0, core_end)``, key block ``[core_end,
    tag_start)``, tag ``[tag_start, end)``; the body starts at ``end``."""

    core_end: int
    tag_start: int
    end: int


def encode_core_header(header: EnvelopeHeader) -> bytes:
    """The canonical core header: everything but the key block and the tag.

    Refuses anything :func:`read_header` would; segment AADs bind exactly these bytes.
    """
    if header.algorithm not in SUPPORTED_ALGORITHMS:
        raise EnvelopeFormatError(f"unknown algorithm id {header.algorithm}")
    _check_segment_size(header.kind, header.segment_size)
    fixed = _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        _KIND_CODES[header.kind],
        header.algorithm,
        exact_bytes("envelope id", header.envelope_id, ENVELOPE_ID_LENGTH),
        exact_bytes("schema fingerprint", header.schema_fingerprint, SCHEMA_FINGERPRINT_LENGTH),
        exact_bytes("salt", header.salt, SALT_LENGTH),
        exact_bytes("commitment", header.commitment, COMMITMENT_LENGTH),
        header.segment_size,
    )
    return b"".join(
        (
            fixed,
            u16_prefixed(text_to_bytes("region", header.region, minimum=1, maximum=MAX_REGION)),
            u16_prefixed(
                text_to_bytes(
                    "producer id", header.producer_id, minimum=1, maximum=MAX_PRODUCER_ID
                )
            ),
            encode_context(header.context),
        )
    )


def encode_key_block(wrapped: WrappedKey) -> bytes:
    """``kek_uri || kek_version || wrapped_key``, each u16-prefixed: what a rewrap replaces."""
    if not isinstance(wrapped, WrappedKey):
        raise EnvelopeFormatError(
            f"wrapped key must be WrappedKey, not {type(wrapped).__name__}"
        )
    return b"".join(
        (
            u16_prefixed(
                text_to_bytes("kek uri", wrapped.kek.uri, minimum=1, maximum=MAX_KEK_URI)
            ),
            u16_prefixed(
                text_to_bytes(
                    "kek version", wrapped.kek.version, minimum=1, maximum=MAX_KEK_VERSION
                )
            ),
            u16_prefixed(wrapped.ciphertext),
        )
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


def read_header(envelope: bytes | bytearray | memoryview) -> tuple[EnvelopeHeader, int]:
    """Parse the header at the start of ``envelope``; structural only, no key needed.

    Returns the header and its length in bytes (tag included). Bytes after the header (the
    body) are not examined here; the openers and :func:`envelope.envelope_length` check them.
    """
    header, layout = parse_header(envelope)
    return header, layout.end


def parse_header(
    envelope: bytes | bytearray | memoryview,
) -> tuple[EnvelopeHeader, HeaderLayout]:
    """Parse the header and say where its core, key block and tag lie."""
    reader = BoundedReader(envelope)
    _check_magic(reader)
    version = reader.u8("version")
    if version != FORMAT_VERSION:
        raise EnvelopeFormatError(f"unsupported version {version}, expected {FORMAT_VERSION}")
    kind_code = reader.u8("kind")
    if kind_code not in _KIND_NAMES:
        raise EnvelopeFormatError(f"kind {kind_code} is not 1 (record) or 2 (batch)")
    kind = _KIND_NAMES[kind_code]
    algorithm = reader.u16("algorithm")
    if algorithm not in SUPPORTED_ALGORITHMS:
        raise EnvelopeFormatError(f"unknown algorithm id {algorithm}")
    envelope_id = bytes(reader.take(ENVELOPE_ID_LENGTH, "envelope id"))
    schema_fingerprint = bytes(reader.take(SCHEMA_FINGERPRINT_LENGTH, "schema fingerprint"))
    salt = bytes(reader.take(SALT_LENGTH, "salt"))
    commitment = bytes(reader.take(COMMITMENT_LENGTH, "commitment"))
    segment_size = reader.u32("segment size")
    _check_segment_size(kind, segment_size)
    region = reader.prefixed_text("region", minimum=1, maximum=MAX_REGION)
    producer_id = reader.prefixed_text("producer id", minimum=1, maximum=MAX_PRODUCER_ID)
    context = _read_context(reader)
    core_end = reader.position
    kek_uri = reader.prefixed_text("kek uri", minimum=1, maximum=MAX_KEK_URI)
    kek_version = reader.prefixed_text("kek version", minimum=1, maximum=MAX_KEK_VERSION)
    wrapped_ciphertext = bytes(reader.prefixed("wrapped key", minimum=1, maximum=MAX_WRAPPED_KEY))
    tag_start = reader.position
    reader.take(HEADER_TAG_LENGTH, "header tag")
    header = EnvelopeHeader(
        kind=kind,
        algorithm=algorithm,
        envelope_id=envelope_id,
        wrapped_key=WrappedKey(KeyReference(kek_uri, kek_version), wrapped_ciphertext),
        region=region,
        producer_id=producer_id,
        schema_fingerprint=schema_fingerprint,
        context=context,
        salt=salt,
        commitment=commitment,
        segment_size=segment_size,
    )
    return header, HeaderLayout(core_end=core_end, tag_start=tag_start, end=reader.position)


@final
class ParsedEnvelope:
    """An envelope whose header was parsed once, bound to the exact bytes it came from.

    The only way to build one is to parse: ``ParsedEnvelope(data)`` (or
    :func:`parse_envelope`) parses ``data`` itself, so no caller can pair a header with other
    bytes. Input that is not ``bytes`` (a ``bytearray``, a memoryview) is copied first, so a
    later write to the caller's buffer cannot change what was parsed. Instances are
    immutable, cannot be subclassed, and pickle as their bytes: unpickling parses again, so a
    pickle cannot smuggle in a header either. Structural only, like :func:`read_header`: the
    openers still check the body and authenticate the header with the data key.
    """

    __slots__ = ("_data", "_header", "_layout", "_view")

    _data: bytes
    _view: memoryview
    _header: EnvelopeHeader
    _layout: HeaderLayout

    def __init__(self, envelope: bytes | bytearray | memoryview) -> None:
        data = envelope if type(envelope) is bytes else bytes(as_byte_view(envelope))
        view = memoryview(data)
        header, layout = parse_header(view)
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_view", view)
        object.__setattr__(self, "_header", header)
        object.__setattr__(self, "_layout", layout)

    def __init_subclass__(cls, **kwargs: Any) -> NoReturn:
        raise TypeError("ParsedEnvelope cannot be subclassed")

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("ParsedEnvelope is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("ParsedEnvelope is immutable")

    def __reduce__(self) -> tuple[type[ParsedEnvelope], tuple[bytes]]:
        return ParsedEnvelope, (self._data,)

    def __eq__(self, other: object) -> bool:
        if type(other) is not ParsedEnvelope:
            return NotImplemented
        return self._data == other._data

    def __hash__(self) -> int:
        return hash(self._data)

    def __repr__(self) -> str:
        return (f"ParsedEnvelope(kind={self._header.kind!r}, "
                f"record_id={self._header.record_id!r}, length={len(self._data)})")

    @property
    def header(self) -> EnvelopeHeader:
        return self._header

    @property
    def layout(self) -> HeaderLayout:
        """Where the core header, key block and tag lie; the body starts at ``layout.end``."""
        return self._layout

    @property
    def header_length(self) -> int:
        """Header bytes, tag included: what :func:`read_header` returns beside the header."""
        return self._layout.end

    @property
    def data(self) -> bytes:
        """The whole envelope as parsed (header and body), e.g. for a dead letter."""
        return self._data

    @property
    def view(self) -> memoryview:
        """A read-only view of :attr:`data`, for decrypting slices in place."""
        return self._view


def parse_envelope(envelope: bytes | bytearray | memoryview) -> ParsedEnvelope:
    """Parse the header once and keep it with its bytes (see :class:`ParsedEnvelope`)."""
    return ParsedEnvelope(envelope)


def view_and_header(
    envelope: bytes | bytearray | memoryview | ParsedEnvelope,
) -> tuple[memoryview, EnvelopeHeader, HeaderLayout]:
    """What an opener needs: the envelope's bytes, header and layout, parsed at most once.

    A :class:`ParsedEnvelope` is used as it is (it was parsed from exactly these bytes);
    anything else is parsed here, in place (no copy), as before.
    """
    if type(envelope) is ParsedEnvelope:
        return envelope.view, envelope.header, envelope.layout
    view = as_byte_view(envelope)  # type: ignore[arg-type]
    header, layout = parse_header(view)
    return view, header, layout


def _check_magic(reader: BoundedReader) -> None:
    present = bytes(reader.view[: len(MAGIC)])
    if present != MAGIC[: len(present)]:
        raise EnvelopeFormatError(f"bad magic {present.hex()}, expected {MAGIC.hex()}")
    reader.take(len(MAGIC), "magic")


def _check_segment_size(kind: str, segment_size: int) -> None:
    if kind == KIND_RECORD:
        if segment_size != 0:
            raise EnvelopeFormatError(f"segment size {segment_size} must be 0 for a record")
        return
    if not isinstance(segment_size, int) or isinstance(segment_size, bool):
        raise EnvelopeFormatError("segment size must be an int")
    if segment_size > MAX_SEGMENT_SIZE:
        raise EnvelopeLimitError(f"segment size {segment_size} exceeds {MAX_SEGMENT_SIZE}")
    if segment_size < MIN_SEGMENT_SIZE:
        raise EnvelopeFormatError(f"segment size {segment_size} is below {MIN_SEGMENT_SIZE}")


def _read_context(reader: BoundedReader) -> dict[str, str]:
    count = reader.u16("context entry count")
    if count > MAX_CONTEXT_ENTRIES:
        raise EnvelopeLimitError(f"context entry count {count} exceeds {MAX_CONTEXT_ENTRIES}")
    start = reader.position
    context: dict[str, str] = {}
    previous_key = b""
    for index in range(count):
        key_raw = bytes(reader.prefixed("context key", minimum=1, maximum=MAX_CONTEXT_KEY))
        value_raw = reader.prefixed("context value", minimum=0, maximum=MAX_CONTEXT_VALUE)
        if reader.position - start > MAX_CONTEXT_BYTES:
            raise EnvelopeLimitError(
                f"context length {reader.position - start} exceeds {MAX_CONTEXT_BYTES}"
            )
        if index and key_raw == previous_key:
            raise EnvelopeFormatError(f"context key {key_raw!r} is duplicated")
        if index and key_raw < previous_key:
            raise EnvelopeFormatError(f"context key {key_raw!r} is out of order")
        key = bytes_to_text("context key", key_raw)
        context[key] = bytes_to_text(f"context value for {key!r}", value_raw)
        previous_key = key_raw
    return context

