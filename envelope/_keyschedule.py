"""Per-envelope key schedule: HKDF-SHA-512 keys and commitment, header tag, nonces and AADs.

From the DEK and the envelope's random 32-byte salt, HKDF-SHA-512 yields 96 bytes: the
AES-256-GCM key (0..32), the key commitment stored in the header (32..64) and the header
authentication key (64..96). The header ends with ``HMAC-SHA-256(header key, every header
byte before the tag)``; openers check commitment and tag together, in constant time, before
any decryption. Segment ``i`` uses the nonce ``8 zero bytes || u32 BE i`` (unique because the
key is unique per envelope) and the AAD ``core header bytes || u32 BE i || u8 final``: the
core header leaves out the key block (KEK reference and wrapped DEK), so re-wrapping the DEK
changes the header tag but no payload byte. This module does no parsing and raises only
:class:`EnvelopeAuthenticationError`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from envelope.errors import EnvelopeAuthenticationError
from envelope.keys import DataKey
from envelope.limits import COMMITMENT_LENGTH, MAX_SEGMENT_COUNT

HKDF_INFO_PREFIX = b"sealbeam/envelope/v1\x00"
_AES_KEY_LENGTH = 32
_HEADER_KEY_LENGTH = 32
_OKM_LENGTH = _AES_KEY_LENGTH + COMMITMENT_LENGTH + _HEADER_KEY_LENGTH  # 96
_NONCE_PREFIX = bytes(8)


@dataclass(frozen=True)
class EnvelopeKeys:
    """What HKDF yields for one envelope. ``header_key`` never leaves this package."""

    cipher: AESGCM
    commitment: bytes
    header_key: bytes

    def __repr__(self) -> str:
        return "EnvelopeKeys(<secret>)"


def hkdf_info(algorithm: int) -> bytes:
    """``"sealbeam/envelope/v1" || 0x00 || u16 BE algorithm id`` (23 bytes)."""
    return HKDF_INFO_PREFIX + algorithm.to_bytes(2, "big")


def hkdf_sha512_96(secret: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA-512 (RFC 5869) with a 96-byte output, as three one-shot HMAC calls.

    Extract ``PRK = HMAC(salt, secret)``, expand ``T1 = HMAC(PRK, info || 1)``,
    ``T2 = HMAC(PRK, T1 || info || 2)``, output ``(T1 || T2)[:96]``. The same bytes as
    ``cryptography``'s HKDF (a test compares them) at about half its cost per record: the
    HKDF object's setup, not the hashing, was the larger part of a record open.
    """
    prk = hmac.digest(salt, secret, "sha512")
    first = hmac.digest(prk, info + b"\x01", "sha512")
    second = hmac.digest(prk, first + info + b"\x02", "sha512")
    return (first + second)[:_OKM_LENGTH]


def derive_envelope_keys(data_key: DataKey, salt: bytes, algorithm: int) -> EnvelopeKeys:
    """The envelope's AES-256-GCM cipher, key commitment and header authentication key."""
    if not isinstance(data_key, DataKey):
        raise TypeError(f"data_key must be DataKey, not {type(data_key).__name__}")
    okm = hkdf_sha512_96(data_key.secret_bytes(), bytes(salt), hkdf_info(algorithm))
    commitment_end = _AES_KEY_LENGTH + COMMITMENT_LENGTH
    return EnvelopeKeys(
        cipher=AESGCM(okm[:_AES_KEY_LENGTH]),
        commitment=okm[_AES_KEY_LENGTH:commitment_end],
        header_key=okm[commitment_end:],
    )


def header_tag(header_key: bytes, unauthenticated_header: bytes | memoryview) -> bytes:
    """``HMAC-SHA-256(header_key, header bytes before the tag)`` (32 bytes)."""
    return hmac.new(header_key, unauthenticated_header, hashlib.sha256).digest()


def authenticate_header(
    data_key: DataKey,
    *,
    salt: bytes,
    algorithm: int,
    commitment: bytes,
    unauthenticated_header: bytes | memoryview,
    stored_tag: bytes | memoryview,
) -> EnvelopeKeys:
    """The envelope's keys, after checking the commitment and the header tag.

    Both comparisons are constant time and both always run, so a wrong key and a changed
    header byte take the same path and raise the same uniform error.
    """
    keys = derive_envelope_keys(data_key, salt, algorithm)
    expected_tag = header_tag(keys.header_key, unauthenticated_header)
    commitment_matches = hmac.compare_digest(keys.commitment, bytes(commitment))
    tag_matches = hmac.compare_digest(expected_tag, bytes(stored_tag))
    if not (commitment_matches & tag_matches):
        raise EnvelopeAuthenticationError()
    return keys


def segment_nonce(index: int) -> bytes:
    """``8 zero bytes || u32 BE index``: never repeats within one envelope's key."""
    if not 0 <= index < MAX_SEGMENT_COUNT:
        raise ValueError(f"segment index {index} out of range")
    return _NONCE_PREFIX + index.to_bytes(4, "big")


def segment_aad(core_header: bytes, index: int, final: bool) -> bytes:
    """``core header bytes || u32 BE index || u8 final``: binds everything but the key block."""
    return bytes(core_header) + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")
