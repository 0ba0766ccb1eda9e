"""A small, bounded DER reader for the Intel SGX extension inside PCK certificates.

What it does: walks definite-length DER TLVs (SEQUENCE, OID, INTEGER, OCTET STRING,
BOOLEAN, ENUMERATED) with every length checked against the bytes that remain before
anything is sliced. What it does not: parse general X.509 (``cryptography`` does that) or
accept BER (indefinite lengths, long-form tags, non-minimal lengths are rejected).
"""

from __future__ import annotations

from dataclasses import dataclass

from keybroker.attestation.errors import EvidenceFormatError

__all__ = [
    "TAG_BOOLEAN",
    "TAG_ENUMERATED",
    "TAG_INTEGER",
    "TAG_OCTET_STRING",
    "TAG_OID",
    "TAG_SEQUENCE",
    "DerElement",
    "read_elements",
    "read_single",
]

TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_SEQUENCE = 0x30

MAX_DER_INPUT = 8192  # the whole SGX extension is ~600 bytes; refuse anything far larger
_MAX_LENGTH_OCTETS = 2
_MAX_INTEGER_OCTETS = 8


@dataclass(frozen=True)
class DerElement:
    """One TLV: its tag and its content bytes."""

    tag: int
    content: bytes

    def expect(self, tag: int, what: str) -> DerElement:
        if self.tag != tag:
            raise EvidenceFormatError(f"{what}: expected DER tag 0x{tag:02x}, got 0x{self.tag:02x}")
        return self

    def children(self, what: str) -> list[DerElement]:
        self.expect(TAG_SEQUENCE, what)
        return read_elements(self.content, what)

    def as_oid(self, what: str) -> str:
        return _decode_oid(self.expect(TAG_OID, what).content, what)

    def as_unsigned(self, what: str, *, tag: int = TAG_INTEGER) -> int:
        return _decode_unsigned(self.expect(tag, what).content, what)

    def as_octets(self, what: str, *, size: int | None = None) -> bytes:
        content = self.expect(TAG_OCTET_STRING, what).content
        if size is not None and len(content) != size:
            raise EvidenceFormatError(f"{what}: expected {size} bytes, got {len(content)}")
        return content

    def as_bool(self, what: str) -> bool:
        content = self.expect(TAG_BOOLEAN, what).content
        if len(content) != 1 or content[0] not in (0x00, 0xFF):
            raise EvidenceFormatError(f"{what}: malformed DER BOOLEAN")
        return content[0] == 0xFF


def _read_one(data: bytes, offset: int, what: str) -> tuple[DerElement, int]:
    """Read the TLV at ``offset``; returns it and the offset just after it."""
    remaining = len(data) - offset
    if remaining < 2:
        raise EvidenceFormatError(f"{what}: truncated DER element")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise EvidenceFormatError(f"{what}: multi-byte DER tags are not supported")
    first = data[offset + 1]
    header = 2
    if first < 0x80:
        length = first
    else:
        octets = first & 0x7F
        if octets == 0 or octets > _MAX_LENGTH_OCTETS:
            raise EvidenceFormatError(f"{what}: unsupported DER length form")
        if remaining < 2 + octets:
            raise EvidenceFormatError(f"{what}: truncated DER length")
        length = int.from_bytes(data[offset + 2 : offset + 2 + octets], "big")
        if length < 0x80 or (octets == 2 and length < 0x100):
            raise EvidenceFormatError(f"{what}: non-minimal DER length")
        header += octets
    if length > remaining - header:
        raise EvidenceFormatError(
            f"{what}: DER length {length} exceeds the {remaining - header} bytes left"
        )
    start = offset + header
    return DerElement(tag, bytes(data[start : start + length])), start + length


def read_elements(data: bytes, what: str) -> list[DerElement]:
    """Every TLV in ``data`` back to back (the content of a SEQUENCE)."""
    if len(data) > MAX_DER_INPUT:
        raise EvidenceFormatError(f"{what}: {len(data)} bytes of DER exceeds {MAX_DER_INPUT}")
    elements: list[DerElement] = []
    offset = 0
    while offset < len(data):
        element, offset = _read_one(data, offset, what)
        elements.append(element)
    return elements


def read_single(data: bytes, what: str) -> DerElement:
    """Exactly one TLV that spans all of ``data``."""
    elements = read_elements(data, what)
    if len(elements) != 1:
        raise EvidenceFormatError(f"{what}: expected one DER element, found {len(elements)}")
    return elements[0]


def _decode_unsigned(content: bytes, what: str) -> int:
    if not content or len(content) > _MAX_INTEGER_OCTETS + 1:
        raise EvidenceFormatError(f"{what}: DER INTEGER has a bad length {len(content)}")
    if content[0] & 0x80:
        raise EvidenceFormatError(f"{what}: negative DER INTEGER")
    if len(content) > 1 and content[0] == 0 and not content[1] & 0x80:
        raise EvidenceFormatError(f"{what}: non-minimal DER INTEGER")
    return int.from_bytes(content, "big")


def _decode_oid(content: bytes, what: str) -> str:
    if not content or content[-1] & 0x80:
        raise EvidenceFormatError(f"{what}: malformed DER OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    for index, byte in enumerate(content):
        if value == 0 and byte == 0x80 and (index == 0 or not content[index - 1] & 0x80):
            raise EvidenceFormatError(f"{what}: non-minimal OID arc")
        value = (value << 7) | (byte & 0x7F)
        if value.bit_length() > 64:
            raise EvidenceFormatError(f"{what}: OID arc too large")
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(arc) for arc in head + arcs[1:])
