"""Build and check the SEV-SNP endorsement chain: VCEK -> ASK -> ARK (or VLEK -> ASVK -> ARK).

What it does: picks the intermediate and root among the certificates the evidence
offered and those the trust store holds, checks every RSA-PSS signature, the validity
windows at the verifier's clock, the CA flags and the names, and requires the root to be
pinned (production) or the allowed dev root (simulated). What it does not: look at the
report; the leaf's key and extensions are used by `verify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from keybroker.attestation.errors import AttestationError, EvidenceVerificationError
from keybroker.attestation.snp.cert_checks import check_ca, check_issued_by, check_valid_at
from keybroker.attestation.snp.certificates import common_name
from keybroker.attestation.snp.product import product_from_common_name
from keybroker.attestation.snp.trust import SnpTrustStore, TrustedRoot

__all__ = ["VerifiedChain", "intermediate_role", "verify_endorsement_chain"]

_INTERMEDIATE_FOR = {"vcek": "ask", "vlek": "asvk"}


@dataclass(frozen=True)
class VerifiedChain:
    """A chain that checked out: which product, whether simulated, and the certificates."""

    product: str
    simulated: bool
    root_fingerprint: str
    leaf: x509.Certificate
    intermediate: x509.Certificate
    root: x509.Certificate


def intermediate_role(certificate: x509.Certificate) -> str | None:
    """"asvk" for SEV-VLEK-<product>, "ask" for SEV-<product>, else None."""
    name = common_name(certificate.subject)
    if product_from_common_name(name) is None:
        return None
    if name.startswith(("SEV-VLEK-", "ASVK-")):
        return "asvk"
    if name.startswith("SEV-"):
        return "ask"
    return None


def _unique(certificates: list[x509.Certificate]) -> list[x509.Certificate]:
    """The certificates in order, each DER encoding once."""
    seen: set[bytes] = set()
    result = []
    for certificate in certificates:
        der = certificate.public_bytes(serialization.Encoding.DER)
        if der not in seen:
            seen.add(der)
            result.append(certificate)
    return result


def _check_root(root: x509.Certificate, trust: SnpTrustStore) -> TrustedRoot:
    trusted = trust.trusted_root(root)
    if trusted is None:
        raise EvidenceVerificationError(
            f"ARK {common_name(root.subject)!r} is not a pinned AMD root"
            + ("" if trust.allow_simulated else " (simulated roots are not allowed)"))
    check_issued_by(root, root, "ARK", "ARK")
    return trusted


def verify_endorsement_chain(
    leaf: x509.Certificate,
    leaf_role: str,
    trust: SnpTrustStore,
    *,
    offered_intermediate: x509.Certificate | None,
    offered_root: x509.Certificate | None,
    at: datetime,
) -> VerifiedChain:
    """Check leaf -> intermediate -> pinned root; the first path that verifies wins."""
    if leaf_role not in _INTERMEDIATE_FOR:
        raise ValueError(f"unknown endorsement key role {leaf_role!r}")
    wanted = _INTERMEDIATE_FOR[leaf_role]
    intermediates = _unique(([offered_intermediate] if offered_intermediate else [])
                            + trust.intermediates())
    roots = _unique(([offered_root] if offered_root else []) + trust.root_certificates())
    named = [cert for cert in intermediates if cert.subject == leaf.issuer]
    if not named:
        raise EvidenceVerificationError(
            f"no {wanted.upper()} named {leaf.issuer.rfc4514_string()!r} is offered or trusted "
            f"(pass endorsements[{wanted!r}] or configure the SEV-SNP trust directory)")
    failures: list[str] = []
    for intermediate in named:
        try:
            role = intermediate_role(intermediate)
            if role != wanted:
                raise EvidenceVerificationError(
                    f"{leaf_role} must chain through an {wanted.upper()}, but its issuer "
                    f"{common_name(intermediate.subject)!r} is not one")
            check_issued_by(leaf, intermediate, leaf_role, wanted.upper())
            return _finish(leaf, leaf_role, intermediate, wanted, roots, trust, at)
        except AttestationError as exc:
            failures.append(str(exc))
    raise EvidenceVerificationError("; ".join(dict.fromkeys(failures)))


def _finish(leaf: x509.Certificate, leaf_role: str, intermediate: x509.Certificate, wanted: str,
            roots: list[x509.Certificate], trust: SnpTrustStore, at: datetime) -> VerifiedChain:
    named = [cert for cert in roots if cert.subject == intermediate.issuer]
    if not named:
        raise EvidenceVerificationError(
            f"no ARK named {intermediate.issuer.rfc4514_string()!r} is offered or trusted")
    failures: list[str] = []
    for root in named:
        try:
            trusted = _check_root(root, trust)
            check_issued_by(intermediate, root, wanted.upper(), "ARK")
        except AttestationError as exc:
            failures.append(str(exc))
            continue
        product = trusted.product
        for certificate, role in ((intermediate, wanted.upper()), (root, "ARK")):
            named_product = product_from_common_name(common_name(certificate.subject))
            if named_product != product:
                raise EvidenceVerificationError(
                    f"{role} {common_name(certificate.subject)!r} does not belong to the "
                    f"{product} root it chains to")
        check_ca(root, "ARK")
        check_ca(intermediate, wanted.upper())
        for certificate, role in ((root, "ARK"), (intermediate, wanted.upper()), (leaf, leaf_role)):
            check_valid_at(certificate, at, role)
        return VerifiedChain(product, trusted.simulated, trusted.fingerprint, leaf, intermediate,
                             root)
    raise EvidenceVerificationError("; ".join(dict.fromkeys(failures)))
