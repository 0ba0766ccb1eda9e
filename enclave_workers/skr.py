"""Worker side of Azure Secure Key Release (SKR): open the key that Key Vault released to this TEE.

The worker puts the public half of a `RuntimeWrappingKey` into the runtime data of its attestation;
Microsoft Azure Attestation copies it into the MAA token (``x-ms-runtime.keys``); Key Vault checks
the token against the key's release policy and answers with a JWS whose payload carries the key
wrapped to that runtime key. `open_release_token` then, inside the TEE:

1. checks the JWS shape and sizes, and its signature with the leaf certificate of ``x5c``;
2. checks that ``x5c`` chains to the given trust roots and names the vault's host;
3. checks that the released key is the one asked for (``kid``);
4. unwraps ``key_hsm``: for ``CKM_RSA_AES_KEY_WRAP`` / ``RSA_AES_KEY_WRAP_256`` /
   ``RSA_AES_KEY_WRAP_384`` the first modulus-length bytes are RSA-OAEP (SHA-1 / SHA-256 /
   SHA-384, as Microsoft's confidential-sidecar-containers reads them) of an ephemeral AES key, the
   rest is AES key wrap with padding (RFC 5649) of the target key; for ``RSA-OAEP-256`` the whole
   ciphertext is RSA-OAEP-SHA-256 of the target key.

The result is a `ReleasedKey`: raw bytes for ``oct`` keys, PKCS#8 DER for RSA/EC keys. Nothing here
sends the key anywhere, logs it, or writes it to disk; the runtime private key cannot be exported.

What it does not do: call Key Vault (`keybroker.kms.azure_kv.release_key_to_tee` does), obtain the
MAA token, or parse the released key's material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

__all__ = [
    "RUNTIME_KEY_ID",
    "ReleaseTokenFormatError",
    "ReleaseTokenSignatureError",
    "ReleasedKey",
    "ReleasedKeyMismatchError",
    "ReleasedKeyUnwrapError",
    "RuntimeWrappingKey",
    "SecureKeyReleaseError",
    "open_release_token",
    "unwrap_key_hsm",
    "unwrap_released_key",
    "verify_release_token",
]

RUNTIME_KEY_ID = "TpmEphemeralEncryptionKey"
_MAX_TOKEN_CHARS = 256 * 1024
_MAX_HEADER_BYTES = 32 * 1024
_MAX_PAYLOAD_BYTES = 160 * 1024
_MAX_CHAIN_CERTS = 8
_MAX_CERT_CHARS = 16 * 1024
_MAX_KEY_HSM_CHARS = 64 * 1024
_MAX_RELEASED_KEY_BYTES = 16 * 1024
_MIN_RUNTIME_KEY_BITS = 2048
_MAX_RUNTIME_KEY_BITS = 8192

_OAEP_HASH_FOR_ENC: dict[str, type[hashes.HashAlgorithm]] = {
    "CKM_RSA_AES_KEY_WRAP": hashes.SHA1,
    "RSA_AES_KEY_WRAP_256": hashes.SHA256,
    "RSA_AES_KEY_WRAP_384": hashes.SHA384,
}
_PLAIN_OAEP_ENC = "RSA-OAEP-256"
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


class SecureKeyReleaseError(Exception):
    """Base of every failure while opening a Secure Key Release token."""


class ReleaseTokenFormatError(SecureKeyReleaseError):
    """The release token is malformed or over a size bound; the message names the field."""


class ReleaseTokenSignatureError(SecureKeyReleaseError):
    """The token's signature or its certificate chain does not verify against the trust roots."""


class ReleasedKeyMismatchError(SecureKeyReleaseError):
    """The token releases a different key than the one this worker asked for."""


class ReleasedKeyUnwrapError(SecureKeyReleaseError):
    """The released key could not be unwrapped with this TEE's runtime key (one fixed message)."""

    def __init__(self) -> None:
        super().__init__("released key could not be unwrapped with this TEE's runtime key")


class RuntimeWrappingKey:
    """The TEE's ephemeral RSA key; only its public JWK leaves the TEE (in the attestation)."""

    def __init__(self, private_key: rsa.RSAPrivateKey, kid: str = RUNTIME_KEY_ID) -> None:
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise TypeError("runtime wrapping key must be an RSA private key")
        if not _MIN_RUNTIME_KEY_BITS <= private_key.key_size <= _MAX_RUNTIME_KEY_BITS:
            raise ValueError(
                f"runtime wrapping key must have "
                f"{_MIN_RUNTIME_KEY_BITS}-{_MAX_RUNTIME_KEY_BITS} bits"
            )
        self._private_key = private_key
        self.kid = kid

    @classmethod
    def generate(cls, key_size: int = 3072, kid: str = RUNTIME_KEY_ID) -> RuntimeWrappingKey:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=key_size), kid)

    @property
    def modulus_bytes(self) -> int:
        return (self._private_key.key_size + 7) // 8

    def public_key(self) -> rsa.RSAPublicKey:
        return self._private_key.public_key()

    def public_jwk(self) -> dict[str, Any]:
        """The JWK that goes into the attestation runtime data (``x-ms-runtime.keys``)."""
        numbers = self._private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "kid": self.kid,
            "key_ops": ["encrypt"],
            "e": _b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
            "n": _b64url(numbers.n.to_bytes(self.modulus_bytes, "big")),
        }

    def public_jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk()]}

    def decrypt_oaep(self, ciphertext: bytes, hash_algorithm: hashes.HashAlgorithm) -> bytes:
        """RSA-OAEP decryption; any failure is the one fixed ReleasedKeyUnwrapError."""
        if len(ciphertext) != self.modulus_bytes:
            raise ReleasedKeyUnwrapError()
        try:
            return self._private_key.decrypt(
                ciphertext,
                padding.OAEP(
                    mgf=padding.MGF1(hash_algorithm), algorithm=hash_algorithm, label=None
                ),
            )
        except ValueError:
            raise ReleasedKeyUnwrapError() from None

    def __repr__(self) -> str:
        return f"RuntimeWrappingKey(kid={self.kid!r}, bits={self._private_key.key_size})"

    def __reduce__(self) -> Any:
        raise TypeError("a runtime wrapping key never leaves the TEE (not picklable)")


@dataclass(frozen=True, repr=False)
class ReleasedKey:
    """A key released by Key Vault: raw bytes for oct keys, PKCS#8 DER for RSA/EC keys."""

    key_id: str
    key_type: str
    _material: bytes = field(repr=False)

    def secret_bytes(self) -> bytes:
        """The only way out; named so that grep finds every use."""
        return self._material

    def __repr__(self) -> str:
        return f"ReleasedKey(key_id={self.key_id!r}, key_type={self.key_type!r}, material=<hidden>)"


def open_release_token(
    token: str,
    runtime_key: RuntimeWrappingKey,
    *,
    key_id: str,
    trust_roots: Sequence[x509.Certificate],
    at_time: datetime | None = None,
) -> ReleasedKey:
    """Verify the vault's release token and unwrap the key it carries, inside the TEE.

    ``key_id`` is the key asked for, ``https://VAULT/keys/NAME[/VERSION]``; its host must be the
    name in the signing certificate. ``trust_roots`` are the CA certificates trusted to certify the
    vault (the public roots that sign Azure's vault certificates, or a test CA).
    """
    expected = _parse_key_id(key_id, "key_id")
    payload = verify_release_token(
        token, trust_roots=trust_roots, vault_host=expected.host, at_time=at_time
    )
    return unwrap_released_key(payload, runtime_key, key_id=key_id)


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
    header = _json_object(_b64url_decode(header_b64, "JWS header", _MAX_HEADER_BYTES), "JWS header")
    payload_bytes = _b64url_decode(payload_b64, "JWS payload", _MAX_PAYLOAD_BYTES)
    signature = _b64url_decode(signature_b64, "JWS signature", 1024)
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
    return _json_object(payload_bytes, "JWS payload")


def unwrap_released_key(
    payload: Mapping[str, Any], runtime_key: RuntimeWrappingKey, *, key_id: str
) -> ReleasedKey:
    """Check that the verified payload releases ``key_id`` and unwrap its ``key_hsm``."""
    expected = _parse_key_id(key_id, "key_id")
    request = _mapping_at(payload, "request", "payload")
    released = _mapping_at(
        _mapping_at(_mapping_at(payload, "response", "payload"), "key", "response"),
        "key",
        "response.key",
    )
    released_kid = released.get("kid")
    if not isinstance(released_kid, str):
        raise ReleaseTokenFormatError("response.key.key.kid must be a string")
    for label, kid in (("response.key.key.kid", released_kid), ("request.kid", request.get("kid"))):
        if kid is None and label == "request.kid":
            continue
        if not isinstance(kid, str) or not expected.matches(_parse_key_id(kid, label)):
            raise ReleasedKeyMismatchError(f"{label} {kid!r} is not the requested key {key_id!r}")
    key_type = released.get("kty")
    if not isinstance(key_type, str) or not 0 < len(key_type) <= 16:
        raise ReleaseTokenFormatError("response.key.key.kty must be a short string")
    key_hsm_text = released.get("key_hsm")
    if not isinstance(key_hsm_text, str) or not 0 < len(key_hsm_text) <= _MAX_KEY_HSM_CHARS:
        raise ReleaseTokenFormatError("response.key.key.key_hsm must be a bounded base64url string")
    key_hsm = _json_object(_b64url_decode(key_hsm_text, "key_hsm", _MAX_KEY_HSM_CHARS), "key_hsm")
    enc = request.get("enc")
    header_enc = (
        key_hsm.get("header", {}).get("enc") if isinstance(key_hsm.get("header"), dict) else None
    )
    if enc is None:
        enc = header_enc
    elif header_enc is not None and header_enc != enc:
        raise ReleaseTokenFormatError(
            f"request.enc {enc!r} differs from key_hsm.header.enc {header_enc!r}"
        )
    ciphertext_text = key_hsm.get("ciphertext")
    if not isinstance(ciphertext_text, str):
        raise ReleaseTokenFormatError("key_hsm.ciphertext must be a base64url string")
    ciphertext = _b64url_decode(ciphertext_text, "key_hsm.ciphertext", _MAX_KEY_HSM_CHARS)
    material = unwrap_key_hsm(enc, ciphertext, runtime_key)
    return ReleasedKey(key_id=released_kid, key_type=key_type, _material=material)


def unwrap_key_hsm(enc: Any, ciphertext: bytes, runtime_key: RuntimeWrappingKey) -> bytes:
    """Unwrap the ``key_hsm`` ciphertext for export algorithm ``enc`` with the runtime key."""
    modulus = runtime_key.modulus_bytes
    if enc == _PLAIN_OAEP_ENC:
        material = runtime_key.decrypt_oaep(ciphertext, hashes.SHA256())
    elif enc in _OAEP_HASH_FOR_ENC:
        wrapped_target = ciphertext[modulus:]
        if len(ciphertext) <= modulus or len(wrapped_target) < 16 or len(wrapped_target) % 8:
            raise ReleaseTokenFormatError(
                f"key_hsm.ciphertext of {len(ciphertext)} bytes does not fit a {modulus}-byte RSA "
                "block followed by an RFC 5649 wrapped key"
            )
        ephemeral_aes_key = runtime_key.decrypt_oaep(
            ciphertext[:modulus], _OAEP_HASH_FOR_ENC[enc]()
        )
        if len(ephemeral_aes_key) not in (16, 24, 32):
            raise ReleasedKeyUnwrapError()
        try:
            material = aes_key_unwrap_with_padding(ephemeral_aes_key, wrapped_target)
        except InvalidUnwrap:
            raise ReleasedKeyUnwrapError() from None
    else:
        raise ReleaseTokenFormatError(
            f"export algorithm (enc) {enc!r} is not one of "
            f"{', '.join([*_OAEP_HASH_FOR_ENC, _PLAIN_OAEP_ENC])}"
        )
    if not 0 < len(material) <= _MAX_RELEASED_KEY_BYTES:
        raise ReleaseTokenFormatError(f"released key of {len(material)} bytes is out of bounds")
    return material


# -- helpers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _KeyId:
    host: str
    name: str
    version: str | None

    def matches(self, other: _KeyId) -> bool:
        if self.host != other.host or self.name != other.name:
            return False
        return self.version is None or self.version == other.version


def _parse_key_id(key_id: Any, label: str) -> _KeyId:
    if not isinstance(key_id, str) or len(key_id) > 512:
        raise ReleaseTokenFormatError(f"{label} must be a key identifier string")
    parts = urlsplit(key_id)
    segments = [segment for segment in parts.path.split("/") if segment]
    if (
        parts.scheme != "https"
        or not parts.hostname
        or len(segments) not in (2, 3)
        or segments[0] != "keys"
    ):
        raise ReleaseTokenFormatError(
            f"{label} {key_id!r} is not https://VAULT/keys/NAME[/VERSION]"
        )
    return _KeyId(
        host=parts.hostname.lower(),
        name=segments[1],
        version=segments[2] if len(segments) == 3 else None,
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str, label: str, max_bytes: int) -> bytes:
    if not isinstance(text, str) or len(text) > (max_bytes * 4) // 3 + 4:
        raise ReleaseTokenFormatError(f"{label} is over {max_bytes} bytes")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ReleaseTokenFormatError(f"{label} is not base64url") from None


def _json_object(data: bytes, label: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise ReleaseTokenFormatError(f"{label} is not JSON") from None
    if not isinstance(document, dict):
        raise ReleaseTokenFormatError(f"{label} is not a JSON object")
    return document


def _mapping_at(document: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = document.get(key) if isinstance(document, Mapping) else None
    if not isinstance(value, Mapping):
        raise ReleaseTokenFormatError(f"{where}.{key} must be a JSON object")
    return value


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
    actual = _b64url(hashlib.sha256(leaf.public_bytes(Encoding.DER)).digest())
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
