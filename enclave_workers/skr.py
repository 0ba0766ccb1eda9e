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
MAA token, or parse the released key's material. The JWS signature and certificate chain are
checked in `enclave_workers.skr_token`, the errors defined in `enclave_workers.skr_errors`; the
names other code imports from here are re-exported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

from enclave_workers.skr_errors import (
    ReleasedKeyMismatchError,
    ReleasedKeyUnwrapError,
    ReleaseTokenFormatError,
    ReleaseTokenSignatureError,
    SecureKeyReleaseError,
)
from enclave_workers.skr_token import b64url, b64url_decode, json_object, verify_release_token

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
            "e": b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
            "n": b64url(numbers.n.to_bytes(self.modulus_bytes, "big")),
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
    key_hsm = json_object(b64url_decode(key_hsm_text, "key_hsm", _MAX_KEY_HSM_CHARS), "key_hsm")
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
    ciphertext = b64url_decode(ciphertext_text, "key_hsm.ciphertext", _MAX_KEY_HSM_CHARS)
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


def _mapping_at(document: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = document.get(key) if isinstance(document, Mapping) else None
    if not isinstance(value, Mapping):
        raise ReleaseTokenFormatError(f"{where}.{key} must be a JSON object")
    return value
