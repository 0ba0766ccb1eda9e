"""The extended-report certificate table (GUID table)."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.attestation import EvidenceFormatError
from keybroker.attestation.snp.cert_table import (
    GUID_BY_NAME,
    encode_cert_table,
    parse_cert_table,
)


def test_round_trip_and_guid_layout() -> None:
    certificates = {"vcek": b"V" * 100, "ask": b"A" * 50, "ark": b"R" * 70,
                    "ecae0c0f-9502-43b1-afa2-0ae2e0d565b6": b"\x08\x00\x00\x00\x10\x0f\xa0\x00"}
    table = encode_cert_table(certificates)
    assert table[:16] == GUID_BY_NAME["vcek"].bytes
    assert struct.unpack_from("<II", table, 16) == (5 * 24, 100)
    assert table[4 * 24 : 5 * 24] == bytes(24)
    assert parse_cert_table(table) == certificates
    assert parse_cert_table(b"") == {}
    assert parse_cert_table(bytes(24)) == {}
    assert parse_cert_table(table + bytes(4096)) == certificates  # unused buffer tail


@pytest.mark.parametrize(("offset", "length", "message"), [
    (10, 4, "header"), (48, 4096, "past the end"), (48, 1 << 20, "over the certificate limit"),
])
def test_bad_entries(offset: int, length: int, message: str) -> None:
    table = GUID_BY_NAME["vcek"].bytes + struct.pack("<II", offset, length) + bytes(24) + b"x" * 8
    with pytest.raises(EvidenceFormatError, match=message):
        parse_cert_table(table)


def test_missing_terminator_duplicates_and_size() -> None:
    entry = GUID_BY_NAME["ark"].bytes + struct.pack("<II", 72, 1)
    with pytest.raises(EvidenceFormatError, match="terminator"):
        parse_cert_table(entry)
    with pytest.raises(EvidenceFormatError, match="twice"):
        parse_cert_table(entry + entry + bytes(24) + b"x")
    with pytest.raises(EvidenceFormatError, match="limit"):
        parse_cert_table(bytes(64 * 1024 + 1))
    many = b"".join(GUID_BY_NAME["ark"].bytes + struct.pack("<II", 0, 0) for _ in range(17))
    with pytest.raises(EvidenceFormatError, match="more than"):
        parse_cert_table(many + bytes(24))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_tables_only_raise_format_errors(data: bytes) -> None:
    with contextlib.suppress(EvidenceFormatError):
        parse_cert_table(data)
