"""Record envelopes sorted by their shared header, parsed once into plain tuples: no key.

Records sealed together (one DEK, one producer, one region) share every header byte after
the 124-byte fixed part: region, producer, context and key block (docs/FORMAT.md section 2).
:class:`RecordSorter` reads each record envelope once: the fixed part is checked by
comparing bytes (magic, version 1, kind ``record``, algorithm 1, segment size 0), and the
bytes after it are recognised as a header suffix the sorter has already decoded in full;
a suffix it has not seen is decoded with the strict field decoder (every bound, strict
UTF-8, sorted unique context) and remembered. Equal suffix bytes decode to equal fields
and offsets because the header is a self-delimiting prefix code, so a record the sorter
takes has exactly the header a full parse would give. Records come out as
:class:`RecordGroup` s, one per distinct suffix: the validated fields once, the envelopes
as they came (immutable ``bytes``), no per-record header object.

Anything the sorter does not take (not ``bytes``, not a record, a malformed header, more
distinct suffixes than it keeps) is left to the caller's full parse
(``envelope.parse_envelope``), which gives the typed error; so no error text is made here.

:func:`peek_record` is the same recognition for code outside the TEE that only routes
records: a process-wide table of the last few suffixes it decoded in full (public header
bytes only, replaced whole so that threads can share it), giving the region, producer and
wrapped key a record's header states, unauthenticated. ``envelope.RecordOpener.open_group``
opens a group under its data key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from envelope._header_codec import (
    ALGORITHM_AES256GCM_HKDF_SHA512,
    FIXED_HEADER_LENGTH,
    FORMAT_VERSION,
    KIND_CODES,
    KIND_RECORD,
    MAGIC,
    decode_variable_part,
)
from envelope.errors import EnvelopeError
from envelope.keys import KeyReference, WrappedKey
from envelope.limits import HEADER_TAG_LENGTH

__all__ = ["RecordGroup", "RecordSorter", "RecordSuffix", "peek_record", "record_envelope_id"]

# magic || version || kind || algorithm: the first 8 bytes of every v1 record header.
RECORD_PREFIX = (MAGIC + bytes((FORMAT_VERSION, KIND_CODES[KIND_RECORD]))
                 + ALGORITHM_AES256GCM_HKDF_SHA512.to_bytes(2, "big"))
ENVELOPE_ID_START = 8
ENVELOPE_ID_END = 24
SALT_START = 56
COMMITMENT_START = 88
COMMITMENT_END = 120
SEGMENT_SIZE_START = 120
_ZERO_SEGMENT_SIZE = bytes(4)  # a record's segment size slot is 0
MAX_SUFFIXES = 64              # distinct suffixes one sorter keeps
_PEEK_SUFFIXES = 16            # distinct suffixes peek_record remembers


@dataclass(frozen=True, eq=False)
class RecordSuffix:
    """The validated header bytes after the fixed part, up to the tag, and what they say."""

    suffix: bytes
    wrapped_key: WrappedKey
    region: str
    producer_id: str
    context: Mapping[str, str]
    core_end: int
    tag_start: int

    @property
    def header_end(self) -> int:
        """Where the header (tag included) ends and the record's length field starts."""
        return self.tag_start + HEADER_TAG_LENGTH


@dataclass(frozen=True, eq=False)
class RecordGroup:
    """Record envelopes whose headers share one validated suffix, in the order they came."""

    header: RecordSuffix
    envelopes: tuple[bytes, ...]
    tags: tuple[object, ...]
    """Per envelope, what the caller passed to :meth:`RecordSorter.add` with it."""


def record_envelope_id(envelope: bytes) -> bytes:
    """The envelope id of a record the sorter or :func:`peek_record` took (fixed offset)."""
    return envelope[ENVELOPE_ID_START:ENVELOPE_ID_END]


def _fixed_part_is_record(envelope: bytes) -> bool:
    return (len(envelope) >= FIXED_HEADER_LENGTH and envelope.startswith(RECORD_PREFIX)
            and envelope.startswith(_ZERO_SEGMENT_SIZE, SEGMENT_SIZE_START))


def _decode_suffix(envelope: bytes) -> RecordSuffix | None:
    """The strict decode of everything after a record's (checked) fixed part, or None."""
    try:
        (region, producer_id, context, core_end, kek_uri, kek_version, wrapped_ciphertext,
         tag_start, _) = decode_variable_part(memoryview(envelope))
        wrapped = WrappedKey(KeyReference(kek_uri, kek_version), wrapped_ciphertext)
    except EnvelopeError:
        return None
    return RecordSuffix(envelope[FIXED_HEADER_LENGTH:tag_start], wrapped, region, producer_id,
                        context, core_end, tag_start)


def _match(envelope: bytes, known: tuple[RecordSuffix, ...] | list[RecordSuffix]
           ) -> RecordSuffix | None:
    size = len(envelope)
    for header in known:
        if (envelope.startswith(header.suffix, FIXED_HEADER_LENGTH)
                and header.tag_start + HEADER_TAG_LENGTH <= size):
            return header
    return None


class RecordSorter:
    """Sorts record envelopes into :class:`RecordGroup` s, one header parse each.

    One sorter per batch (it is not locked). ``add`` returns False for anything it does not
    take; the caller parses that itself (see the module docstring).
    """

    __slots__ = ("_groups", "_last", "_max_suffixes", "_suffixes")

    def __init__(self, max_suffixes: int = MAX_SUFFIXES) -> None:
        self._max_suffixes = max_suffixes
        self._suffixes: list[RecordSuffix] = []
        self._groups: dict[RecordSuffix, tuple[list[bytes], list[object]]] = {}
        self._last: RecordSuffix | None = None

    def add(self, envelope: object, tag: object = None) -> bool:
        """Take ``envelope`` into its group (True), or leave it to the caller (False)."""
        if type(envelope) is not bytes or not _fixed_part_is_record(envelope):
            return False
        last = self._last
        if (last is not None and envelope.startswith(last.suffix, FIXED_HEADER_LENGTH)
                and last.tag_start + HEADER_TAG_LENGTH <= len(envelope)):
            header: RecordSuffix | None = last
        else:
            header = _match(envelope, self._suffixes)
            if header is None:
                if len(self._suffixes) >= self._max_suffixes:
                    return False
                header = _decode_suffix(envelope)
                if header is None:
                    return False
                self._suffixes.append(header)
                self._groups[header] = ([], [])
            self._last = header
        envelopes, tags = self._groups[header]
        envelopes.append(envelope)
        tags.append(tag)
        return True

    def groups(self) -> list[RecordGroup]:
        """The groups so far, in the order their first record came."""
        return [RecordGroup(header, tuple(envelopes), tuple(tags))
                for header, (envelopes, tags) in self._groups.items() if envelopes]


_peek_suffixes: tuple[RecordSuffix, ...] = ()


def peek_record(envelope: object) -> RecordSuffix | None:
    """The header suffix of a v1 record envelope, for routing; None if it is not one.

    Bounded: fixed offsets, then byte comparisons with suffixes decoded in full before (at
    most :data:`_PEEK_SUFFIXES`), else one strict decode. Nothing here is authenticated; a
    None means "parse it in full to learn why" (``envelope.read_header``).
    """
    global _peek_suffixes
    if type(envelope) is not bytes or not _fixed_part_is_record(envelope):
        return None
    known = _peek_suffixes
    header = _match(envelope, known)
    if header is None:
        header = _decode_suffix(envelope)
        if header is not None:
            _peek_suffixes = (header, *known[: _PEEK_SUFFIXES - 1])
    return header
