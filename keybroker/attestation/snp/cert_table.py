"""The SEV-SNP extended-report certificate table (GHCB spec 56421 "cert_table").

What it does: parses and writes the GUID table that SNP_GET_EXT_REPORT and the
configfs-tsm ``auxblob`` return: 24-byte entries (GUID, offset, length), ended by an
all-zero entry, offsets relative to the table start, followed by the certificates
(VCEK, VLEK, ASK/ASVK, ARK, ...). Unknown GUIDs are kept by their string form. What it
does not: parse or trust the certificates themselves.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping

from keybroker.attestation.errors import EvidenceFormatError
from keybroker.attestation.snp.certificates import MAX_CERTIFICATE_SIZE

__all__ = ["GUID_BY_NAME", "MAX_CERT_TABLE_SIZE", "encode_cert_table", "parse_cert_table"]

ENTRY_SIZE = 24
MAX_ENTRIES = 16
MAX_CERT_TABLE_SIZE = 64 * 1024

GUID_BY_NAME = {
    "vcek": uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"),
    "vlek": uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"),
    "ask": uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"),  # also the ASVK
    "ark": uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"),
}
_NAME_BY_GUID = {guid: name for name, guid in GUID_BY_NAME.items()}


def parse_cert_table(table: bytes) -> dict[str, bytes]:
    """{"vcek"|"vlek"|"ask"|"ark"|<guid string>: certificate bytes}; empty input -> {}."""
    if len(table) > MAX_CERT_TABLE_SIZE:
        raise EvidenceFormatError(
            f"certificate table is {len(table)} bytes, over the {MAX_CERT_TABLE_SIZE}-byte limit")
    if not table:
        return {}
    entries: list[tuple[uuid.UUID, int, int]] = []
    position = 0
    while True:
        if position + ENTRY_SIZE > len(table):
            raise EvidenceFormatError("certificate table ends before its all-zero terminator entry")
        guid_bytes = table[position : position + 16]
        offset, length = struct.unpack_from("<II", table, position + 16)
        position += ENTRY_SIZE
        if offset == 0 and length == 0 and not any(guid_bytes):
            break
        if len(entries) == MAX_ENTRIES:
            raise EvidenceFormatError(f"certificate table has more than {MAX_ENTRIES} entries")
        entries.append((uuid.UUID(bytes=bytes(guid_bytes)), offset, length))
    header_size = position
    result: dict[str, bytes] = {}
    for index, (guid, offset, length) in enumerate(entries):
        if offset < header_size:
            raise EvidenceFormatError(
                f"certificate table entry {index} offset {offset} points into the table header")
        if length > MAX_CERTIFICATE_SIZE:
            raise EvidenceFormatError(
                f"certificate table entry {index} length {length} is over the certificate limit")
        if offset + length > len(table):
            raise EvidenceFormatError(
                f"certificate table entry {index} runs past the end of the table")
        name = _NAME_BY_GUID.get(guid, str(guid))
        if name in result:
            raise EvidenceFormatError(f"certificate table lists {name} twice")
        result[name] = bytes(table[offset : offset + length])
    return result


def encode_cert_table(certificates: Mapping[str, bytes]) -> bytes:
    """The GUID table for ``{"vcek": der, "ask": der, "ark": der, ...}`` (names or GUIDs)."""
    items = [(GUID_BY_NAME[name] if name in GUID_BY_NAME else uuid.UUID(name), blob)
             for name, blob in certificates.items()]
    if not items:
        return b""
    cursor = (len(items) + 1) * ENTRY_SIZE
    header, body = bytearray(), bytearray()
    for guid, blob in items:
        header += guid.bytes + struct.pack("<II", cursor, len(blob))
        body += blob
        cursor += len(blob)
    header += bytes(ENTRY_SIZE)
    return bytes(header + body)
