"""The SEV-SNP report parser: field offsets, strict structure checks, and fuzzing."""

from __future__ import annotations

import contextlib
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.attestation import EvidenceFormatError
from keybroker.attestation.snp import layout
from keybroker.attestation.snp.report import (
    SnpReport,
    decode_signature,
    encode_report,
    encode_signature,
    parse_report,
)


def _sample(version: int = 2) -> SnpReport:
    return SnpReport(
        version=version,
        guest_svn=7,
        policy=0x3001F,
        family_id=bytes(range(16)),
        image_id=bytes(range(16, 32)),
        vmpl=1,
        current_tcb=0x0102030405060708,
        platform_info=0x3,
        signer_info=0b00011,
        report_data=bytes(range(64)),
        measurement=bytes(range(100, 148)),
        host_data=b"\xaa" * 32,
        id_key_digest=b"\x01" * 48,
        author_key_digest=b"\x02" * 48,
        report_id=b"\x03" * 32,
        report_id_ma=b"\xff" * 32,
        reported_tcb=0x7308000000000003,
        cpuid_fam_id=0x19 if version >= 3 else None,
        cpuid_mod_id=0x11 if version >= 3 else None,
        cpuid_step=0x01 if version >= 3 else None,
        chip_id=b"\xcc" * 64,
        committed_tcb=0x11,
        current_build=21, current_minor=55, current_major=1,
        committed_build=20, committed_minor=54, committed_major=1,
        launch_tcb=0x22,
        launch_mit_vector=0x5 if version >= 5 else None,
        current_mit_vector=0x7 if version >= 5 else None,
        signature=encode_signature(12345, 67890),
    )


def test_real_report_fields_are_at_their_offsets(shared_vectors: Path) -> None:
    data = (shared_vectors / "sev-snp" / "milan-trustee" / "report.bin").read_bytes()
    report = parse_report(data)
    assert report.version == 2
    assert report.policy == 0x3001F
    assert report.signature_algo == 1
    assert report.vmpl == 0
    assert report.report_data == data[0x50:0x90]
    assert report.measurement == data[0x90:0xC0]
    assert report.chip_id == data[0x1A0:0x1E0]
    assert report.reported_tcb == struct.unpack_from("<Q", data, 0x180)[0]
    assert report.signed_bytes == data[:0x2A0]
    assert report.cpuid_fam_id is None and report.launch_mit_vector is None


@pytest.mark.parametrize("version", [2, 3, 4, 5])
def test_encode_then_parse_round_trips(version: int) -> None:
    report = _sample(version)
    data = encode_report(report)
    assert len(data) == layout.REPORT_SIZE
    parsed = parse_report(data)
    assert parsed == report
    assert parsed.raw == data
    assert data[0x50:0x90] == bytes(range(64))
    assert data[0x90:0xC0] == bytes(range(100, 148))
    assert data[0x1A0:0x1E0] == b"\xcc" * 64
    if version >= 3:
        assert data[0x188:0x18B] == bytes([0x19, 0x11, 0x01])
    if version >= 5:
        assert struct.unpack_from("<QQ", data, 0x1F8) == (5, 7)


def test_decoded_flags() -> None:
    report = parse_report(encode_report(_sample()))
    assert report.smt_allowed and not report.debug and not report.migrate_ma_allowed
    assert report.author_key_en and report.mask_chip_key
    assert report.signing_key_name == "vcek"
    assert report.platform_flags["smt_enabled"] and report.platform_flags["tsme_enabled"]
    assert decode_signature(report.signature) == (12345, 67890)
    debug = parse_report(encode_report(replace(_sample(), policy=0x3001F | 1 << 19)))
    assert debug.debug


@pytest.mark.parametrize("length", [0, 1, 0x4A0 - 1, 0x4A0 + 1, 4096])
def test_wrong_length_is_rejected(length: int) -> None:
    data = (encode_report(_sample()) * 4)[:length]
    with pytest.raises(EvidenceFormatError, match="length"):
        parse_report(data)


@pytest.mark.parametrize("version", [0, 1, 6, 0xFFFFFFFF])
def test_unsupported_version_is_rejected(version: int) -> None:
    data = bytearray(encode_report(_sample()))
    struct.pack_into("<I", data, 0, version)
    with pytest.raises(EvidenceFormatError, match="version"):
        parse_report(bytes(data))


@pytest.mark.parametrize(("version", "offset"), [
    (2, 0x4C), (2, 0x188), (2, 0x18A), (2, 0x19F), (3, 0x18B), (3, 0x19F), (2, 0x1EB),
    (2, 0x1EF), (2, 0x1F8), (4, 0x207), (5, 0x208), (5, 0x29F), (2, 0x2A0 + 144), (2, 0x49F),
])
def test_reserved_bytes_must_be_zero(version: int, offset: int) -> None:
    data = bytearray(encode_report(_sample(version)))
    data[offset] = 0x01
    with pytest.raises(EvidenceFormatError, match="reserved bytes"):
        parse_report(bytes(data))


def test_policy_reserved_bits() -> None:
    with pytest.raises(EvidenceFormatError, match="bit 17"):
        parse_report(encode_report(replace(_sample(), policy=0x1F)))
    with pytest.raises(EvidenceFormatError, match="reserved bits"):
        parse_report(encode_report(replace(_sample(), policy=0x3001F | 1 << 26)))


@pytest.mark.parametrize("signer_info", [2 << 2, 6 << 2, 1 << 5, 1 << 31])
def test_signer_info_reserved_values(signer_info: int) -> None:
    with pytest.raises(EvidenceFormatError, match=r"signer_info|signing_key"):
        parse_report(encode_report(replace(_sample(), signer_info=signer_info)))


def test_signature_encoding_is_little_endian_and_bounded() -> None:
    signature = encode_signature(1, 2)
    assert signature[0] == 1 and signature[72] == 2 and len(signature) == 512
    with pytest.raises(ValueError):
        encode_signature(1 << 384, 1)
    with pytest.raises(EvidenceFormatError):
        decode_signature(b"\x00" * 10)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=2 * layout.REPORT_SIZE))
def test_random_bytes_only_raise_format_errors(data: bytes) -> None:
    with contextlib.suppress(EvidenceFormatError):
        parse_report(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 5), st.lists(st.tuples(st.integers(0, layout.REPORT_SIZE - 1),
                                              st.integers(0, 255)), max_size=8))
def test_mutated_reports_parse_or_raise_format_errors(version: int,
                                                       edits: list[tuple[int, int]]) -> None:
    data = bytearray(encode_report(_sample(version)))
    for offset, value in edits:
        data[offset] = value
    try:
        report = parse_report(bytes(data))
    except EvidenceFormatError:
        return
    assert report.raw == bytes(data)
