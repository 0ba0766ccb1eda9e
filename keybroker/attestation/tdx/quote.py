"""Parse Intel TDX DCAP quotes (versions 4 and 5) into frozen dataclasses.

What it does: reads the quote header, the TD report body (TD 1.0, 584 bytes; TD 1.5, 648
bytes, v5 only), and the ECDSA-P256 signature data with its QE report certification data
(type 6) wrapping the PCK certificate chain (type 5), checking every length against the
bytes that remain before slicing. Layouts follow Intel's "TDX DCAP Quoting Library API",
appendix A. What it does not: any cryptography, certificate parsing or policy; a parsed
quote is only well formed, not authentic (see `verify.py`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from keybroker.attestation.errors import EvidenceFormatError

__all__ = [
    "ATTESTATION_KEY_TYPE_ECDSA_P256",
    "BODY_TYPE_TD10",
    "BODY_TYPE_TD15",
    "CERT_DATA_PCK_CHAIN",
    "CERT_DATA_QE_REPORT",
    "INTEL_QE_VENDOR_ID",
    "MAX_QUOTE_SIZE",
    "QE_REPORT_SIZE",
    "QUOTE_HEADER_SIZE",
    "TD10_BODY_SIZE",
    "TD15_BODY_SIZE",
    "TEE_TYPE_TDX",
    "EnclaveReportBody",
    "QeCertificationData",
    "QuoteHeader",
    "TdReportBody",
    "TdxQuote",
    "parse_enclave_report",
    "parse_quote",
]

QUOTE_HEADER_SIZE = 48
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
QE_REPORT_SIZE = 384
ECDSA_SIGNATURE_SIZE = 64
ATTESTATION_KEY_SIZE = 64
BODY_DESCRIPTOR_SIZE = 6  # v5: body type (u16) + body size (u32)

MAX_QUOTE_SIZE = 64 * 1024  # real quotes are ~5 KiB
MAX_QE_AUTH_DATA_SIZE = 1024  # Intel's QE writes 32 bytes
MAX_PCK_CHAIN_SIZE = 16 * 1024  # three PEM certificates are ~3.7 KiB

SUPPORTED_VERSIONS = (4, 5)
ATTESTATION_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x00000081
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3
CERT_DATA_PCK_CHAIN = 5
CERT_DATA_QE_REPORT = 6
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

_BODY_SIZES = {BODY_TYPE_TD10: TD10_BODY_SIZE, BODY_TYPE_TD15: TD15_BODY_SIZE}
TD_ATTRIBUTES_DEBUG_BIT = 0x01  # TDATTRIBUTES.TUD.DEBUG, bit 0 of byte 0
SGX_ATTRIBUTES_DEBUG_BIT = 0x02  # SGX enclave ATTRIBUTES.DEBUG, bit 1 of byte 0


class _Reader:
    """Sequential reader that names the field it could not read."""

    def __init__(self, data: bytes, where: str) -> None:
        self._data = data
        self._offset = 0
        self._where = where

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset

    def take(self, size: int, field: str) -> bytes:
        if size > self.remaining:
            raise EvidenceFormatError(
                f"{self._where}: {field} needs {size} bytes but only {self.remaining} remain"
            )
        start = self._offset
        self._offset += size
        return bytes(self._data[start : self._offset])

    def u16(self, field: str) -> int:
        return struct.unpack("<H", self.take(2, field))[0]

    def u32(self, field: str) -> int:
        return struct.unpack("<I", self.take(4, field))[0]

    def expect_end(self) -> None:
        if self.remaining:
            raise EvidenceFormatError(
                f"{self._where}: {self.remaining} unexpected bytes after the last field"
            )


@dataclass(frozen=True)
class QuoteHeader:
    """The 48-byte quote header."""

    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int  # "reserved" in v4/v5 headers; Intel's QE writes its SVN here
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdReportBody:
    """The TD report body (TD 1.0 fields, plus TD 1.5's two when present)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn_2: bytes | None = None
    mr_service_td: bytes | None = None

    @property
    def debug(self) -> bool:
        """TDATTRIBUTES.DEBUG: the host can read and write the TD's state."""
        return bool(self.td_attributes[0] & TD_ATTRIBUTES_DEBUG_BIT)


@dataclass(frozen=True)
class EnclaveReportBody:
    """A 384-byte SGX enclave report body (here: the Quoting Enclave's report)."""

    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes

    @property
    def debug(self) -> bool:
        return bool(self.attributes[0] & SGX_ATTRIBUTES_DEBUG_BIT)


@dataclass(frozen=True)
class QeCertificationData:
    """Certification data type 6: the QE report, its PCK signature, auth data, PCK chain."""

    qe_report: bytes  # the raw 384 bytes the PCK key signed
    qe_report_body: EnclaveReportBody
    qe_report_signature: bytes  # r || s, 64 bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes


@dataclass(frozen=True)
class TdxQuote:
    """A parsed (not yet verified) TDX quote."""

    header: QuoteHeader
    body_type: int  # BODY_TYPE_TD10 or BODY_TYPE_TD15
    body: TdReportBody
    signed_bytes: bytes  # header (|| v5 body descriptor) || body: what the attestation key signed
    signature: bytes  # r || s, 64 bytes
    attestation_key: bytes  # x || y, 64 bytes
    certification: QeCertificationData
    trailing_length: int  # unsigned bytes after the signature data (padding)


def parse_quote(data: bytes) -> TdxQuote:
    """Parse a v4 or v5 TDX quote; raises EvidenceFormatError naming the bad field."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EvidenceFormatError("TDX quote must be bytes")
    data = bytes(data)
    if len(data) > MAX_QUOTE_SIZE:
        raise EvidenceFormatError(f"TDX quote of {len(data)} bytes exceeds {MAX_QUOTE_SIZE}")
    reader = _Reader(data, "TDX quote")
    header = _parse_header(reader)
    if header.version == 5:
        body_type = reader.u16("body type")
        body_size = reader.u32("body size")
        expected = _BODY_SIZES.get(body_type)
        if expected is None:
            raise EvidenceFormatError(
                f"TDX quote: body type {body_type} is not a TD report (2 = TD 1.0, 3 = TD 1.5)"
            )
        if body_size != expected:
            raise EvidenceFormatError(
                f"TDX quote: body size {body_size} does not match body type {body_type} "
                f"({expected} bytes)"
            )
    else:
        body_type, body_size = BODY_TYPE_TD10, TD10_BODY_SIZE
    body = _parse_td_body(reader.take(body_size, "TD report body"), body_type)
    signed_bytes = data[: reader.offset]
    signature_size = reader.u32("signature data length")
    signature_data = reader.take(signature_size, "signature data")
    signature, attestation_key, certification = _parse_signature_data(signature_data)
    return TdxQuote(
        header=header,
        body_type=body_type,
        body=body,
        signed_bytes=signed_bytes,
        signature=signature,
        attestation_key=attestation_key,
        certification=certification,
        trailing_length=reader.remaining,
    )


def _parse_header(reader: _Reader) -> QuoteHeader:
    version = reader.u16("header version")
    if version not in SUPPORTED_VERSIONS:
        raise EvidenceFormatError(f"TDX quote: version {version} is not supported (4 or 5)")
    key_type = reader.u16("header attestation key type")
    if key_type != ATTESTATION_KEY_TYPE_ECDSA_P256:
        raise EvidenceFormatError(
            f"TDX quote: attestation key type {key_type} is not supported (2 = ECDSA P-256)"
        )
    tee_type = reader.u32("header tee type")
    if tee_type != TEE_TYPE_TDX:
        raise EvidenceFormatError(f"TDX quote: tee type 0x{tee_type:x} is not TDX (0x81)")
    return QuoteHeader(
        version=version,
        attestation_key_type=key_type,
        tee_type=tee_type,
        qe_svn=reader.u16("header qe svn"),
        pce_svn=reader.u16("header pce svn"),
        qe_vendor_id=reader.take(16, "header qe vendor id"),
        user_data=reader.take(20, "header user data"),
    )


def _parse_td_body(raw: bytes, body_type: int) -> TdReportBody:
    reader = _Reader(raw, "TD report body")
    fields = {
        "tee_tcb_svn": reader.take(16, "TEE_TCB_SVN"),
        "mr_seam": reader.take(48, "MRSEAM"),
        "mr_signer_seam": reader.take(48, "MRSIGNERSEAM"),
        "seam_attributes": reader.take(8, "SEAMATTRIBUTES"),
        "td_attributes": reader.take(8, "TDATTRIBUTES"),
        "xfam": reader.take(8, "XFAM"),
        "mr_td": reader.take(48, "MRTD"),
        "mr_config_id": reader.take(48, "MRCONFIGID"),
        "mr_owner": reader.take(48, "MROWNER"),
        "mr_owner_config": reader.take(48, "MROWNERCONFIG"),
    }
    rtmrs = tuple(reader.take(48, f"RTMR{index}") for index in range(4))
    report_data = reader.take(64, "REPORTDATA")
    extra: dict[str, bytes] = {}
    if body_type == BODY_TYPE_TD15:
        extra["tee_tcb_svn_2"] = reader.take(16, "TEE_TCB_SVN_2")
        extra["mr_service_td"] = reader.take(48, "MRSERVICETD")
    reader.expect_end()
    return TdReportBody(**fields, rtmrs=rtmrs, report_data=report_data, **extra)  # type: ignore[arg-type]


def parse_enclave_report(raw: bytes) -> EnclaveReportBody:
    """Parse a 384-byte SGX report body (the QE report)."""
    if len(raw) != QE_REPORT_SIZE:
        raise EvidenceFormatError(f"QE report: expected {QE_REPORT_SIZE} bytes, got {len(raw)}")
    reader = _Reader(raw, "QE report")
    cpu_svn = reader.take(16, "CPUSVN")
    misc_select = reader.u32("MISCSELECT")
    reader.take(28, "reserved1")
    attributes = reader.take(16, "ATTRIBUTES")
    mr_enclave = reader.take(32, "MRENCLAVE")
    reader.take(32, "reserved2")
    mr_signer = reader.take(32, "MRSIGNER")
    reader.take(96, "reserved3")
    isv_prod_id = reader.u16("ISVPRODID")
    isv_svn = reader.u16("ISVSVN")
    reader.take(60, "reserved4")
    report_data = reader.take(64, "REPORTDATA")
    reader.expect_end()
    return EnclaveReportBody(
        cpu_svn=cpu_svn,
        misc_select=misc_select,
        attributes=attributes,
        mr_enclave=mr_enclave,
        mr_signer=mr_signer,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        report_data=report_data,
    )


def _parse_signature_data(raw: bytes) -> tuple[bytes, bytes, QeCertificationData]:
    reader = _Reader(raw, "quote signature data")
    signature = reader.take(ECDSA_SIGNATURE_SIZE, "ECDSA signature")
    attestation_key = reader.take(ATTESTATION_KEY_SIZE, "ECDSA attestation key")
    cert_type = reader.u16("certification data type")
    if cert_type != CERT_DATA_QE_REPORT:
        raise EvidenceFormatError(
            f"quote signature data: certification data type {cert_type} is not supported "
            "(6 = QE report certification data)"
        )
    cert_size = reader.u32("certification data size")
    certification = _parse_qe_certification(reader.take(cert_size, "certification data"))
    reader.expect_end()
    return signature, attestation_key, certification


def _parse_qe_certification(raw: bytes) -> QeCertificationData:
    reader = _Reader(raw, "QE report certification data")
    qe_report = reader.take(QE_REPORT_SIZE, "QE report")
    qe_report_signature = reader.take(ECDSA_SIGNATURE_SIZE, "QE report signature")
    auth_size = reader.u16("QE authentication data size")
    if auth_size > MAX_QE_AUTH_DATA_SIZE:
        raise EvidenceFormatError(
            f"QE report certification data: QE authentication data size {auth_size} "
            f"exceeds {MAX_QE_AUTH_DATA_SIZE}"
        )
    qe_auth_data = reader.take(auth_size, "QE authentication data")
    inner_type = reader.u16("inner certification data type")
    if inner_type != CERT_DATA_PCK_CHAIN:
        raise EvidenceFormatError(
            f"QE report certification data: inner certification data type {inner_type} "
            "is not supported (5 = PCK certificate chain)"
        )
    chain_size = reader.u32("PCK certificate chain size")
    if chain_size > MAX_PCK_CHAIN_SIZE:
        raise EvidenceFormatError(
            f"QE report certification data: PCK certificate chain size {chain_size} "
            f"exceeds {MAX_PCK_CHAIN_SIZE}"
        )
    pck_chain_pem = reader.take(chain_size, "PCK certificate chain")
    reader.expect_end()
    return QeCertificationData(
        qe_report=qe_report,
        qe_report_body=parse_enclave_report(qe_report),
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=pck_chain_pem,
    )
