"""Verify a TDX quote: signatures, PCK chain, CRLs, collateral, TCB status; `TdxVerifier`.

What it does: one function per check — Intel's QE vendor, the PCK chain to a trusted
root (with CRLs when collateral is given), the QE report signed by the PCK key, the QE
report binding SHA-256(attestation key || QE auth data), the quote signed by the
attestation key over header || body, the QE not in debug mode and being Intel's TD QE
(by identity when collateral is given, by the known MRSIGNER otherwise); then the TCB
status from verified collateral. `TdxVerifier` implements the `Verifier` protocol over
these and returns `Claims`. What it does not: judge measurements, debug or TCB status
beyond rejecting Revoked and unmatched TCBs (that is policy), or fetch collateral.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from keybroker.attestation.claims import Claims
from keybroker.attestation.errors import (
    EvidenceFormatError,
    EvidenceVerificationError,
    ReportDataMismatchError,
    TrustStoreError,
)
from keybroker.attestation.tdx.claims import build_claims
from keybroker.attestation.tdx.collateral import Collateral, parse_collateral, verify_collateral
from keybroker.attestation.tdx.pck import (
    PckExtensions,
    load_pem_chain,
    parse_pck_extensions,
    verify_chain,
)
from keybroker.attestation.tdx.quote import INTEL_QE_VENDOR_ID, TdxQuote, parse_quote
from keybroker.attestation.tdx.tcb import TcbEvaluation, TcbStatus, evaluate_tcb
from keybroker.attestation.tdx.trust import TdxTrustStore, TrustedRoot

__all__ = [
    "ENDORSEMENT_NAMES",
    "INTEL_TD_QE_MRSIGNER",
    "CollateralSource",
    "TdxVerifier",
    "VerifiedQuote",
    "check_qe_report_binding",
    "check_qe_report_signature",
    "check_quote_signature",
    "verify_quote",
]

# MRSIGNER and ISVPRODID of Intel's TD Quoting Enclave (PCS QE identity "TD_QE").
INTEL_TD_QE_MRSIGNER = bytes.fromhex(
    "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"
)
INTEL_TD_QE_ISVPRODID = 2
REPORT_DATA_SIZE = 64
ENDORSEMENT_NAMES = frozenset({"collateral"})  # the PCK chain travels inside the quote
PCK_CHAIN_LENGTH = 2  # PCK and Platform/Processor CA, below the root

CollateralSource = Callable[[bytes], "Collateral | None"]  # FMSPC -> collateral, or None


@dataclass(frozen=True)
class VerifiedQuote:
    """A quote whose signatures and chain verified, with what the checks learned."""

    quote: TdxQuote
    pck: PckExtensions
    root: TrustedRoot
    tcb: TcbEvaluation | None


def _raw_signature_to_der(signature: bytes) -> bytes:
    return utils.encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )


def _p256_key(certificate: x509.Certificate, what: str) -> ec.EllipticCurvePublicKey:
    key = certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise EvidenceVerificationError(f"{what} key is not ECDSA P-256")
    return key


def check_qe_report_signature(quote: TdxQuote, pck_certificate: x509.Certificate) -> None:
    """The PCK key (the platform's PCE) signed the QE report."""
    key = _p256_key(pck_certificate, "PCK certificate")
    certification = quote.certification
    try:
        key.verify(
            _raw_signature_to_der(certification.qe_report_signature),
            certification.qe_report,
            ec.ECDSA(hashes.SHA256()),
        )
    except InvalidSignature:
        raise EvidenceVerificationError(
            "QE report signature does not verify under the PCK key"
        ) from None


def check_qe_report_binding(quote: TdxQuote) -> None:
    """QE report_data = SHA-256(attestation key || QE auth data) || 32 zero bytes."""
    certification = quote.certification
    expected = hashlib.sha256(quote.attestation_key + certification.qe_auth_data).digest()
    expected += bytes(32)
    if not hmac.compare_digest(expected, certification.qe_report_body.report_data):
        raise EvidenceVerificationError(
            "QE report_data does not bind the attestation key and QE authentication data"
        )


def check_quote_signature(quote: TdxQuote) -> None:
    """The attestation key signed header || body (v5: with the body descriptor)."""
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b"\x04" + quote.attestation_key
        )
    except ValueError:
        raise EvidenceVerificationError("attestation key is not a point on P-256") from None
    try:
        key.verify(
            _raw_signature_to_der(quote.signature), quote.signed_bytes, ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        raise EvidenceVerificationError(
            "quote signature does not verify under the attestation key"
        ) from None


def _check_quoting_enclave(quote: TdxQuote, *, identity_checked: bool) -> None:
    report = quote.certification.qe_report_body
    if report.debug:
        raise EvidenceVerificationError("QE report: the quoting enclave runs in debug mode")
    if identity_checked:
        return
    if report.mr_signer != INTEL_TD_QE_MRSIGNER or report.isv_prod_id != INTEL_TD_QE_ISVPRODID:
        raise EvidenceVerificationError("QE report: the quoting enclave is not Intel's TD QE")


def verify_quote(
    quote: TdxQuote, trust: TdxTrustStore, at: datetime, collateral: Collateral | None
) -> VerifiedQuote:
    """Every authenticity check, in order; collateral adds CRLs, QE identity and TCB status."""
    if quote.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise EvidenceVerificationError("quote header: QE vendor id is not Intel's")
    chain = load_pem_chain(quote.certification.pck_chain_pem, "PCK certificate chain")
    below_root = [cert for cert in chain if cert.subject != cert.issuer]
    if len(below_root) != PCK_CHAIN_LENGTH:
        raise EvidenceVerificationError(
            f"PCK certificate chain: expected PCK and one CA below the root, got {len(below_root)}"
        )
    pck = parse_pck_extensions(chain[0])
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    collateral_root: TrustedRoot | None = None
    if collateral is not None:
        collateral_root = verify_collateral(collateral, trust, at)
        crls = (collateral.pck_crl, collateral.root_ca_crl)
    root = verify_chain(
        chain,
        trust,
        at,
        what="PCK certificate chain",
        crls=crls,
        require_crls=collateral is not None,
    )
    if collateral_root is not None and collateral_root.certificate != root.certificate:
        raise EvidenceVerificationError("collateral and PCK chain end at different roots")
    check_qe_report_signature(quote, chain[0])
    check_qe_report_binding(quote)
    check_quote_signature(quote)
    _check_quoting_enclave(quote, identity_checked=collateral is not None)
    evaluation = None
    if collateral is not None:
        evaluation = evaluate_tcb(
            collateral.tcb_info,
            collateral.qe_identity,
            pck,
            quote.body,
            quote.certification.qe_report_body,
        )
        if evaluation.status is TcbStatus.REVOKED:
            raise EvidenceVerificationError("TDX TCB status is Revoked")
    return VerifiedQuote(quote=quote, pck=pck, root=root, tcb=evaluation)


def _check_endorsements(endorsements: Mapping[str, bytes]) -> None:
    """Refuse names this verifier does not read, as the other verifiers do: an endorsement
    silently ignored is a caller who believes it was checked."""
    unknown = set(endorsements) - ENDORSEMENT_NAMES
    if unknown:
        raise EvidenceFormatError(f"unknown TDX endorsements {sorted(unknown)}; "
                                  f"expected {sorted(ENDORSEMENT_NAMES)}")
    for name, blob in endorsements.items():
        if not isinstance(blob, bytes | bytearray):
            raise EvidenceFormatError(f"endorsement {name!r} must be bytes")


def _system_clock() -> datetime:
    return datetime.now(timezone.utc)


class TdxVerifier:
    """`Verifier` for Intel TDX quotes (v4, v5) under pinned Intel roots.

    ``collateral`` is the broker's own (a parsed `Collateral`, its JSON bytes, or a
    function from FMSPC to collateral); evidence may also carry ``endorsements["collateral"]``
    (JSON bytes). When both exist, the one with the higher tcbEvaluationDataNumber is
    used (the broker's on a tie). Without any, signatures and the PCK chain are still
    verified, and ``platform["tcb_status"]`` is None.
    """

    tee = "tdx"

    def __init__(
        self,
        trust: TdxTrustStore,
        clock: Callable[[], datetime] | None = None,
        collateral: Collateral | bytes | CollateralSource | None = None,
    ) -> None:
        if not isinstance(trust, TdxTrustStore):
            raise TrustStoreError("TdxVerifier needs a TdxTrustStore")
        self._trust = trust
        self._clock = clock or _system_clock
        if isinstance(collateral, bytes | bytearray):
            collateral = parse_collateral(bytes(collateral))
        self._collateral = collateral

    def _now(self) -> datetime:
        now = self._clock()
        if not isinstance(now, datetime) or now.tzinfo is None:
            raise TrustStoreError("TdxVerifier clock must return a timezone-aware datetime")
        return now

    def _broker_collateral(self, quote: TdxQuote) -> Collateral | None:
        if self._collateral is None or isinstance(self._collateral, Collateral):
            return self._collateral
        chain = load_pem_chain(quote.certification.pck_chain_pem, "PCK certificate chain")
        return self._collateral(parse_pck_extensions(chain[0]).fmspc)

    def _choose_collateral(
        self, quote: TdxQuote, endorsements: Mapping[str, bytes]
    ) -> Collateral | None:
        supplied = endorsements.get("collateral")
        candidates = [self._broker_collateral(quote)]
        if supplied is not None:
            candidates.append(parse_collateral(bytes(supplied)))
        present = [c for c in candidates if c is not None]
        if not present:
            return None
        return max(present, key=lambda c: c.tcb_info.tcb_evaluation_data_number)

    def evaluate(
        self,
        evidence: bytes,
        expected_report_data: bytes,
        *,
        endorsements: Mapping[str, bytes] = MappingProxyType({}),
    ) -> Claims:
        """Parse, verify, check report_data, and return the claims; raises on any failure."""
        if (
            not isinstance(expected_report_data, bytes)
            or len(expected_report_data) != REPORT_DATA_SIZE
        ):
            raise ReportDataMismatchError(f"expected report_data must be {REPORT_DATA_SIZE} bytes")
        _check_endorsements(endorsements)
        quote = parse_quote(evidence)
        collateral = self._choose_collateral(quote, endorsements)
        verified = verify_quote(quote, self._trust, self._now(), collateral)
        if not hmac.compare_digest(quote.body.report_data, expected_report_data):
            raise ReportDataMismatchError("TD report_data does not match the expected value")
        return build_claims(verified)
