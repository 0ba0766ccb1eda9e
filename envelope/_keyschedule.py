"""Per-envelope key schedule: HKDF-SHA-512 key and commitment, segment nonces and AADs.

From the DEK and the envelope's random 32-byte salt, HKDF-SHA-512 yields 64 bytes: the
first 32 are the AES-256-GCM key, the last 32 the key commitment stored in the header.
Segment ``i`` uses the nonce ``8 zero bytes || u32 BE i`` (unique because the key is unique
per envelope) and the AAD ``header bytes || u32 BE i || u8 final``. This module does no
parsing and raises only :class:`EnvelopeAuthenticationError`.
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from envelope.errors import EnvelopeAuthenticationError
from envelope.keys import DataKey
from envelope.limits import COMMITMENT_LENGTH, MAX_SEGMENT_COUNT

HKDF_INFO_PREFIX = b"sealbeam/envelope/v1\x00"
_AES_KEY_LENGTH = 32
_NONCE_PREFIX = bytes(8)


def hkdf_info(algorithm: int) -> bytes:
    """``"sealbeam/envelope/v1" || 0x00 || u16 BE algorithm id`` (23 bytes)."""
    return HKDF_INFO_PREFIX + algorithm.to_bytes(2, "big")


def derive_envelope_key(data_key: DataKey, salt: bytes, algorithm: int) -> tuple[AESGCM, bytes]:
    """The envelope's AES-256-GCM cipher and its 32-byte key commitment."""
    if not isinstance(data_key, DataKey):
        raise TypeError(f"data_key must be DataKey, not {type(data_key).__name__}")
    okm = HKDF(
        algorithm=hashes.SHA512(),
        length=_AES_KEY_LENGTH + COMMITMENT_LENGTH,
        salt=salt,
        info=hkdf_info(algorithm),
    ).derive(data_key.secret_bytes())
    return AESGCM(okm[:_AES_KEY_LENGTH]), okm[_AES_KEY_LENGTH:]


def opening_cipher(data_key: DataKey, salt: bytes, algorithm: int, commitment: bytes) -> AESGCM:
    """The cipher for opening, after a constant-time check of the stored commitment."""
    cipher, derived_commitment = derive_envelope_key(data_key, salt, algorithm)
    if not hmac.compare_digest(derived_commitment, commitment):
        raise EnvelopeAuthenticationError()
    return cipher


def segment_nonce(index: int) -> bytes:
    """``8 zero bytes || u32 BE index``: never repeats within one envelope's key."""
    if not 0 <= index < MAX_SEGMENT_COUNT:
        raise ValueError(f"segment index {index} out of range")
    return _NONCE_PREFIX + index.to_bytes(4, "big")


def segment_aad(header_bytes: bytes, index: int, final: bool) -> bytes:
    """``header bytes || u32 BE index || u8 final``: binds header, position and the end."""
    return header_bytes + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")
