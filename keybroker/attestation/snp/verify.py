"""The checks that tie an SEV-SNP report to its endorsement key certificate.

What it does: one function per check — the report is signed (algorithm 1, not "no
signature", R and S in range), the ECDSA P-384 SHA-384 signature over bytes [0, 0x2A0)
verifies under the VCEK/VLEK, the product agrees across chain, certificate and CPUID,
the certificate's TCB equals REPORTED_TCB, its hwID equals CHIP_ID, and report_data
equals what the relying party expects (constant time). What it does not: build the
chain (see `chain`) or judge whether a TCB or measurement is good enough (policy).
"""

from __future__ import annotations

import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keybroker.attestation.errors import EvidenceVerificationError, ReportDataMismatchError
from keybroker.attestation.snp import layout
from keybroker.attestation.snp.amd_extensions import EndorsementExtensions
from keybroker.attestation.snp.product import hwid_size, product_from_cpuid
from keybroker.attestation.snp.report import SnpReport, decode_signature
from keybroker.attestation.snp.tcb import decode_tcb

__all__ = [
    "check_hwid_matches_chip_id",
    "check_product_agrees",
    "check_report_data",
    "check_report_is_signed",
    "check_tcb_matches_certificate",
    "verify_report_signature",
]

P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    16,
)


def check_report_is_signed(report: SnpReport) -> tuple[int, int]:
    """The report claims an ECDSA P-384 signature by a VCEK/VLEK; returns (R, S)."""
    if report.signature_algo != layout.SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise EvidenceVerificationError(
            f"report signature_algo {report.signature_algo} is not 1 (ECDSA P-384 with SHA-384)")
    if report.signing_key == layout.SIGNING_KEY_NONE:
        raise EvidenceVerificationError("report signer_info says the report is not signed")
    r, s = decode_signature(report.signature)
    if not (0 < r < P384_ORDER and 0 < s < P384_ORDER):
        raise EvidenceVerificationError("report signature R or S is zero or out of range")
    return r, s


def verify_report_signature(report: SnpReport, key: ec.EllipticCurvePublicKey, role: str) -> None:
    """ECDSA P-384 SHA-384 over the original bytes [0, 0x2A0) under the VCEK/VLEK key."""
    r, s = check_report_is_signed(report)
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EvidenceVerificationError(
            f"report signature does not verify under the {role} public key") from None


def check_product_agrees(report: SnpReport, chain_product: str,
                         extensions: EndorsementExtensions, role: str) -> None:
    """Chain root, certificate productName and (v3+) CPUID all name one product."""
    if extensions.product != chain_product:
        raise EvidenceVerificationError(
            f"{role} productName {extensions.product_name!r} does not match the "
            f"{chain_product} chain")
    if report.cpuid_fam_id is None or report.cpuid_mod_id is None:
        return
    cpuid_product = product_from_cpuid(report.cpuid_fam_id, report.cpuid_mod_id)
    if cpuid_product is None:
        raise EvidenceVerificationError(
            f"report CPUID family 0x{report.cpuid_fam_id:02X} model 0x{report.cpuid_mod_id:02X}"
            " is not a known SEV-SNP product")
    if cpuid_product != chain_product:
        raise EvidenceVerificationError(
            f"report CPUID says {cpuid_product} but the endorsement chain is {chain_product}")


def check_tcb_matches_certificate(report: SnpReport, extensions: EndorsementExtensions,
                                  product: str, role: str) -> dict[str, int]:
    """The certificate was issued for exactly the report's REPORTED_TCB; returns it decoded."""
    reported = decode_tcb(report.reported_tcb, product)
    mismatches = [f"{name} report={reported[name]} {role}={extensions.tcb.get(name)}"
                  for name in reported if extensions.tcb.get(name) != reported[name]]
    if mismatches:
        raise EvidenceVerificationError(
            f"{role} TCB extensions do not match the report's reported_tcb: "
            + ", ".join(mismatches))
    return reported


def check_hwid_matches_chip_id(report: SnpReport, extensions: EndorsementExtensions,
                               product: str) -> None:
    """A VCEK is per chip: its hwID must equal CHIP_ID (unless the host masked CHIP_ID)."""
    if extensions.hwid is None:
        raise EvidenceVerificationError("vcek certificate has no hwID")
    if report.mask_chip_key:
        if any(report.chip_id):
            raise EvidenceVerificationError("report masks the chip key but CHIP_ID is not zero")
        return
    size = hwid_size(product)
    if not hmac.compare_digest(extensions.hwid, report.chip_id[:size]):
        raise EvidenceVerificationError("vcek hwID does not match the report's CHIP_ID")


def check_report_data(report: SnpReport, expected_report_data: bytes) -> None:
    """report_data equals the expected 64 bytes, compared in constant time."""
    if len(expected_report_data) != len(report.report_data):
        raise ReportDataMismatchError(
            f"expected report_data is {len(expected_report_data)} bytes, the report carries 64")
    if not hmac.compare_digest(report.report_data, expected_report_data):
        raise ReportDataMismatchError("report_data does not match the expected value")
