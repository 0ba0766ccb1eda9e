"""Intel PCS collateral for TDX: TCB info v3, QE identity v2, their signatures, and CRLs.

What it does: parses the collateral bundle (the JSON shape of dcap-qvl / PCCS
``QuoteCollateralV3``: ``tcb_info`` and ``qe_identity`` as the exact signed JSON text with hex
``*_signature``, PEM ``*_issuer_chain``, hex DER ``pck_crl`` and ``root_ca_crl``) into frozen
dataclasses with bounded, typed checks; splits PCS responses (``{"tcbInfo": ..., "signature":
...}``) into the signed bytes and signature; and verifies the TCB-info and QE-identity
signatures with the TCB signing certificate, which must be issued directly by a trusted
root, the root CRL, and the validity window (issueDate .. nextUpdate) at an injected time.
What it does not: parse the TCB info / QE identity fields (see `pcs_documents.py`), fetch
from PCS, or compute a TCB status (see `tcb.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from keybroker.attestation.errors import EvidenceFormatError, EvidenceVerificationError
from keybroker.attestation.json_bounded import load_bounded_json
from keybroker.attestation.tdx.pck import load_crl, load_pem_chain, verify_chain
from keybroker.attestation.tdx.pcs_documents import (
    MAX_JSON_DEPTH,
    MAX_SIGNED_JSON_SIZE,
    JsonFields,
    QeIdentity,
    QeTcbLevel,
    TcbInfo,
    TcbLevel,
    TdxModule,
    TdxModuleIdentity,
    TdxModuleTcbLevel,
    parse_qe_identity,
    parse_tcb_info,
)
from keybroker.attestation.tdx.trust import TdxTrustStore, TrustedRoot

__all__ = [
    "Collateral",
    "QeIdentity",
    "QeTcbLevel",
    "SignedJson",
    "TcbInfo",
    "TcbLevel",
    "TdxModule",
    "TdxModuleIdentity",
    "TdxModuleTcbLevel",
    "parse_collateral",
    "parse_qe_identity",
    "parse_tcb_info",
    "split_signed_response",
    "verify_collateral",
]

MAX_COLLATERAL_SIZE = 1024 * 1024


@dataclass(frozen=True)
class SignedJson:
    """The exact bytes Intel signed and the raw r || s ECDSA P-256 signature."""

    body: bytes
    signature: bytes


@dataclass(frozen=True)
class Collateral:
    """Parsed (not yet verified) collateral for one platform (one FMSPC)."""

    tcb_info: TcbInfo
    tcb_info_signed: SignedJson
    tcb_info_issuer_chain: tuple[x509.Certificate, ...]
    qe_identity: QeIdentity
    qe_identity_signed: SignedJson
    qe_identity_issuer_chain: tuple[x509.Certificate, ...]
    pck_crl: x509.CertificateRevocationList
    root_ca_crl: x509.CertificateRevocationList


def split_signed_response(body: bytes, key: str) -> SignedJson:
    """Split a PCS response ``{"<key>": {...}, "signature": "<hex>"}`` into signed bytes.

    Intel signs the exact text of the ``<key>`` object as it appears in the response, so
    the bytes are cut from the body, not re-serialized.
    """
    document = load_bounded_json(
        body, what=f"collateral {key}", max_bytes=MAX_SIGNED_JSON_SIZE, max_depth=MAX_JSON_DEPTH,
        error=EvidenceFormatError,
    )
    text = body.decode("utf-8")
    fields = JsonFields(document, "response")
    signature = fields.hex_bytes("signature", 64)
    fields.child(key)
    marker = f'"{key}":'
    start = text.find(marker)
    if start < 0 or text.find(marker, start + 1) >= 0:
        raise EvidenceFormatError(f"collateral {key}: cannot locate the signed object text")
    start += len(marker)
    while text[start] in " \t\r\n":
        start += 1
    try:
        _, end = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        raise EvidenceFormatError(f"collateral {key}: signed object is not JSON") from None
    return SignedJson(body=text[start:end].encode("utf-8"), signature=signature)


def parse_collateral(data: bytes) -> Collateral:
    """Parse a collateral bundle (QuoteCollateralV3 JSON shape)."""
    document = load_bounded_json(
        data, what="collateral", max_bytes=MAX_COLLATERAL_SIZE, max_depth=MAX_JSON_DEPTH,
        error=EvidenceFormatError,
    )
    fields = JsonFields(document, "bundle")
    limit = MAX_SIGNED_JSON_SIZE

    def signed(body_key: str, signature_key: str) -> SignedJson:
        return SignedJson(
            body=fields.string(body_key, limit=limit).encode("utf-8"),
            signature=fields.hex_bytes(signature_key, 64),
        )

    def crl(key: str) -> x509.CertificateRevocationList:
        text = fields.string(key, limit=2 * 512 * 1024)
        try:
            der = bytes.fromhex(text)
        except ValueError:
            der = text.encode("ascii", "replace")  # a PEM CRL is also accepted
        return load_crl(der, f"collateral {key}")

    def chain(key: str) -> tuple[x509.Certificate, ...]:
        pem = fields.string(key, limit=16 * 1024).encode("ascii", "replace")
        return tuple(load_pem_chain(pem, f"collateral {key}"))

    tcb_signed = signed("tcb_info", "tcb_info_signature")
    qe_signed = signed("qe_identity", "qe_identity_signature")
    return Collateral(
        tcb_info=parse_tcb_info(tcb_signed.body),
        tcb_info_signed=tcb_signed,
        tcb_info_issuer_chain=chain("tcb_info_issuer_chain"),
        qe_identity=parse_qe_identity(qe_signed.body),
        qe_identity_signed=qe_signed,
        qe_identity_issuer_chain=chain("qe_identity_issuer_chain"),
        pck_crl=crl("pck_crl"),
        root_ca_crl=crl("root_ca_crl"),
    )


def _verify_signed_json(
    signed: SignedJson,
    issuer_chain: tuple[x509.Certificate, ...],
    collateral: Collateral,
    trust: TdxTrustStore,
    at: datetime,
    what: str,
) -> TrustedRoot:
    chain = list(issuer_chain)
    if sum(1 for cert in chain if cert.subject != cert.issuer) != 1:
        raise EvidenceVerificationError(
            f"collateral {what}: signing certificate must be issued directly by the root"
        )
    root = verify_chain(
        chain,
        trust,
        at,
        what=f"collateral {what} signing chain",
        crls=(collateral.root_ca_crl,),
        require_crls=True,
    )
    key = chain[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise EvidenceVerificationError(f"collateral {what}: signing key is not ECDSA P-256")
    der_signature = utils.encode_dss_signature(
        int.from_bytes(signed.signature[:32], "big"), int.from_bytes(signed.signature[32:], "big")
    )
    try:
        key.verify(der_signature, signed.body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise EvidenceVerificationError(f"collateral {what}: signature is invalid") from None
    return root


def _check_window(issue_date: datetime, next_update: datetime, at: datetime, what: str) -> None:
    if not issue_date <= at <= next_update:
        raise EvidenceVerificationError(
            f"collateral {what}: not current at {at.isoformat()} (issued "
            f"{issue_date.isoformat()}, next update {next_update.isoformat()})"
        )


def verify_collateral(collateral: Collateral, trust: TdxTrustStore, at: datetime) -> TrustedRoot:
    """Verify both signatures, chains, the root CRL and validity windows; returns the root.

    Both signing chains must end at the same trusted root.
    """
    tcb_root = _verify_signed_json(
        collateral.tcb_info_signed,
        collateral.tcb_info_issuer_chain,
        collateral,
        trust,
        at,
        "tcb_info",
    )
    qe_root = _verify_signed_json(
        collateral.qe_identity_signed,
        collateral.qe_identity_issuer_chain,
        collateral,
        trust,
        at,
        "qe_identity",
    )
    if tcb_root.certificate != qe_root.certificate:
        raise EvidenceVerificationError(
            "collateral: TCB info and QE identity chain to different roots"
        )
    info, identity = collateral.tcb_info, collateral.qe_identity
    _check_window(info.issue_date, info.next_update, at, "tcb_info")
    _check_window(identity.issue_date, identity.next_update, at, "qe_identity")
    return tcb_root
