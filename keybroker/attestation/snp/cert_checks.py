"""Single checks on AMD certificates: RSA-PSS issuance, validity window, CA flag, leaf key.

What it does: one function per check, each raising `EvidenceVerificationError` that names
the certificate role and the check. AMD signs ASK by ARK, ARK by itself and VCEK/VLEK by
ASK/ASVK with RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48, RSA-4096. What it does not:
choose which certificates form the chain (see `chain`) or which roots are trusted
(see `trust`).
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from keybroker.attestation.errors import EvidenceVerificationError
from keybroker.attestation.library_errors import library_reason
from keybroker.attestation.snp.certificates import common_name

__all__ = [
    "AMD_PSS_SALT_LENGTH",
    "AMD_RSA_KEY_BITS",
    "amd_pss_padding",
    "check_ca",
    "check_endorsement_key",
    "check_issued_by",
    "check_valid_at",
]

AMD_RSA_KEY_BITS = 4096
AMD_PSS_SALT_LENGTH = 48


def amd_pss_padding() -> padding.PSS:
    """RSASSA-PSS as AMD uses it: MGF1 with SHA-384 and a 48-byte salt."""
    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=AMD_PSS_SALT_LENGTH)


def _describe(certificate: x509.Certificate) -> str:
    return repr(common_name(certificate.subject) or certificate.subject.rfc4514_string())


def check_issued_by(child: x509.Certificate, issuer: x509.Certificate, child_role: str,
                    issuer_role: str) -> None:
    """`child` names `issuer` and carries its valid RSA-PSS SHA-384 (salt 48) signature."""
    if child.issuer != issuer.subject:
        raise EvidenceVerificationError(
            f"{child_role} certificate issuer {child.issuer.rfc4514_string()!r} is not the "
            f"{issuer_role} {_describe(issuer)}")
    if child.signature_algorithm_oid != x509.SignatureAlgorithmOID.RSASSA_PSS:
        raise EvidenceVerificationError(f"{child_role} certificate is not signed with RSASSA-PSS")
    try:
        hash_algorithm = child.signature_hash_algorithm
    except UnsupportedAlgorithm:
        hash_algorithm = None
    if not isinstance(hash_algorithm, hashes.SHA384):
        raise EvidenceVerificationError(f"{child_role} certificate signature hash is not SHA-384")
    issuer_key = issuer.public_key()
    if not isinstance(issuer_key, rsa.RSAPublicKey) or issuer_key.key_size != AMD_RSA_KEY_BITS:
        raise EvidenceVerificationError(f"{issuer_role} {_describe(issuer)} key is not RSA-4096")
    try:
        issuer_key.verify(child.signature, child.tbs_certificate_bytes, amd_pss_padding(),
                          hashes.SHA384())
    except InvalidSignature:
        raise EvidenceVerificationError(
            f"{child_role} certificate signature does not verify under the {issuer_role} "
            f"{_describe(issuer)}") from None


def check_valid_at(certificate: x509.Certificate, at: datetime, role: str) -> None:
    """The certificate's validity window contains `at` (timezone-aware)."""
    if at.tzinfo is None:
        raise ValueError("verification time must be timezone-aware")
    if at < certificate.not_valid_before_utc:
        raise EvidenceVerificationError(
            f"{role} certificate is not valid before {certificate.not_valid_before_utc.isoformat()}"
            f" (verification time {at.isoformat()})")
    if at > certificate.not_valid_after_utc:
        raise EvidenceVerificationError(
            f"{role} certificate expired at {certificate.not_valid_after_utc.isoformat()}"
            f" (verification time {at.isoformat()})")


def check_ca(certificate: x509.Certificate, role: str) -> None:
    """ARK, ASK and ASVK must be CA certificates (basicConstraints cA = TRUE)."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise EvidenceVerificationError(f"{role} certificate has no basicConstraints") from None
    except ValueError as exc:
        raise EvidenceVerificationError(
            f"{role} certificate extensions are malformed: {library_reason(exc)}") \
            from None
    if not constraints.ca:
        raise EvidenceVerificationError(f"{role} certificate is not a CA certificate")


def check_endorsement_key(certificate: x509.Certificate, role: str) -> ec.EllipticCurvePublicKey:
    """The VCEK/VLEK public key, which must be ECDSA P-384."""
    try:
        key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise EvidenceVerificationError(f"{role} certificate public key is unusable") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise EvidenceVerificationError(f"{role} certificate key is not ECDSA P-384")
    return key
