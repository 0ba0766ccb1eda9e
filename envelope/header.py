"""The authenticated header of envelope format v1: its dataclass, layout and parse entry points.

The header is the same for records, batches and record streams (docs/FORMAT.md section 2;
a record stream's ``segment_size`` slot holds its record count, section 13) and has three
parts: the **core header** (fixed fields, region, producer, context), the **key block**
(KEK URI, KEK version, wrapped DEK) and the 32-byte **header tag**. It is parsed without any
key: magic and version first, every length bounded before it is read, text strict UTF-8, the
encryption context sorted by UTF-8 bytes with unique keys. Parsing proves structure only;
authenticity comes from the key commitment and the header tag (``envelope._keyschedule``),
which the openers check before decrypting, and from every segment's AAD, which binds the
core header. The byte-level encoders and the field decoder live in ``envelope._header_codec``
and are re-exported here. This module computes no tag and holds no key.

:func:`parse_envelope` parses once for many uses: its :class:`ParsedEnvelope` keeps the header
together with the exact (immutable) bytes it was parsed from, so a caller that first reads the
header (to group by key) and then opens the envelope does not parse it twice. The body after
the header is not examined here; the openers walk it.

Envelopes sealed together share every header byte after the 124-byte fixed part (region,
producer, context, key block). :func:`parse_header` decodes and validates such a suffix in
full the first time, remembers the last few it validated (public header bytes only, no
key), and afterwards recognises one by comparing bytes: equal bytes decode to equal fields,
because the header is a self-delimiting prefix code. The fixed part is still unpacked and
checked for every header, and anything not recognised takes the full strict path, so the
result and every error are those of a parse without the cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NoReturn, final

from envelope._header_codec import (
    ALGORITHM_AES256GCM_HKDF_SHA512,
    FIXED_HEADER_LENGTH,
    FORMAT_VERSION,
    KIND_BATCH,
    KIND_CODES,
    KIND_RECORD,
    KIND_RECORD_STREAM,
    MAGIC,
    SUPPORTED_ALGORITHMS,
    decode_fixed_part,
    decode_variable_part,
    encode_context,
    encode_core_header,
    encode_key_block,
)
from envelope._wire import as_byte_view
from envelope.errors import EnvelopeFormatError
from envelope.keys import KeyReference, WrappedKey

__all__ = [
    "ALGORITHM_AES256GCM_HKDF_SHA512",
    "FIXED_HEADER_LENGTH",
    "FORMAT_VERSION",
    "KIND_BATCH",
    "KIND_RECORD",
    "KIND_RECORD_STREAM",
    "MAGIC",
    "SUPPORTED_ALGORITHMS",
    "EnvelopeHeader",
    "HeaderLayout",
    "ParsedEnvelope",
    "encode_context",
    "encode_core_header",
    "encode_key_block",
    "parse_envelope",
    "parse_header",
    "read_header",
    "view_and_header",
]


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
        if self.kind not in KIND_CODES:
            raise EnvelopeFormatError(
                f"kind {self.kind!r} is not 'record', 'batch' or 'record-stream'")
        if not isinstance(self.context, Mapping):
            raise EnvelopeFormatError(
                f"context must be a mapping, not {type(self.context).__name__}"
            )
        ordered = dict(sorted(self.context.items(), key=lambda item: _sort_key(item[0])))
        object.__setattr__(self, "context", MappingProxyType(ordered))

    @classmethod
    def _validated(cls, kind: str, algorithm: int, envelope_id: bytes, salt: bytes,
                   commitment: bytes, segment_size: int, schema_fingerprint: bytes,
                   template: EnvelopeHeader) -> EnvelopeHeader:
        """A header sharing ``template``'s already validated variable fields (parse cache)."""
        fields = dict(template.__dict__)
        fields.update(kind=kind, algorithm=algorithm, envelope_id=envelope_id, salt=salt,
                      commitment=commitment, segment_size=segment_size,
                      schema_fingerprint=schema_fingerprint)
        header = object.__new__(cls)
        object.__setattr__(header, "__dict__", fields)
        return header

    @property
    def record_count(self) -> int | None:
        """A record stream's committed record count (its ``segment_size`` slot); else None."""
        return self.segment_size if self.kind == KIND_RECORD_STREAM else None

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


def read_header(envelope: bytes | bytearray | memoryview) -> tuple[EnvelopeHeader, int]:
    """Parse the header at the start of ``envelope``; structural only, no key needed.

    Returns the header and its length in bytes (tag included). Bytes after the header (the
    body) are not examined here; the openers and :func:`envelope.envelope_length` check them.
    """
    header, layout = parse_header(envelope)
    return header, layout.end


# The last few header suffixes (bytes after the fixed part, up to the tag) parsed in full:
# (suffix, a header carrying their fields, their layout). Replaced whole, never mutated,
# so concurrent parsers see either the old or the new tuple.
_SUFFIX_CACHE_SIZE = 8
_known_suffixes: tuple[tuple[bytes, EnvelopeHeader, HeaderLayout], ...] = ()


def parse_header(
    envelope: bytes | bytearray | memoryview,
) -> tuple[EnvelopeHeader, HeaderLayout]:
    """Parse the header and say where its core, key block and tag lie."""
    view = as_byte_view(envelope)
    (kind, algorithm, envelope_id, schema_fingerprint, salt, commitment,
     segment_size) = decode_fixed_part(view)
    size = len(view)
    for suffix, template, layout in _known_suffixes:
        if layout.end <= size and view[FIXED_HEADER_LENGTH : layout.tag_start] == suffix:
            return EnvelopeHeader._validated(kind, algorithm, envelope_id, salt, commitment,
                                             segment_size, schema_fingerprint, template), layout
    (region, producer_id, context, core_end, kek_uri, kek_version, wrapped_ciphertext,
     tag_start, end) = decode_variable_part(view)
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
    layout = HeaderLayout(core_end=core_end, tag_start=tag_start, end=end)
    _remember_suffix(bytes(view[FIXED_HEADER_LENGTH:tag_start]), header, layout)
    return header, layout


def _remember_suffix(suffix: bytes, header: EnvelopeHeader, layout: HeaderLayout) -> None:
    global _known_suffixes
    _known_suffixes = ((suffix, header, layout), *_known_suffixes[: _SUFFIX_CACHE_SIZE - 1])


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
