"""Verification of Key Vault's Secure Key Release token (a JWS) before anything in it is trusted.

`verify_release_token` checks the compact JWS's shape and size bounds, its ``alg`` (RS/PS 256-512,
ES256/ES384; no ``crit``), the ``x5t#S256`` thumbprint, the signature with the leaf certificate of
``x5c``, and that ``x5c`` chains to the given trust roots for the vault's host name; it returns the
payload as a JSON object. The bounded base64url and JSON decoders here are shared with
`enclave_workers.skr`.

It does not look inside the payload (which key is released, how it is wrapped):
`enclave_workers.skr` does that, with the runtime key, after this module has verified the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from enclave_workers.skr_errors import ReleaseTokenFormatError, ReleaseTokenSignatureError
from keybroker.attestation.json_bounded import load_bounded_json

__all__ = ["b64url", "b64url_decode", "json_object", "verify_release_token"]

_MAX_TOKEN_CHARS = 256 * 1024
_MAX_JSON_BYTES = 256 * 1024
_MAX_HEADER_BYTES = 32 * 1024
_MAX_PAYLOAD_BYTES = 160 * 1024
_MAX_CHAIN_CERTS = 8
_MAX_CERT_CHARS = 16 * 1024

_JWS_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "RS256": hashes.SHA256,
    "RS384": hashes.SHA384,
    "RS512": hashes.SHA512,
    "PS256": hashes.SHA256,
    "PS384": hashes.SHA384,
    "PS512": hashes.SHA512,
    "ES256": hashes.SHA256,
    "ES384": hashes.SHA384,
}
_EC_CURVE_FOR_ALG = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1}


def verify_release_token(
    token: str,
    *,
    trust_roots: Sequence[x509.Certificate],
    vault_host: str,
    at_time: datetime | None = None,
) -> dict[str, Any]:
    """Check the JWS signature and its x5c chain to ``trust_roots`` for ``vault_host``.

    Returns the payload as a JSON object; nothing in it is trusted before this returns.
    """
    if not isinstance(token, str) or not 0 < len(token) <= _MAX_TOKEN_CHARS:
        raise ReleaseTokenFormatError(
            f"release token must be a string of 1..{_MAX_TOKEN_CHARS} chars"
        )
    parts = token.split(".")
    if len(parts) != 3:
        raise ReleaseTokenFormatError(f"release token has {len(parts)} parts, a compact JWS has 3")
    header_b64, payload_b64, signature_b64 = parts
    header = json_object(b64url_decode(header_b64, "JWS header", _MAX_HEADER_BYTES), "JWS header")
    payload_bytes = b64url_decode(payload_b64, "JWS payload", _MAX_PAYLOAD_BYTES)
    signature = b64url_decode(signature_b64, "JWS signature", 1024)
    alg = header.get("alg")
    if alg not in _JWS_HASHES:
        raise ReleaseTokenFormatError(
            f"JWS header alg {alg!r} is not one of {', '.join(_JWS_HASHES)}"
        )
    if "crit" in header:
        raise ReleaseTokenFormatError("JWS header 'crit' is not supported")
    chain = _certificate_chain(header.get("x5c"))
    _check_thumbprint(header, chain[0])
    _verify_jws_signature(alg, chain[0], f"{header_b64}.{payload_b64}".encode("ascii"), signature)
    _verify_chain(chain, trust_roots, vault_host, at_time)
    return json_object(payload_bytes, "JWS payload")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, label: str, max_bytes: int) -> bytes:
    if not isinstance(text, str) or len(text) > (max_bytes * 4) // 3 + 4:
        raise ReleaseTokenFormatError(f"{label} is over {max_bytes} bytes")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ReleaseTokenFormatError(f"{label} is not base64url") from None


def json_object(data: bytes, label: str) -> dict[str, Any]:
    """A bounded, duplicate-free JSON object (keybroker.attestation.json_bounded)."""
    document = load_bounded_json(
        data, what=label, max_bytes=_MAX_JSON_BYTES, max_depth=16, error=ReleaseTokenFormatError
    )
    if not isinstance(document, dict):
        raise ReleaseTokenFormatError(f"{label} is not a JSON object")
    return document


def _certificate_chain(x5c: Any) -> list[x509.Certificate]:
    if not isinstance(x5c, list) or not 0 < len(x5c) <= _MAX_CHAIN_CERTS:
        raise ReleaseTokenFormatError(
            f"JWS header x5c must list 1..{_MAX_CHAIN_CERTS} certificates"
        )
    chain = []
    for position, encoded in enumerate(x5c):
        if not isinstance(encoded, str) or len(encoded) > _MAX_CERT_CHARS:
            raise ReleaseTokenFormatError(
                f"JWS header x5c[{position}] must be a bounded base64 string"
            )
        try:
            chain.append(x509.load_der_x509_certificate(base64.b64decode(encoded, validate=True)))
        except (binascii.Error, ValueError):
            raise ReleaseTokenFormatError(
                f"JWS header x5c[{position}] is not a DER certificate"
            ) from None
    return chain


def _check_thumbprint(header: Mapping[str, Any], leaf: x509.Certificate) -> None:
    thumbprint = header.get("x5t#S256")
    if thumbprint is None:
        return
    if not isinstance(thumbprint, str):
        raise ReleaseTokenFormatError("JWS header x5t#S256 must be a string")
    actual = b64url(hashlib.sha256(leaf.public_bytes(Encoding.DER)).digest())
    if not hmac.compare_digest(actual.encode("ascii"), thumbprint.encode("ascii", "replace")):
        raise ReleaseTokenSignatureError("JWS header x5t#S256 does not match x5c[0]")


def _verify_jws_signature(
    alg: str, leaf: x509.Certificate, signed: bytes, signature: bytes
) -> None:
    hash_algorithm = _JWS_HASHES[alg]()
    public_key = leaf.public_key()
    try:
        if alg.startswith("RS") and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, signed, padding.PKCS1v15(), hash_algorithm)
        elif alg.startswith("PS") and isinstance(public_key, rsa.RSAPublicKey):
            pss = padding.PSS(
                mgf=padding.MGF1(hash_algorithm), salt_length=hash_algorithm.digest_size
            )
            public_key.verify(signature, signed, pss, hash_algorithm)
        elif (
            alg.startswith("ES")
            and isinstance(public_key, ec.EllipticCurvePublicKey)
            and isinstance(public_key.curve, _EC_CURVE_FOR_ALG[alg])
        ):
            half = len(signature) // 2
            if len(signature) != 2 * ((public_key.curve.key_size + 7) // 8):
                raise InvalidSignature
            der = encode_dss_signature(
                int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
            )
            public_key.verify(der, signed, ec.ECDSA(hash_algorithm))
        else:
            raise ReleaseTokenSignatureError(f"JWS alg {alg} does not fit the x5c[0] key type")
    except InvalidSignature:
        raise ReleaseTokenSignatureError("JWS signature does not verify with x5c[0]") from None


def _verify_chain(
    chain: list[x509.Certificate],
    trust_roots: Sequence[x509.Certificate],
    vault_host: str,
    at_time: datetime | None,
) -> None:
    if not trust_roots:
        raise ReleaseTokenSignatureError("no trust roots given for the vault's signing certificate")
    host = vault_host.lower().split(":", 1)[0] if vault_host.count(":") <= 1 else vault_host
    try:
        subject: x509.verification.Subject = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    builder = PolicyBuilder().store(Store(list(trust_roots)))
    if at_time is not None:
        builder = builder.time(at_time)
    try:
        builder.build_server_verifier(subject).verify(chain[0], chain[1:])
    except VerificationError as exc:
        raise ReleaseTokenSignatureError(
            f"vault signing certificate does not chain to the trust roots for {host}: {exc}"
        ) from None
