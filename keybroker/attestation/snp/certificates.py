"""Load AMD endorsement certificates (VCEK, VLEK, ASK, ASVK, ARK) with size limits.

What it does: turns DER or PEM bytes into `cryptography` certificates, bounding their
size first and mapping every parse failure to one typed error that names the role.
AMD's VCEKs carry serial number 0, which RFC 5280 forbids; `cryptography` still loads
them but warns that a future release will refuse them. That one warning is silenced here
(only here, and only that message: other warnings still show); setup.py bounds
`cryptography` below its next major release, and tests/attestation/test_serial_zero_vcek.py
fails the day a release stops loading such certificates. What it does not: trust anything;
see `chain` for signatures and pins.
"""

from __future__ import annotations

import hashlib
import warnings

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning

from keybroker.attestation.errors import EvidenceFormatError
from keybroker.attestation.library_errors import library_reason

__all__ = [
    "MAX_CERTIFICATE_SIZE",
    "MAX_PEM_BUNDLE_SIZE",
    "common_name",
    "load_der_certificate",
    "load_pem_certificates",
    "spki_sha256",
]

MAX_CERTIFICATE_SIZE = 16 * 1024  # AMD's certificates are under 2 KiB
MAX_PEM_BUNDLE_SIZE = 256 * 1024
MAX_PEM_CERTIFICATES = 16
SERIAL_ZERO_WARNING = r"Parsed a serial number which wasn't positive"


def _ignore_serial_zero_warning() -> None:
    """Inside ``warnings.catch_warnings()``: drop only cryptography's serial-number notice."""
    warnings.filterwarnings("ignore", message=SERIAL_ZERO_WARNING,
                            category=CryptographyDeprecationWarning)


def _force_parse(certificate: x509.Certificate) -> x509.Certificate:
    """cryptography parses fields lazily: touch each one used later, so a malformed field is a
    format error here rather than a bare ValueError in the middle of verification."""
    certificate.subject  # noqa: B018
    certificate.issuer  # noqa: B018
    certificate.not_valid_before_utc  # noqa: B018
    certificate.not_valid_after_utc  # noqa: B018
    certificate.extensions  # noqa: B018
    certificate.public_key()
    return certificate


def load_der_certificate(der: bytes, role: str) -> x509.Certificate:
    """One DER certificate for `role` ("vcek", "ask", ...); EvidenceFormatError if unusable."""
    if not isinstance(der, bytes | bytearray):
        raise EvidenceFormatError(f"{role} certificate must be bytes")
    if not der:
        raise EvidenceFormatError(f"{role} certificate is empty")
    if len(der) > MAX_CERTIFICATE_SIZE:
        raise EvidenceFormatError(
            f"{role} certificate is {len(der)} bytes, over the {MAX_CERTIFICATE_SIZE}-byte limit")
    try:
        with warnings.catch_warnings():
            _ignore_serial_zero_warning()  # serial number 0 on AMD VCEKs
            return _force_parse(x509.load_der_x509_certificate(bytes(der)))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise EvidenceFormatError(f"{role} certificate is not a valid DER X.509 certificate: "
                                  f"{library_reason(exc)}") from None


def load_pem_certificates(pem: bytes, source: str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle (e.g. AMD's cert_chain: ASK then ARK)."""
    if len(pem) > MAX_PEM_BUNDLE_SIZE:
        raise EvidenceFormatError(f"{source} is {len(pem)} bytes, over the "
                                  f"{MAX_PEM_BUNDLE_SIZE}-byte PEM limit")
    if pem.count(b"-----BEGIN CERTIFICATE-----") > MAX_PEM_CERTIFICATES:
        raise EvidenceFormatError(f"{source} holds more than {MAX_PEM_CERTIFICATES} certificates")
    try:
        with warnings.catch_warnings():
            _ignore_serial_zero_warning()
            certificates = [_force_parse(c) for c in x509.load_pem_x509_certificates(pem)]
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise EvidenceFormatError(
            f"{source} is not a PEM certificate bundle: {library_reason(exc)}") from None
    for certificate in certificates:
        if len(certificate.public_bytes(serialization.Encoding.DER)) > MAX_CERTIFICATE_SIZE:
            raise EvidenceFormatError(f"{source} holds a certificate over the size limit")
    return certificates


def spki_sha256(certificate: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the SubjectPublicKeyInfo DER: what the ARK pins are."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def common_name(name: x509.Name) -> str:
    """The single CN of a name, or "" when there is none."""
    attributes = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if len(attributes) != 1:
        return ""
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")
