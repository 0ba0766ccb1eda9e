"""The SEV-SNP trust store: pinned AMD roots, configured ASK/ASVK chains, and the dev root.

What it does: pins AMD's ARKs by the SHA-256 of their SubjectPublicKeyInfo (Milan,
Genoa, Turin), loads ASK/ASVK/ARK certificates from a trust directory (PEM or DER,
each checked against the pins at load), and, only when built with
``allow_simulated=True``, trusts the dev ARK that `create_dev_chain` wrote. A root that
matches a pin is production; the dev root is simulated. What it does not: fetch
anything (see `kds`) or verify evidence (see `verifier`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from cryptography import x509

from keybroker.attestation.errors import AttestationError, TrustStoreError
from keybroker.attestation.snp.cert_checks import check_issued_by
from keybroker.attestation.snp.certificates import (
    MAX_PEM_BUNDLE_SIZE,
    common_name,
    load_der_certificate,
    load_pem_certificates,
    spki_sha256,
)
from keybroker.attestation.snp.product import PRODUCTS, product_from_common_name

__all__ = ["PRODUCTION_ARK_PINS", "SnpTrustStore", "TrustedRoot"]

# SHA-256 over the DER SubjectPublicKeyInfo of AMD's ARKs (RSA-4096), as served by
# https://kdsintf.amd.com/vcek/v1/{Milan,Genoa,Turin}/cert_chain.
PRODUCTION_ARK_PINS: Mapping[str, str] = MappingProxyType({
    "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9": "Milan",
    "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831": "Genoa",
    "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08": "Turin",
})

MAX_TRUST_FILES = 64
_PEM_SUFFIXES = {".pem", ".crt", ".cer"}
_DER_SUFFIXES = {".der"}


@dataclass(frozen=True)
class TrustedRoot:
    """An ARK the store trusts: its certificate, product, pin and whether it is a dev root."""

    certificate: x509.Certificate
    product: str
    fingerprint: str
    simulated: bool


def _is_self_issued(certificate: x509.Certificate) -> bool:
    return certificate.subject == certificate.issuer


def _read_certificates(path: Path) -> list[x509.Certificate]:
    size = path.stat().st_size
    if size > MAX_PEM_BUNDLE_SIZE:
        raise TrustStoreError(f"trust file {path} is {size} bytes, over the limit")
    data = path.read_bytes()
    try:
        if path.suffix.lower() in _DER_SUFFIXES:
            return [load_der_certificate(data, f"trust file {path.name}")]
        return load_pem_certificates(data, f"trust file {path.name}")
    except AttestationError as exc:
        raise TrustStoreError(str(exc)) from None


class SnpTrustStore:
    """Roots and intermediates the SEV-SNP verifier may chain to; immutable once built.

    ``ark_pins`` maps SPKI SHA-256 -> product; it defaults to AMD's production ARKs and is
    overridden only by tests or a deployment with a private root of its own.
    """

    def __init__(
        self,
        trust_dir: Path | str | None = None,
        *,
        allow_simulated: bool = False,
        dev_chain_dir: Path | str | None = None,
        ark_pins: Mapping[str, str] = PRODUCTION_ARK_PINS,
    ) -> None:
        for fingerprint, product in ark_pins.items():
            if product not in PRODUCTS or len(fingerprint) != 64:
                raise TrustStoreError(f"ARK pin {fingerprint!r} -> {product!r} is malformed")
        self._pins = dict(ark_pins)
        self._dev_roots: dict[str, TrustedRoot] = {}
        self._roots: dict[str, TrustedRoot] = {}
        self._intermediates: list[x509.Certificate] = []
        self.allow_simulated = allow_simulated
        if allow_simulated:
            if dev_chain_dir is None:
                raise TrustStoreError("allow_simulated=True needs dev_chain_dir (the dev ARK)")
            self._load_dev_chain(Path(dev_chain_dir))
        if trust_dir is not None:
            self._load_trust_dir(Path(trust_dir))

    # --- queries --------------------------------------------------------------------
    def trusted_root(self, certificate: x509.Certificate) -> TrustedRoot | None:
        """The trust entry for a self-issued certificate whose key is pinned, else None."""
        if not _is_self_issued(certificate):
            return None
        fingerprint = spki_sha256(certificate)
        if fingerprint in self._dev_roots:
            return self._dev_roots[fingerprint]
        product = self._pins.get(fingerprint)
        if product is None:
            return None
        return TrustedRoot(certificate, product, fingerprint, simulated=False)

    def root_certificates(self) -> list[x509.Certificate]:
        """Known trusted ARK certificates (production from the trust dir, and the dev ARK)."""
        return [root.certificate for root in (*self._roots.values(), *self._dev_roots.values())]

    def intermediates(self) -> list[x509.Certificate]:
        """ASK/ASVK certificates that were checked at load to chain to a trusted root."""
        return list(self._intermediates)

    @property
    def pinned_fingerprints(self) -> Mapping[str, str]:
        return MappingProxyType(self._pins)

    # --- loading --------------------------------------------------------------------
    def _load_dev_chain(self, directory: Path) -> None:
        ark_path = directory / "ark.pem"
        if not ark_path.is_file():
            raise TrustStoreError(f"dev chain has no ark.pem in {directory}")
        certificates = _read_certificates(ark_path)
        if len(certificates) != 1 or not _is_self_issued(certificates[0]):
            raise TrustStoreError(f"{ark_path} must hold exactly one self-issued ARK")
        ark = certificates[0]
        self._check_self_signed(ark, str(ark_path))
        product = product_from_common_name(common_name(ark.subject))
        if product is None:
            raise TrustStoreError(f"{ark_path} ARK name does not name a product")
        fingerprint = spki_sha256(ark)
        if fingerprint in self._pins:
            raise TrustStoreError(f"{ark_path} is a production ARK, not a dev root")
        self._dev_roots[fingerprint] = TrustedRoot(ark, product, fingerprint, simulated=True)
        for name in ("ask.pem", "asvk.pem"):
            path = directory / name
            if path.is_file():
                self._add_intermediates(_read_certificates(path), str(path))

    def _load_trust_dir(self, directory: Path) -> None:
        if not directory.is_dir():
            raise TrustStoreError(f"SEV-SNP trust directory {directory} does not exist")
        files = sorted(path for path in directory.iterdir() if path.is_file()
                       and path.suffix.lower() in _PEM_SUFFIXES | _DER_SUFFIXES)
        if len(files) > MAX_TRUST_FILES:
            raise TrustStoreError(
                f"{directory} holds more than {MAX_TRUST_FILES} certificate files")
        pending: list[tuple[x509.Certificate, str]] = []
        for path in files:
            for certificate in _read_certificates(path):
                if _is_self_issued(certificate):
                    self._add_root(certificate, str(path))
                else:
                    pending.append((certificate, str(path)))
        for certificate, source in pending:
            self._add_intermediates([certificate], source)

    def _check_self_signed(self, certificate: x509.Certificate, source: str) -> None:
        try:
            check_issued_by(certificate, certificate, "ARK", "ARK")
        except AttestationError as exc:
            raise TrustStoreError(f"{source}: {exc}") from None

    def _add_root(self, certificate: x509.Certificate, source: str) -> None:
        root = self.trusted_root(certificate)
        if root is None:
            raise TrustStoreError(
                f"{source}: root {common_name(certificate.subject)!r} (SPKI sha256 "
                f"{spki_sha256(certificate)}) matches no pinned AMD ARK")
        self._check_self_signed(certificate, source)
        if not root.simulated:
            self._roots[root.fingerprint] = root

    def _add_intermediates(self, certificates: Iterable[x509.Certificate], source: str) -> None:
        for certificate in certificates:
            if _is_self_issued(certificate):
                self._add_root(certificate, source)
                continue
            issuers = [root for root in self.root_certificates()
                       if root.subject == certificate.issuer]
            errors = []
            for issuer in issuers:
                try:
                    check_issued_by(certificate, issuer, "ASK", "ARK")
                except AttestationError as exc:
                    errors.append(str(exc))
                    continue
                self._intermediates.append(certificate)
                break
            else:
                detail = "; ".join(errors) or "no trusted ARK of that name is loaded"
                raise TrustStoreError(
                    f"{source}: intermediate {common_name(certificate.subject)!r} does not chain "
                    f"to a trusted ARK ({detail})")
