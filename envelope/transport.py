"""HPKE key transport to a TEE, and the report_data binding that ties it to attestation.

A TEE holds a :class:`TeeKeyPair` (hybrid post-quantum ML-KEM-768 + X25519, RFC 9180 HPKE
with HKDF-SHA256 and AES-256-GCM, from ``cryptography``). The broker seals a DEK to the
TEE's public key with :func:`seal_to_tee`, under an ``info`` from :func:`release_info`
that says what the key is for; only the TEE opens it. A sealer that seals many keys to one
TEE (the broker, for each release of a session) parses the key once with
:meth:`TeePublicKey.from_bytes` and passes that instead of the bytes. The TEE proves which
public key it holds by putting :func:`report_data_binding` (nonce, public key) into its
attestation report. Encodings are in docs/FORMAT.md section 5. This module does no
attestation and no I/O; the private key never leaves the object.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from envelope._wire import as_byte_view, text_to_bytes, u16_prefixed
from envelope.errors import KEY_TRANSPORT_FAILED, EnvelopeFormatError, KeyTransportError

__all__ = [
    "HPKE_ENC_LENGTH",
    "MAX_TRANSPORT_INFO",
    "MAX_TRANSPORT_SECRET",
    "RELEASE_INFO_DOMAIN",
    "REPORT_DATA_DOMAIN",
    "TEE_KEY_ALGORITHM",
    "TEE_PUBLIC_KEY_LENGTH",
    "TeeKeyPair",
    "TeePublicKey",
    "release_info",
    "report_data_binding",
    "seal_to_tee",
]

TEE_KEY_ALGORITHM = "MLKEM768-X25519"
MLKEM768_PUBLIC_KEY_LENGTH = 1184
X25519_PUBLIC_KEY_LENGTH = 32
TEE_PUBLIC_KEY_LENGTH = MLKEM768_PUBLIC_KEY_LENGTH + X25519_PUBLIC_KEY_LENGTH  # 1216
HPKE_ENC_LENGTH = 1120  # ML-KEM-768 ciphertext (1088) || X25519 ephemeral public key (32)
HPKE_TAG_LENGTH = 16
MAX_TRANSPORT_SECRET = 1 << 16  # 64 KiB: DEKs are 32 bytes, named keys small
MAX_TRANSPORT_INFO = 1024
MIN_NONCE_LENGTH = 16
MAX_NONCE_LENGTH = 256
MAX_RELEASE_PURPOSE = 128
MAX_RELEASE_KEY_ID = 256
REPORT_DATA_DOMAIN = b"sealbeam/report-data/v1\x00"
MAX_BOUND_KEY_LENGTH = 4096
_BOUND_KEY_LABEL = re.compile(r"[a-z0-9-]{1,32}")
RELEASE_INFO_DOMAIN = b"sealbeam/key-release/v1\x00"

_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


class TeeKeyPair:
    """The TEE's hybrid HPKE key pair; repr shows only a fingerprint of the public key."""

    __slots__ = ("_private_key", "_public_bytes")

    def __init__(
        self, mlkem_key: mlkem.MLKEM768PrivateKey, x25519_key: x25519.X25519PrivateKey
    ) -> None:
        if not isinstance(mlkem_key, mlkem.MLKEM768PrivateKey):
            raise KeyTransportError("mlkem_key must be an ML-KEM-768 private key")
        if not isinstance(x25519_key, x25519.X25519PrivateKey):
            raise KeyTransportError("x25519_key must be an X25519 private key")
        self._private_key = hpke.MLKEM768X25519PrivateKey(mlkem_key, x25519_key)
        self._public_bytes = (
            mlkem_key.public_key().public_bytes_raw() + x25519_key.public_key().public_bytes_raw()
        )

    @classmethod
    def generate(cls) -> TeeKeyPair:
        return cls(mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate())

    @classmethod
    def _from_seeds(cls, mlkem_seed: bytes, x25519_private: bytes) -> TeeKeyPair:
        """A fixed key pair for known-answer vectors only (64-byte seed, 32-byte scalar)."""
        return cls(
            mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed),
            x25519.X25519PrivateKey.from_private_bytes(x25519_private),
        )

    def public_bytes(self) -> bytes:
        """ML-KEM-768 public key (1184 B) || X25519 public key (32 B)."""
        return self._public_bytes

    def open(self, sealed: bytes, info: bytes) -> bytes:
        """The secret sealed by :func:`seal_to_tee` to this key under the same ``info``."""
        sealed_view = as_byte_view(sealed)
        info_bytes = _checked_info(info)
        minimum = HPKE_ENC_LENGTH + HPKE_TAG_LENGTH
        maximum = minimum + MAX_TRANSPORT_SECRET
        if not minimum <= len(sealed_view) <= maximum:
            raise KeyTransportError(
                f"sealed key length {len(sealed_view)} is outside {minimum}..{maximum}"
            )
        try:
            return _SUITE.decrypt(sealed_view, self._private_key, info=info_bytes)
        except (InvalidTag, ValueError):
            raise KeyTransportError(KEY_TRANSPORT_FAILED) from None

    def __repr__(self) -> str:
        fingerprint = hashlib.sha256(self._public_bytes).hexdigest()[:16]
        return f"TeeKeyPair({TEE_KEY_ALGORITHM}, public sha256 {fingerprint}...)"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("TeeKeyPair cannot be pickled; it lives only inside the TEE")


class TeePublicKey:
    """A TEE's public key, checked and parsed once (the raw bytes stay in ``raw``).

    Why: parsing the ML-KEM-768 key and its first use in HPKE cost about as much as the
    seal itself; a caller sealing several keys to one TEE keeps this object instead.
    """

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes, key: hpke.MLKEM768X25519PublicKey) -> None:
        self.raw = raw
        self._key = key

    @classmethod
    def from_bytes(cls, tee_public_key: bytes) -> TeePublicKey:
        """KeyTransportError when the bytes are not an ML-KEM-768 + X25519 public key."""
        key_bytes = _checked_public_bytes(tee_public_key)
        return cls(key_bytes, _parse_public_key(key_bytes))

    def __repr__(self) -> str:
        fingerprint = hashlib.sha256(self.raw).hexdigest()[:16]
        return f"TeePublicKey({TEE_KEY_ALGORITHM}, sha256 {fingerprint}...)"


def seal_to_tee(tee_public_key: bytes | TeePublicKey, secret: bytes, info: bytes) -> bytes:
    """HPKE-seal ``secret`` to a TEE public key: ``enc (1120 B) || ciphertext || tag``.

    ``tee_public_key`` is the key's bytes or, parsed once, a :class:`TeePublicKey`.
    """
    if isinstance(tee_public_key, TeePublicKey):
        public_key = tee_public_key._key
    else:
        public_key = _parse_public_key(_checked_public_bytes(tee_public_key))
    secret_view = as_byte_view(secret)
    if len(secret_view) > MAX_TRANSPORT_SECRET:
        raise KeyTransportError(
            f"secret length {len(secret_view)} exceeds {MAX_TRANSPORT_SECRET}"
        )
    try:
        return _SUITE.encrypt(secret_view, public_key, info=_checked_info(info))
    except ValueError:
        raise KeyTransportError("TEE public key was rejected by HPKE") from None


def report_data_binding(nonce: bytes, tee_public_key: bytes, *,
                        bound_keys: Mapping[str, bytes] | None = None) -> bytes:
    """The 64 bytes a TEE puts in report_data to bind a verifier's nonce to its public keys.

    ``SHA-512(REPORT_DATA_DOMAIN || u32 BE len || nonce || u32 BE len || public key
    [|| for each bound key, by label: u32 BE len || label || u32 BE len || key])``.
    ``bound_keys`` extends the one binding with further keys the TEE holds (e.g. a pool
    worker's channel key, label ``pool-channel``); without them the bytes are those of v1.
    """
    nonce_bytes = bytes(as_byte_view(nonce))
    if not MIN_NONCE_LENGTH <= len(nonce_bytes) <= MAX_NONCE_LENGTH:
        raise KeyTransportError(
            f"nonce length {len(nonce_bytes)} is outside {MIN_NONCE_LENGTH}..{MAX_NONCE_LENGTH}"
        )
    key_bytes = _checked_public_bytes(tee_public_key)
    digest = hashlib.sha512()
    digest.update(REPORT_DATA_DOMAIN)
    digest.update(len(nonce_bytes).to_bytes(4, "big") + nonce_bytes)
    digest.update(len(key_bytes).to_bytes(4, "big") + key_bytes)
    for label, bound in sorted((bound_keys or {}).items()):
        label_bytes = _bound_key_label(label)
        bound_bytes = bytes(as_byte_view(bound))
        if not 1 <= len(bound_bytes) <= MAX_BOUND_KEY_LENGTH:
            raise KeyTransportError(f"bound key {label!r} length {len(bound_bytes)} is outside "
                                    f"1..{MAX_BOUND_KEY_LENGTH}")
        digest.update(len(label_bytes).to_bytes(4, "big") + label_bytes)
        digest.update(len(bound_bytes).to_bytes(4, "big") + bound_bytes)
    return digest.digest()


def _bound_key_label(label: str) -> bytes:
    if not isinstance(label, str) or not _BOUND_KEY_LABEL.fullmatch(label):
        raise KeyTransportError(f"bound key label {label!r} is not 1..32 of [a-z0-9-]")
    return label.encode("ascii")


def release_info(purpose: str, key_id: str) -> bytes:
    """The HPKE ``info`` that binds a sealed key to what it is for and which key it is.

    ``RELEASE_INFO_DOMAIN || u16 BE len || purpose || u16 BE len || key_id`` (UTF-8).
    """
    purpose_bytes = _transport_text("purpose", purpose, MAX_RELEASE_PURPOSE)
    key_id_bytes = _transport_text("key id", key_id, MAX_RELEASE_KEY_ID)
    return RELEASE_INFO_DOMAIN + u16_prefixed(purpose_bytes) + u16_prefixed(key_id_bytes)


def _transport_text(field: str, value: str, maximum: int) -> bytes:
    try:
        return text_to_bytes(field, value, minimum=1, maximum=maximum)
    except EnvelopeFormatError as error:
        raise KeyTransportError(str(error)) from None


def _checked_info(info: bytes) -> bytes:
    info_bytes = bytes(as_byte_view(info))
    if len(info_bytes) > MAX_TRANSPORT_INFO:
        raise KeyTransportError(f"info length {len(info_bytes)} exceeds {MAX_TRANSPORT_INFO}")
    return info_bytes


def _checked_public_bytes(tee_public_key: bytes) -> bytes:
    key_bytes = bytes(as_byte_view(tee_public_key))
    if len(key_bytes) != TEE_PUBLIC_KEY_LENGTH:
        raise KeyTransportError(
            f"TEE public key length {len(key_bytes)}, expected {TEE_PUBLIC_KEY_LENGTH}"
        )
    return key_bytes


def _parse_public_key(key_bytes: bytes) -> hpke.MLKEM768X25519PublicKey:
    try:
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(key_bytes[:MLKEM768_PUBLIC_KEY_LENGTH]),
            x25519.X25519PublicKey.from_public_bytes(key_bytes[MLKEM768_PUBLIC_KEY_LENGTH:]),
        )
    except ValueError:
        raise KeyTransportError("TEE public key is not a valid ML-KEM-768 + X25519 key") from None
