"""`SnpVerifier`: the SEV-SNP implementation of the `Verifier` protocol.

What it does: reads top to bottom — bound the input, parse the report (and the
extended-report certificate table if one follows it), gather the endorsements (given,
from the table, or from AMD KDS when a client is configured), check the chain to a
pinned or allowed dev root at the clock's time, check the report's signature, product,
TCB and hwID against the VCEK/VLEK, then report_data, then (when configured) AMD's CRL for
the ASK/ASVK and VCEK/VLEK, and return `Claims`. What it does
not: apply release policy (debug, TCB minimums, measurements are the policy's call).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timezone

from cryptography import x509

from keybroker.attestation.claims import Claims
from keybroker.attestation.errors import (
    EndorsementUnavailableError,
    EvidenceFormatError,
    EvidenceVerificationError,
    ReportDataMismatchError,
)
from keybroker.attestation.snp import layout
from keybroker.attestation.snp.amd_extensions import read_endorsement_extensions
from keybroker.attestation.snp.cert_checks import check_endorsement_key
from keybroker.attestation.snp.cert_table import MAX_CERT_TABLE_SIZE, parse_cert_table
from keybroker.attestation.snp.certificates import load_der_certificate
from keybroker.attestation.snp.chain import verify_endorsement_chain
from keybroker.attestation.snp.claims import report_claims
from keybroker.attestation.snp.crl import AmdCrlChecker
from keybroker.attestation.snp.kds import AmdKdsClient
from keybroker.attestation.snp.product import product_from_cpuid
from keybroker.attestation.snp.report import SnpReport, parse_report
from keybroker.attestation.snp.tcb import decode_tcb
from keybroker.attestation.snp.trust import SnpTrustStore
from keybroker.attestation.snp.verify import (
    check_hwid_matches_chip_id,
    check_product_agrees,
    check_report_data,
    check_report_is_signed,
    check_tcb_matches_certificate,
    verify_report_signature,
)

__all__ = ["ENDORSEMENT_NAMES", "MAX_EVIDENCE_SIZE", "SnpVerifier"]

MAX_EVIDENCE_SIZE = layout.REPORT_SIZE + MAX_CERT_TABLE_SIZE
ENDORSEMENT_NAMES = frozenset({"vcek", "vlek", "ask", "asvk", "ark"})


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class SnpVerifier:
    """Verifies SEV-SNP reports against a trust store; one instance serves many requests."""

    tee = "sev-snp"

    def __init__(self, trust: SnpTrustStore, *, clock: Callable[[], datetime] = _utc_now,
                 kds: AmdKdsClient | None = None,
                 revocation: AmdCrlChecker | None = None) -> None:
        """``revocation`` checks AMD's CRLs (crl.py) once the evidence is otherwise authentic."""
        self._trust = trust
        self._clock = clock
        self._kds = kds
        self._revocation = revocation

    def evaluate(self, evidence: bytes, expected_report_data: bytes, *,
                 endorsements: Mapping[str, bytes]) -> Claims:
        """Claims for authentic evidence bound to ``expected_report_data``, else raise."""
        if not isinstance(expected_report_data, bytes) or len(expected_report_data) != 64:
            raise ReportDataMismatchError("expected report_data must be exactly 64 bytes")
        report, table = self._split_evidence(evidence)
        check_report_is_signed(report)
        role = report.signing_key_name
        offered = self._gather_endorsements(report, role, table, endorsements)
        leaf = load_der_certificate(offered[role], role)
        key = check_endorsement_key(leaf, role)
        intermediate_name = "ask" if role == "vcek" else "asvk"
        intermediate = offered.get(intermediate_name) or offered.get("ask")
        root = offered.get("ark")
        chain = verify_endorsement_chain(
            leaf, role, self._trust,
            offered_intermediate=load_der_certificate(intermediate, intermediate_name)
            if intermediate else None,
            offered_root=load_der_certificate(root, "ark") if root else None,
            at=self._now(),
        )
        verify_report_signature(report, key, role)
        extensions = read_endorsement_extensions(leaf, role)
        check_product_agrees(report, chain.product, extensions, role)
        reported_tcb = check_tcb_matches_certificate(report, extensions, chain.product, role)
        if role == "vcek":
            check_hwid_matches_chip_id(report, extensions, chain.product)
        check_report_data(report, expected_report_data)
        if self._revocation is not None:  # only authentic evidence makes the broker fetch
            self._revocation.check(chain, role, self._now())
        return report_claims(report, product=chain.product, signing_key=role,
                             simulated=chain.simulated, reported_tcb=reported_tcb)

    # --- steps ----------------------------------------------------------------------
    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the verifier clock must return timezone-aware datetimes")
        return now

    @staticmethod
    def _split_evidence(evidence: bytes) -> tuple[SnpReport, dict[str, bytes]]:
        if not isinstance(evidence, bytes | bytearray):
            raise EvidenceFormatError("SEV-SNP evidence must be bytes")
        if len(evidence) > MAX_EVIDENCE_SIZE:
            raise EvidenceFormatError(
                f"SEV-SNP evidence is {len(evidence)} bytes, over the {MAX_EVIDENCE_SIZE} limit")
        if len(evidence) < layout.REPORT_SIZE:
            raise EvidenceFormatError(
                f"SEV-SNP evidence is {len(evidence)} bytes, shorter than a "
                f"{layout.REPORT_SIZE}-byte report")
        report = parse_report(bytes(evidence[: layout.REPORT_SIZE]))
        table = parse_cert_table(bytes(evidence[layout.REPORT_SIZE :]))
        return report, table

    def _gather_endorsements(self, report: SnpReport, role: str, table: Mapping[str, bytes],
                             endorsements: Mapping[str, bytes]) -> dict[str, bytes]:
        unknown = set(endorsements) - ENDORSEMENT_NAMES
        if unknown:
            raise EvidenceFormatError(
                f"unknown SEV-SNP endorsements {sorted(unknown)}; "
                f"expected {sorted(ENDORSEMENT_NAMES)}")
        offered: dict[str, bytes] = {}
        for name, blob in endorsements.items():
            if not isinstance(blob, bytes | bytearray):
                raise EvidenceFormatError(f"endorsement {name!r} must be bytes")
            offered[name] = bytes(blob)
        for name, blob in table.items():
            if name not in ENDORSEMENT_NAMES:
                continue  # e.g. the extra-platform-info GUID
            if name in offered and offered[name] != blob:
                raise EvidenceVerificationError(
                    f"endorsement {name!r} differs from the certificate table's")
            offered[name] = blob
        if role not in offered:
            offered.update(self._fetch_from_kds(report, role))
        return offered

    def _fetch_from_kds(self, report: SnpReport, role: str) -> dict[str, bytes]:
        if role != "vcek" or self._kds is None:
            raise EndorsementUnavailableError(
                f"SEV-SNP evidence has no {role} certificate (endorsements[{role!r}])"
                + ("" if role == "vlek" else " and no AMD KDS client is configured"))
        if report.cpuid_fam_id is None or report.cpuid_mod_id is None:
            raise EndorsementUnavailableError(
                f"report version {report.version} has no CPUID to pick the KDS product; "
                "pass endorsements['vcek']")
        product = product_from_cpuid(report.cpuid_fam_id, report.cpuid_mod_id)
        if product is None:
            raise EvidenceVerificationError("report CPUID is not a known SEV-SNP product")
        if report.mask_chip_key:
            raise EndorsementUnavailableError("report masks CHIP_ID, so its VCEK cannot be fetched")
        vcek = self._kds.vcek(product, report.chip_id, decode_tcb(report.reported_tcb, product))
        fetched = {"vcek": vcek}
        leaf = load_der_certificate(vcek, "vcek")
        if not self._has_trusted_intermediate(leaf):
            fetched["ask"], fetched["ark"] = self._kds.cert_chain(product, "vcek")
        return fetched

    def _has_trusted_intermediate(self, leaf: x509.Certificate) -> bool:
        return any(cert.subject == leaf.issuer for cert in self._trust.intermediates())

