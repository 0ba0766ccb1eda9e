"""PCK certificates: chain PCK -> Platform/Processor CA -> Intel SGX Root CA, CRLs, SGX extension.

What it does: loads a PEM chain with bounds, verifies each link (issuer name, ECDSA
signature, CA flag, validity at an injected time) up to a root from `TdxTrustStore`,
checks CRLs that are given (signature by the right issuer, freshness, serial not listed),
and reads the Intel SGX extension (OID 1.2.840.113741.1.13.1) of a PCK certificate: the
16 SGX TCB component SVNs, PCESVN, CPUSVN, PCE-ID, FMSPC, SGX type. The same chain check
serves the TCB signing chain of the collateral. What it does not: parse quotes, fetch
certificates or CRLs, or compute TCB status (see `tcb.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from keybroker.attestation.errors import EvidenceFormatError, EvidenceVerificationError
from keybroker.attestation.tdx.der import (
    TAG_ENUMERATED,
    DerElement,
    read_single,
)
from keybroker.attestation.tdx.trust import TdxTrustStore, TrustedRoot

__all__ = [
    "SGX_EXTENSION_OID",
    "PckExtensions",
    "load_crl",
    "load_pem_chain",
    "parse_pck_extensions",
    "verify_chain",
]

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_TCB_OID = SGX_EXTENSION_OID + ".2"
_CONFIGURATION_OID = SGX_EXTENSION_OID + ".7"
SGX_TCB_COMPONENT_COUNT = 16
MAX_CHAIN_CERTIFICATES = 4
MAX_PEM_CHAIN_SIZE = 16 * 1024
MAX_CRL_SIZE = 512 * 1024  # Intel's PCK CRLs grow; today they are a few KiB


@dataclass(frozen=True)
class PckExtensions:
    """The Intel SGX extension of a PCK certificate (what the platform's TCB was at issue)."""

    ppid: bytes
    tcb_components: tuple[int, ...]  # SGX TCB component SVNs 1..16
    pce_svn: int
    cpu_svn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int  # 0 standard, 1 scalable, 2 scalable with integrity
    platform_instance_id: bytes | None = None
    dynamic_platform: bool | None = None
    cached_keys: bool | None = None
    smt_enabled: bool | None = None


def _force_parse(certificate: x509.Certificate) -> None:
    """cryptography parses certificate fields lazily: touch every one used later, so a malformed
    field fails here as a format error instead of as a bare ValueError mid-verification."""
    certificate.subject  # noqa: B018
    certificate.issuer  # noqa: B018
    certificate.serial_number  # noqa: B018
    certificate.not_valid_before_utc  # noqa: B018
    certificate.not_valid_after_utc  # noqa: B018
    certificate.signature_hash_algorithm  # noqa: B018
    certificate.extensions  # noqa: B018
    certificate.public_key()


def load_pem_chain(pem: bytes, what: str) -> list[x509.Certificate]:
    """Certificates from a PEM chain (leaf first); trailing NULs (as Intel's QE writes) allowed."""
    if len(pem) > MAX_PEM_CHAIN_SIZE:
        raise EvidenceFormatError(f"{what}: {len(pem)} bytes exceeds {MAX_PEM_CHAIN_SIZE}")
    text = bytes(pem).rstrip(b"\0")
    if text.count(b"-----BEGIN CERTIFICATE-----") > MAX_CHAIN_CERTIFICATES:
        raise EvidenceFormatError(f"{what}: more than {MAX_CHAIN_CERTIFICATES} certificates")
    try:
        certificates = x509.load_pem_x509_certificates(text)
        for certificate in certificates:  # cryptography parses these lazily: force it here
            _force_parse(certificate)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise EvidenceFormatError(f"{what}: not a valid PEM certificate chain") from exc
    if len(certificates) < 2:
        raise EvidenceFormatError(
            f"{what}: needs a leaf and its issuer, found {len(certificates)} certificate(s)"
        )
    return certificates


def load_crl(der: bytes, what: str) -> x509.CertificateRevocationList:
    """A CRL from DER (or PEM) bytes, bounded."""
    if len(der) > MAX_CRL_SIZE:
        raise EvidenceFormatError(f"{what}: {len(der)} bytes exceeds {MAX_CRL_SIZE}")
    try:
        if der.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(der)
        else:
            crl = x509.load_der_x509_crl(der)
        len(crl)  # parse the revoked entries now, not later mid-verification
        crl.next_update_utc  # noqa: B018
        return crl
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise EvidenceFormatError(f"{what}: not a valid CRL") from exc


def _check_validity(certificate: x509.Certificate, at: datetime, what: str) -> None:
    if not certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc:
        raise EvidenceVerificationError(
            f"{what}: certificate {certificate.subject.rfc4514_string()!r} is not valid at "
            f"{at.isoformat()} (valid {certificate.not_valid_before_utc.isoformat()} .. "
            f"{certificate.not_valid_after_utc.isoformat()})"
        )


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _check_issued_by(child: x509.Certificate, parent: x509.Certificate, what: str) -> None:
    if not isinstance(parent.public_key(), ec.EllipticCurvePublicKey):
        raise EvidenceVerificationError(f"{what}: issuer key is not an ECDSA key")
    if not _is_ca(parent):
        raise EvidenceVerificationError(
            f"{what}: issuer {parent.subject.rfc4514_string()!r} is not a CA certificate"
        )
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        raise EvidenceVerificationError(
            f"{what}: {child.subject.rfc4514_string()!r} is not signed by "
            f"{parent.subject.rfc4514_string()!r}"
        ) from exc


def _check_revocation(
    child: x509.Certificate,
    parent: x509.Certificate,
    crls: Sequence[x509.CertificateRevocationList],
    at: datetime,
    what: str,
    *,
    required: bool,
) -> None:
    """Check every CRL issued by ``parent``; with ``required``, at least one must exist."""
    matching = [crl for crl in crls if crl.issuer == parent.subject]
    if required and not matching:
        raise EvidenceVerificationError(
            f"{what}: no CRL from {parent.subject.rfc4514_string()!r} to check "
            f"{child.subject.rfc4514_string()!r} against"
        )
    for crl in matching:
        try:
            signature_valid = crl.is_signature_valid(parent.public_key())  # type: ignore[arg-type]
        except (ValueError, TypeError, UnsupportedAlgorithm):
            signature_valid = False
        if not signature_valid:
            raise EvidenceVerificationError(
                f"{what}: CRL of {parent.subject.rfc4514_string()!r} has a bad signature"
            )
        next_update = crl.next_update_utc
        if crl.last_update_utc > at or next_update is None or at > next_update:
            raise EvidenceVerificationError(
                f"{what}: CRL of {parent.subject.rfc4514_string()!r} is not current at "
                f"{at.isoformat()}"
            )
        if crl.get_revoked_certificate_by_serial_number(child.serial_number) is not None:
            raise EvidenceVerificationError(
                f"{what}: certificate {child.subject.rfc4514_string()!r} "
                f"(serial {child.serial_number:x}) is revoked"
            )


def verify_chain(
    chain: Sequence[x509.Certificate],
    trust: TdxTrustStore,
    at: datetime,
    *,
    what: str,
    crls: Sequence[x509.CertificateRevocationList] = (),
    require_crls: bool = False,
) -> TrustedRoot:
    """Verify ``chain`` (leaf first) up to a trusted root; returns the root it ends at.

    A self-signed certificate at the end of ``chain`` must be byte-identical to the
    trusted root and is otherwise ignored: the anchor always comes from ``trust``.
    """
    certificates = list(chain)
    if not certificates:
        raise EvidenceFormatError(f"{what}: empty certificate chain")
    if len(certificates) > 1 and certificates[-1].subject == certificates[-1].issuer:
        supplied_root = certificates.pop()
        supplied_der = supplied_root.public_bytes(Encoding.DER)
        if not any(
            root.certificate.public_bytes(Encoding.DER) == supplied_der for root in trust.roots
        ):
            raise EvidenceVerificationError(
                f"{what}: chain ends at root {supplied_root.subject.rfc4514_string()!r}, "
                "which is not a trusted root"
            )
    if _is_ca(certificates[0]):
        raise EvidenceVerificationError(f"{what}: leaf certificate is a CA certificate")
    top = certificates[-1]
    candidates = trust.anchor_for(top.issuer)
    if not candidates:
        raise EvidenceVerificationError(
            f"{what}: no trusted root named {top.issuer.rfc4514_string()!r}"
        )
    for index, child in enumerate(certificates):
        _check_validity(child, at, what)
        if index + 1 < len(certificates):
            parent = certificates[index + 1]
            _check_issued_by(child, parent, what)
            _check_revocation(child, parent, crls, at, what, required=require_crls)
    last_error: EvidenceVerificationError | None = None
    for root in candidates:
        try:
            _check_validity(root.certificate, at, what)
            _check_issued_by(top, root.certificate, what)
            _check_revocation(top, root.certificate, crls, at, what, required=require_crls)
        except EvidenceVerificationError as exc:
            last_error = exc
            continue
        return root
    assert last_error is not None
    raise last_error


def parse_pck_extensions(certificate: x509.Certificate) -> PckExtensions:
    """Read the Intel SGX extension of a PCK certificate; EvidenceFormatError if malformed."""
    what = "PCK SGX extension"
    matches = [ext for ext in certificate.extensions if ext.oid.dotted_string == SGX_EXTENSION_OID]
    if len(matches) != 1:
        raise EvidenceFormatError(f"{what}: PCK certificate has {len(matches)} SGX extensions")
    value = matches[0].value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise EvidenceFormatError(f"{what}: unexpected extension type")
    entries = _oid_entries(read_single(value.value, what), what)
    tcb_entries = _oid_entries(_require(entries, _TCB_OID, what), f"{what} TCB")
    components = tuple(
        _svn(_require(tcb_entries, f"{_TCB_OID}.{index}", f"{what} TCB"), f"TCB comp {index}", 255)
        for index in range(1, SGX_TCB_COMPONENT_COUNT + 1)
    )
    pce_svn = _svn(_require(tcb_entries, f"{_TCB_OID}.17", f"{what} TCB"), "PCESVN", 0xFFFF)
    cpu_svn = _require(tcb_entries, f"{_TCB_OID}.18", f"{what} TCB").as_octets(
        f"{what} CPUSVN", size=16
    )
    base = SGX_EXTENSION_OID
    instance = entries.get(f"{base}.6")
    configuration: dict[str, DerElement] = {}
    if f"{base}.7" in entries:
        configuration = _oid_entries(entries[f"{base}.7"], f"{what} configuration")
    return PckExtensions(
        ppid=_require(entries, f"{base}.1", what).as_octets(f"{what} PPID", size=16),
        tcb_components=components,
        pce_svn=pce_svn,
        cpu_svn=cpu_svn,
        pce_id=_require(entries, f"{base}.3", what).as_octets(f"{what} PCE-ID", size=2),
        fmspc=_require(entries, f"{base}.4", what).as_octets(f"{what} FMSPC", size=6),
        sgx_type=_require(entries, f"{base}.5", what).as_unsigned(
            f"{what} SGX type", tag=TAG_ENUMERATED
        ),
        platform_instance_id=(
            instance.as_octets(f"{what} platform instance id", size=16) if instance else None
        ),
        dynamic_platform=_optional_bool(configuration, f"{_CONFIGURATION_OID}.1", what),
        cached_keys=_optional_bool(configuration, f"{_CONFIGURATION_OID}.2", what),
        smt_enabled=_optional_bool(configuration, f"{_CONFIGURATION_OID}.3", what),
    )


def _oid_entries(sequence: DerElement, what: str) -> dict[str, DerElement]:
    """A SEQUENCE OF SEQUENCE { OID, value } as a dict; duplicates are an error."""
    entries: dict[str, DerElement] = {}
    for item in sequence.children(what):
        pair = item.children(what)
        if len(pair) != 2:
            raise EvidenceFormatError(f"{what}: entry has {len(pair)} elements, expected 2")
        oid = pair[0].as_oid(what)
        if oid in entries:
            raise EvidenceFormatError(f"{what}: duplicate entry {oid}")
        entries[oid] = pair[1]
    return entries


def _require(entries: dict[str, DerElement], oid: str, what: str) -> DerElement:
    try:
        return entries[oid]
    except KeyError:
        raise EvidenceFormatError(f"{what}: missing entry {oid}") from None


def _svn(element: DerElement, name: str, maximum: int) -> int:
    value = element.as_unsigned(f"PCK SGX extension {name}")
    if value > maximum:
        raise EvidenceFormatError(f"PCK SGX extension {name}: {value} exceeds {maximum}")
    return value


def _optional_bool(entries: dict[str, DerElement], oid: str, what: str) -> bool | None:
    element = entries.get(oid)
    return None if element is None else element.as_bool(f"{what} {oid}")
