"""Parse the 1024-byte TDX TDREPORT that an Azure TDX CVM's HCL report embeds.

What it does: reads the fields of TDREPORT_STRUCT (REPORTMACSTRUCT, TEE_TCB_INFO, TDINFO;
Intel TDX Module ABI, "TDREPORT_STRUCT") that a TD quote body repeats — report type,
report_data, TD attributes, XFAM, MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG, RTMR0..3 — so
that the verifier can check the TD quote was made from this very report. What it does not:
check the report's MAC (only the TDX module on the same platform can); the TD quote's
signature is what makes these fields authentic.
"""

from __future__ import annotations

from dataclasses import dataclass

from keybroker.attestation.errors import EvidenceFormatError

__all__ = ["TDX_REPORT_TYPE", "TD_REPORT_SIZE", "TdReport", "parse_td_report"]

TD_REPORT_SIZE = 1024
TDX_REPORT_TYPE = 0x81  # REPORTTYPE.TYPE for TDX
_REPORT_DATA = slice(128, 192)
_TD_INFO = 512
_MEASUREMENT_SIZE = 48


@dataclass(frozen=True)
class TdReport:
    """The TDREPORT fields a TD quote body also carries."""

    report_subtype: int
    report_version: int
    report_data: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]


def _measurement(data: bytes, index: int) -> bytes:
    start = _TD_INFO + 16 + index * _MEASUREMENT_SIZE
    return data[start:start + _MEASUREMENT_SIZE]


def parse_td_report(data: bytes) -> TdReport:
    """Parse a TDREPORT_STRUCT; EvidenceFormatError for a wrong size or report type."""
    if len(data) != TD_REPORT_SIZE:
        raise EvidenceFormatError(f"TDREPORT is {len(data)} bytes, not {TD_REPORT_SIZE}")
    if data[0] != TDX_REPORT_TYPE:
        raise EvidenceFormatError(f"TDREPORT type {data[0]:#04x} is not TDX (0x81)")
    return TdReport(
        report_subtype=data[1],
        report_version=data[2],
        report_data=bytes(data[_REPORT_DATA]),
        td_attributes=bytes(data[_TD_INFO:_TD_INFO + 8]),
        xfam=bytes(data[_TD_INFO + 8:_TD_INFO + 16]),
        mr_td=_measurement(data, 0),
        mr_config_id=_measurement(data, 1),
        mr_owner=_measurement(data, 2),
        mr_owner_config=_measurement(data, 3),
        rtmrs=(_measurement(data, 4), _measurement(data, 5), _measurement(data, 6),
               _measurement(data, 7)),
    )
