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
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


def _builtin_sha512() -> Callable[..., Any] | None:
    """CPython's own SHA-512 (no OpenSSL), where this build has it."""
    for module in ("_sha2", "_sha512"):  # 3.12+ (HACL*), 3.11
        try:
            return importlib.import_module(module).sha512
        except (ImportError, AttributeError):
            continue
    return None


_SHA512 = _builtin_sha512()
_BLOCK = 128  # SHA-512 block size: HMAC pads its key to this
_IPAD = int.from_bytes(b"\x36" * _BLOCK, "big")
_OPAD = int.from_bytes(b"\x5c" * _BLOCK, "big")


def _hkdf_sha512_96_openssl(secret: bytes, salt: bytes, info: bytes) -> bytes:
    prk = hmac.digest(salt, secret, "sha512")
    first = hmac.digest(prk, info + b"\x01", "sha512")
    second = hmac.digest(prk, first + info + b"\x02", "sha512")
    return (first + second)[:_OKM_LENGTH]


def hkdf_sha512_96(secret: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA-512 (RFC 5869) with a 96-byte output, as three HMACs (RFC 2104).

    Extract ``PRK = HMAC(salt, secret)``, expand ``T1 = HMAC(PRK, info || 1)``,
    ``T2 = HMAC(PRK, T1 || info || 2)``, output ``(T1 || T2)[:96]``. The same bytes as
    ``cryptography``'s HKDF (a test compares them) at a fraction of its cost per record: the
    HKDF object's setup, not the hashing, was the larger part of a record open. The HMACs
    are written out over CPython's built-in SHA-512 where it has one: with OpenSSL 3 each
    one-shot ``hmac.digest`` fetches its digest again, which cost more than the hashing of
    these one- and two-block messages. The padded keys are XORed as integers (no table
    indexed by key bytes), and both expand HMACs share the PRK's inner state.
    """
    sha512 = _SHA512
    if sha512 is None or len(salt) > _BLOCK:
        return _hkdf_sha512_96_openssl(secret, salt, info)
    key = int.from_bytes(salt, "big") << (8 * (_BLOCK - len(salt)))
    inner = sha512((key ^ _IPAD).to_bytes(_BLOCK, "big"))
    inner.update(secret)
    prk = sha512((key ^ _OPAD).to_bytes(_BLOCK, "big") + inner.digest()).digest()
    key = int.from_bytes(prk, "big") << (8 * (_BLOCK - len(prk)))
    outer_pad = (key ^ _OPAD).to_bytes(_BLOCK, "big")
    inner = sha512((key ^ _IPAD).to_bytes(_BLOCK, "big"))
    second_inner = inner.copy()
    inner.update(info + b"\x01")
    first = sha512(outer_pad + inner.digest()).digest()
    second_inner.update(first + info + b"\x02")
    second = sha512(outer_pad + second_inner.digest()).digest()
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
