"""Which Intel roots the TDX verifier trusts: pinned Intel SGX Root CA, optional dev roots.

What it does: loads root certificates from a trust directory (or from memory), accepts
one as an Intel root only if the SHA-256 of its DER matches a pin compiled into this
module, and keeps developer roots (test or simulated Intel-like CAs) apart, so that a
chain ending at one is reported as ``simulated``. What it does not: fetch anything from
Intel PCS, or trust a root that arrives inside a quote (a quote's own root is compared to
these, never used as an anchor).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from keybroker.attestation.errors import TrustStoreError
from keybroker.bounded_read import read_bounded

__all__ = [
    "INTEL_ROOT_FILENAME",
    "INTEL_SGX_ROOT_CA_SHA256",
    "TdxTrustStore",
    "TrustedRoot",
    "certificate_fingerprint",
]

# SHA-256 over the DER of "CN=Intel SGX Root CA" (2018-05-21 .. 2049-12-31), the DCAP anchor.
INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
INTEL_ROOT_FILENAME = "intel_sgx_root_ca.pem"
_MAX_ROOT_FILE = 64 * 1024


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the certificate's DER encoding."""
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


@dataclass(frozen=True)
class TrustedRoot:
    """A root certificate and whether chains ending at it are simulated."""

    certificate: x509.Certificate
    simulated: bool

    @property
    def fingerprint(self) -> str:
        return certificate_fingerprint(self.certificate)


class TdxTrustStore:
    """Pinned Intel roots plus, only when given explicitly, developer roots."""

    def __init__(
        self,
        intel_roots: Iterable[x509.Certificate] = (),
        *,
        dev_roots: Iterable[x509.Certificate] = (),
        pinned_fingerprints: Iterable[str] = (INTEL_SGX_ROOT_CA_SHA256,),
    ) -> None:
        pins = frozenset(pin.lower() for pin in pinned_fingerprints)
        roots: list[TrustedRoot] = []
        for certificate in intel_roots:
            fingerprint = certificate_fingerprint(certificate)
            if fingerprint not in pins:
                raise TrustStoreError(
                    f"TDX trust: root {certificate.subject.rfc4514_string()!r} "
                    f"(sha256 {fingerprint}) is not a pinned Intel root"
                )
            roots.append(TrustedRoot(certificate, simulated=False))
        roots.extend(TrustedRoot(certificate, simulated=True) for certificate in dev_roots)
        if not roots:
            raise TrustStoreError("TDX trust: no root certificate configured")
        self._roots = tuple(roots)

    @classmethod
    def from_directory(
        cls, directory: Path | str, *, dev_roots: Iterable[x509.Certificate] = ()
    ) -> TdxTrustStore:
        """Read ``intel_sgx_root_ca.pem`` from a trust directory and check it against the pin."""
        path = Path(directory) / INTEL_ROOT_FILENAME
        pem = read_bounded(path, _MAX_ROOT_FILE, TrustStoreError,
                           cannot_read=f"TDX trust: cannot read {path}",
                           too_large=f"TDX trust: {path} is larger than {_MAX_ROOT_FILE} bytes")
        try:
            certificates = x509.load_pem_x509_certificates(pem)
        except ValueError as exc:
            raise TrustStoreError(f"TDX trust: {path} holds no valid PEM certificate") from exc
        return cls(certificates, dev_roots=dev_roots)

    @property
    def roots(self) -> tuple[TrustedRoot, ...]:
        return self._roots

    def anchor_for(self, issuer_name: x509.Name) -> list[TrustedRoot]:
        """Roots whose subject is ``issuer_name`` (candidates to anchor a chain)."""
        return [root for root in self._roots if root.certificate.subject == issuer_name]
