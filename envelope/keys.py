"""Data keys, key references and wrapped keys, plus the AAD that binds a wrapped DEK.

A :class:`DataKey` is a 32-byte DEK held in memory; its only way out is
:meth:`DataKey.secret_bytes`, and its repr never shows the bytes. A :class:`KeyReference`
names a KEK (URI + version); a :class:`WrappedKey` is a DEK wrapped under one, with a
canonical :attr:`WrappedKey.key_id` for caches and audit. :func:`dek_wrap_aad` is the
canonical AAD every KMS backend binds to a wrapped DEK. This module does no wrapping itself
(that is the KMS's job) and no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from envelope._wire import text_to_bytes, u16_prefixed
from envelope.errors import EnvelopeFormatError, EnvelopeLimitError
from envelope.limits import (
    MAX_KEK_URI,
    MAX_KEK_VERSION,
    MAX_PRODUCER_ID,
    MAX_REGION,
    MAX_WRAPPED_KEY,
)

__all__ = [
    "DATA_KEY_LENGTH",
    "DEK_WRAP_AAD_DOMAIN",
    "KEY_ID_DOMAIN",
    "DataKey",
    "KeyReference",
    "WrappedKey",
    "dek_wrap_aad",
]

DATA_KEY_LENGTH = 32
KEY_ID_DOMAIN = b"sealbeam/key-id/v1\x00"
DEK_WRAP_AAD_DOMAIN = b"sealbeam/dek-wrap/v1\x00"


@dataclass(frozen=True)
class KeyReference:
    """A key-encryption key: its URI and version, e.g. ("local://keyring/eu/kek-1", "1")."""

    uri: str
    version: str

    def __post_init__(self) -> None:
        text_to_bytes("kek uri", self.uri, minimum=1, maximum=MAX_KEK_URI)
        text_to_bytes("kek version", self.version, minimum=1, maximum=MAX_KEK_VERSION)


@dataclass(frozen=True)
class WrappedKey:
    """A DEK wrapped under a KEK: the KMS ciphertext and the KEK that produced it."""

    kek: KeyReference
    ciphertext: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.kek, KeyReference):
            raise EnvelopeFormatError(
                f"wrapped key kek must be KeyReference, not {type(self.kek).__name__}"
            )
        if not isinstance(self.ciphertext, (bytes, bytearray, memoryview)):
            raise EnvelopeFormatError(
                f"wrapped key ciphertext must be bytes, not {type(self.ciphertext).__name__}"
            )
        ciphertext = bytes(self.ciphertext)
        if len(ciphertext) > MAX_WRAPPED_KEY:
            raise EnvelopeLimitError(
                f"wrapped key length {len(ciphertext)} exceeds {MAX_WRAPPED_KEY}"
            )
        if not ciphertext:
            raise EnvelopeFormatError("wrapped key is empty")
        object.__setattr__(self, "ciphertext", ciphertext)

    @property
    def key_id(self) -> str:
        """Hex SHA-256 over the canonical (kek uri, kek version, ciphertext); a cache key.

        Encoding: ``KEY_ID_DOMAIN || u16 len || uri || u16 len || version || u16 len ||
        ciphertext`` (UTF-8, big-endian lengths), as in docs/FORMAT.md.
        """
        encoded = b"".join(
            (
                KEY_ID_DOMAIN,
                u16_prefixed(self.kek.uri.encode("utf-8")),
                u16_prefixed(self.kek.version.encode("utf-8")),
                u16_prefixed(self.ciphertext),
            )
        )
        return hashlib.sha256(encoded).hexdigest()


class DataKey:
    """A 32-byte data-encryption key in memory. repr/str never show the bytes.

    ``simulated`` marks keys released under a simulated TEE, so callers can carry that
    fact into audit records; it does not change how the key encrypts.
    """

    __slots__ = ("_key", "_simulated")

    def __init__(self, key: bytes, *, simulated: bool = False) -> None:
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise EnvelopeFormatError(f"data key must be bytes, not {type(key).__name__}")
        raw = bytes(key)
        if len(raw) != DATA_KEY_LENGTH:
            raise EnvelopeFormatError(
                f"data key length {len(raw)}, expected {DATA_KEY_LENGTH}"
            )
        self._key = raw
        self._simulated = bool(simulated)

    @classmethod
    def generate(cls, *, simulated: bool = False) -> DataKey:
        """A fresh random DEK from the operating system's CSPRNG."""
        return cls(os.urandom(DATA_KEY_LENGTH), simulated=simulated)

    @property
    def simulated(self) -> bool:
        return self._simulated

    def secret_bytes(self) -> bytes:
        """The raw key: the only way out, named so that grep finds every use."""
        return self._key

    def __repr__(self) -> str:
        return f"DataKey(<{DATA_KEY_LENGTH} secret bytes>, simulated={self._simulated})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DataKey):
            return NotImplemented
        return hmac.compare_digest(self._key, other._key) and self._simulated == other._simulated

    __hash__ = None  # type: ignore[assignment]  # hashing would expose a key-derived value

    def __copy__(self) -> DataKey:
        return self  # immutable

    def __deepcopy__(self, memo: dict[int, object]) -> DataKey:
        return self

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling is refused so a key cannot leak to disk through a runner's serializer.
        raise TypeError("DataKey cannot be pickled; ship the WrappedKey and unwrap in the TEE")


def dek_wrap_aad(region: str, producer_id: str) -> bytes:
    """The AAD every KMS backend binds to a wrapped DEK.

    ``DEK_WRAP_AAD_DOMAIN || u16 len || region || u16 len || producer_id`` (UTF-8,
    big-endian lengths), so a DEK wrapped for one (region, producer) cannot be unwrapped
    for another.
    """
    region_bytes = text_to_bytes("region", region, minimum=1, maximum=MAX_REGION)
    producer_bytes = text_to_bytes("producer id", producer_id, minimum=1, maximum=MAX_PRODUCER_ID)
    return DEK_WRAP_AAD_DOMAIN + u16_prefixed(region_bytes) + u16_prefixed(producer_bytes)


_KEY_IDS: dict[WrappedKey, str] = {}
_MAX_KEY_IDS = 1024


def memoized_key_id(wrapped: WrappedKey) -> str:
    """``wrapped.key_id`` (a SHA-256), computed once per distinct wrapped DEK: envelopes
    sealed under one DEK carry equal key blocks, so most lookups are one dict hit. The memo
    holds public key blocks only, and is emptied whole when it reaches its bound."""
    key_id = _KEY_IDS.get(wrapped)
    if key_id is None:
        if len(_KEY_IDS) >= _MAX_KEY_IDS:
            _KEY_IDS.clear()
        key_id = _KEY_IDS[wrapped] = wrapped.key_id
    return key_id
