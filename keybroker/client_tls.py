"""TLS for the broker client: which hosts may be spoken to in plain HTTP, and the trust context.

What it does: ``is_loopback_host`` says whether a URL's host is this machine's loopback (the
only place plain ``http://`` is allowed without an explicit insecure flag); ``tls_context``
builds the client's context from the system CAs, a CA bundle, or one pinned certificate
(which is then the only trust anchor), with an optional client certificate;
``certificate_fingerprint`` is what a pinned certificate is compared by; ``is_tls_failure``
tells a failed handshake from an unreachable host. Errors are ``ClientTlsError``, which the
client turns into ``BrokerTransportSecurityError``.

What it does not: it sends nothing; ``keybroker.client`` does.
"""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "ClientTlsError",
    "certificate_fingerprint",
    "is_loopback_host",
    "is_tls_failure",
    "tls_context",
]


class ClientTlsError(Exception):
    """TLS material is missing, unreadable or contradictory."""


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a URL's host, brackets stripped) names this machine's loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(
    *,
    ca_bundle: Path | bytes | None = None,
    pinned_certificate: Path | bytes | None = None,
    client_certificate: tuple[Path, Path] | None = None,
) -> ssl.SSLContext:
    """The client's TLS context: the system CAs, or a CA bundle, or one pinned certificate.

    ``ca_bundle`` and ``pinned_certificate`` are a PEM file's path, or its bytes.
    """
    if ca_bundle is not None and pinned_certificate is not None:
        raise ClientTlsError("give a CA bundle or a pinned certificate, not both")
    try:
        anchor = pinned_certificate if pinned_certificate is not None else ca_bundle
        if isinstance(anchor, bytes):
            context = ssl.create_default_context(cadata=anchor.decode("ascii"))
        else:
            context = ssl.create_default_context(cafile=str(anchor) if anchor else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if pinned_certificate is not None:  # the pinned leaf is the trust anchor itself
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        if client_certificate is not None:
            context.load_cert_chain(str(client_certificate[0]), str(client_certificate[1]))
    except (OSError, ssl.SSLError, UnicodeDecodeError) as error:
        raise ClientTlsError(f"cannot load TLS material: {error}") from None
    return context


def certificate_fingerprint(pem: Path | bytes) -> bytes:
    try:
        data = pem if isinstance(pem, bytes) else Path(pem).read_bytes()
        certificate = x509.load_pem_x509_certificate(data)
    except (OSError, ValueError) as error:
        raise ClientTlsError(f"pinned certificate unreadable: {error}") from None
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()


def is_tls_failure(error: BaseException) -> bool:
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
