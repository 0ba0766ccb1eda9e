"""SEV-SNP revocation: AMD's certificate revocation lists, fetched, checked and applied.

What it does: AMD KDS publishes, per product, a CRL issued and signed by the ARK
(``/vcek/v1/{product}/crl``; ``/vlek/v1/{product}/crl`` for VLEK chains). `AmdCrlChecker`
fetches it through an injected getter (the network is the caller's: tests hand in a CRL
they built), parses it (DER or PEM, bounded), requires its issuer to be the chain's ARK,
its signature to verify under the ARK's key (RSA-PSS) and the verifier's time to fall in
its [thisUpdate, nextUpdate] window, then refuses a chain whose intermediate (ASK or
ASVK) or endorsement key (VCEK or VLEK) serial number is listed. A verified CRL is kept in
memory until its nextUpdate.

A CRL that cannot be had (fetch failed, unparsable, wrong signer, stale) raises its own
`CrlUnavailableError`, never a revocation verdict, so the caller picks: ``fail-closed``
(the default: no fresh CRL, no release) or ``fail-open`` (log, and go on unchecked).
What it does not: check OCSP (AMD publishes none) or the chain itself (chain.py).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from cryptography import x509

from keybroker.attestation.errors import EndorsementUnavailableError, EvidenceVerificationError
from keybroker.attestation.library_errors import library_reason
from keybroker.attestation.snp.certificates import common_name
from keybroker.attestation.snp.chain import VerifiedChain
from keybroker.attestation.snp.kds import AMD_KDS_URL, Getter

__all__ = [
    "FAIL_CLOSED",
    "FAIL_OPEN",
    "MAX_CRL_SIZE",
    "REVOCATION_MODES",
    "AmdCrlChecker",
    "CrlUnavailableError",
    "check_not_revoked",
    "crl_url",
    "load_crl",
    "verify_crl",
]

FAIL_CLOSED = "fail-closed"
FAIL_OPEN = "fail-open"
REVOCATION_MODES = (FAIL_CLOSED, FAIL_OPEN)
MAX_CRL_SIZE = 256 * 1024
_KIND_FOR_LEAF = {"vcek": "vcek", "vlek": "vlek"}

logger = logging.getLogger("keybroker.attestation.snp.crl")


class CrlUnavailableError(EndorsementUnavailableError):
    """No usable AMD CRL: fetch failed, or it is malformed, wrongly signed or out of date."""


def crl_url(product: str, kind: str = "vcek", base_url: str = AMD_KDS_URL) -> str:
    if kind not in ("vcek", "vlek"):
        raise ValueError(f"unknown endorsement key kind {kind!r}")
    return f"{base_url.rstrip('/')}/{kind}/v1/{product}/crl"


def load_crl(data: bytes, source: str) -> x509.CertificateRevocationList:
    """A CRL from DER or PEM bytes; CrlUnavailableError when it is not one."""
    if not isinstance(data, bytes | bytearray) or not data:
        raise CrlUnavailableError(f"{source}: empty")
    if len(data) > MAX_CRL_SIZE:
        raise CrlUnavailableError(f"{source}: {len(data)} bytes, over {MAX_CRL_SIZE}")
    try:
        if bytes(data).lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(bytes(data))
        else:
            crl = x509.load_der_x509_crl(bytes(data))
        len(crl)  # parse the revoked entries now
    except ValueError as exc:
        raise CrlUnavailableError(f"{source}: not a CRL ({library_reason(exc)})") from None
    return crl


def verify_crl(crl: x509.CertificateRevocationList, ark: x509.Certificate, at: datetime,
               source: str) -> None:
    """Issuer is the ARK, the ARK's signature verifies, and ``at`` is inside its window."""
    if crl.issuer != ark.subject:
        raise CrlUnavailableError(
            f"{source}: issued by {crl.issuer.rfc4514_string()!r}, not the chain's ARK "
            f"{common_name(ark.subject)!r}")
    try:
        valid = crl.is_signature_valid(ark.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise CrlUnavailableError(f"{source}: signature unusable ({library_reason(exc)})") \
            from None
    if not valid:
        raise CrlUnavailableError(f"{source}: not signed by the chain's ARK")
    next_update = crl.next_update_utc
    if crl.last_update_utc > at:
        raise CrlUnavailableError(f"{source}: issued after the verification time")
    if next_update is None or next_update < at:
        raise CrlUnavailableError(f"{source}: out of date (next update {next_update})")


def check_not_revoked(crl: x509.CertificateRevocationList, chain: VerifiedChain,
                      leaf_role: str) -> None:
    """EvidenceVerificationError naming every certificate of the chain the CRL revokes."""
    intermediate_role = "ASVK" if leaf_role == "vlek" else "ASK"
    revoked = []
    for certificate, role in ((chain.intermediate, intermediate_role),
                              (chain.leaf, leaf_role.upper())):
        entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
        if entry is not None:
            revoked.append(f"{role} serial {certificate.serial_number:#x} was revoked by AMD "
                           f"on {entry.revocation_date_utc.date().isoformat()}")
    if revoked:
        raise EvidenceVerificationError("; ".join(revoked))


class AmdCrlChecker:
    """Fetches, verifies and caches AMD's CRLs; ``check`` applies them to a verified chain."""

    def __init__(self, getter: Getter, *, mode: str = FAIL_CLOSED, base_url: str = AMD_KDS_URL,
                 timeout: float = 10.0) -> None:
        if mode not in REVOCATION_MODES:
            raise ValueError(f"revocation mode must be one of {REVOCATION_MODES}, not {mode!r}")
        if timeout <= 0:
            raise ValueError("CRL fetch timeout must be positive")
        self._getter = getter
        self._mode = mode
        self._base_url = base_url
        self._timeout = timeout
        self._cache: dict[str, x509.CertificateRevocationList] = {}
        self._lock = threading.Lock()

    @property
    def mode(self) -> str:
        return self._mode

    def check(self, chain: VerifiedChain, leaf_role: str, at: datetime) -> bool:
        """True when checked and nothing is revoked; False when skipped (fail-open only).

        Raises EvidenceVerificationError for a revoked certificate and, in fail-closed
        mode, CrlUnavailableError when no usable CRL could be had.
        """
        try:
            crl = self._verified_crl(chain, leaf_role, at)
        except CrlUnavailableError as exc:
            if self._mode == FAIL_CLOSED:
                raise
            logger.warning("SEV-SNP revocation not checked (fail-open): %s", exc)
            return False
        check_not_revoked(crl, chain, leaf_role)
        return True

    def _verified_crl(self, chain: VerifiedChain, leaf_role: str,
                      at: datetime) -> x509.CertificateRevocationList:
        url = crl_url(chain.product, _KIND_FOR_LEAF[leaf_role], self._base_url)
        with self._lock:
            cached = self._cache.get(url)
        if cached is not None:
            try:
                verify_crl(cached, chain.root, at, f"AMD CRL {url}")
                return cached
            except CrlUnavailableError:
                pass  # stale or from another root: fetch again
        try:
            body = self._getter(url, self._timeout)
        except Exception as exc:  # the getter is injected: any failure means "unavailable"
            raise CrlUnavailableError(
                f"AMD CRL fetch failed for {url} ({type(exc).__name__})") from None
        crl = load_crl(body, f"AMD CRL {url}")
        verify_crl(crl, chain.root, at, f"AMD CRL {url}")
        with self._lock:
            self._cache[url] = crl
        return crl

