"""The attested channel between a Beam worker and a pool worker: request keys and frame AEAD.

What it does: a pool worker holds a channel key pair (the same hybrid HPKE key type as a
TEE's key-release key, ``envelope.TeeKeyPair``) and binds its public key into the evidence
it shows clients (``channel_binding``: the one report_data binding of envelope, extended with
the bound key ``pool-channel``). For each request the client draws a fresh 32-byte request
secret and HPKE-seals it to that key (``seal_request_secret``); both sides derive two
AES-256-GCM keys from it (HKDF-SHA256), one per direction. Every frame of the request and of
the response is sealed under its direction's key with its index as nonce and associated
data, so frames cannot be reordered, dropped or moved between directions; only the holder
of the channel private key can read a request, and only it can write a response the client
accepts.

What it does not: no I/O, no attestation (the client verifies evidence in ``transforms``),
no retry. Keys live in memory only.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from envelope import KeyTransportError, TeeKeyPair, report_data_binding, seal_to_tee

__all__ = [
    "CHANNEL_DOMAIN",
    "POOL_CHANNEL_LABEL",
    "ChannelError",
    "ChannelKeys",
    "FrameCipher",
    "RequestKeys",
    "channel_binding",
    "seal_request_secret",
]

CHANNEL_DOMAIN = b"sealbeam/pool-channel/v1\x00"
POOL_CHANNEL_LABEL = "pool-channel"
REQUEST_SECRET_LENGTH = 32
REQUEST = b"request"
RESPONSE = b"response"
_TAG_LENGTH = 16


class ChannelError(Exception):
    """A frame or request secret that does not open (one uniform message, no detail)."""


def channel_binding(nonce: bytes, channel_public_key: bytes) -> bytes:
    """report_data of a pool worker's evidence for a client's ``nonce``.

    The channel key is both the HPKE key of the binding and its bound ``pool-channel`` key,
    so evidence made for a key release (no bound key) never passes as a channel proof.
    """
    return report_data_binding(nonce, channel_public_key,
                               bound_keys={POOL_CHANNEL_LABEL: channel_public_key})


class FrameCipher:
    """AES-256-GCM over the frames of one direction; the frame index is nonce and AAD."""

    __slots__ = ("_aead", "_direction")

    def __init__(self, key: bytes, direction: bytes) -> None:
        self._aead = AESGCM(key)
        self._direction = direction

    def _nonce_and_aad(self, index: int) -> tuple[bytes, bytes]:
        if not 0 <= index < 1 << 64:
            raise ChannelError("frame index out of range")
        counter = index.to_bytes(8, "big")
        return b"\x00\x00\x00\x00" + counter, CHANNEL_DOMAIN + self._direction + counter

    def seal(self, index: int, plaintext: bytes) -> bytes:
        nonce, aad = self._nonce_and_aad(index)
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, index: int, sealed: bytes) -> bytes:
        nonce, aad = self._nonce_and_aad(index)
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise ChannelError("channel frame failed authentication") from None

    @staticmethod
    def sealed_length(plaintext_length: int) -> int:
        return plaintext_length + _TAG_LENGTH


class RequestKeys:
    """The two frame ciphers of one request, derived from its request secret."""

    __slots__ = ("request", "response")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != REQUEST_SECRET_LENGTH:
            raise ChannelError("channel request secret failed authentication")
        self.request = FrameCipher(_derive(secret, REQUEST), REQUEST)
        self.response = FrameCipher(_derive(secret, RESPONSE), RESPONSE)


def _derive(secret: bytes, direction: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=CHANNEL_DOMAIN + direction).derive(secret)


def seal_request_secret(channel_public_key: bytes) -> tuple[bytes, RequestKeys]:
    """Client side: a fresh request secret sealed to the pool's channel key, and its keys."""
    secret = os.urandom(REQUEST_SECRET_LENGTH)
    sealed = seal_to_tee(channel_public_key, secret, CHANNEL_DOMAIN + REQUEST)
    return sealed, RequestKeys(secret)


class ChannelKeys:
    """Server side: the pool worker's channel key pair, held in memory only."""

    __slots__ = ("_pair",)

    def __init__(self, pair: TeeKeyPair | None = None) -> None:
        self._pair = pair or TeeKeyPair.generate()

    def public_bytes(self) -> bytes:
        return self._pair.public_bytes()

    def open_request(self, sealed_secret: bytes) -> RequestKeys:
        try:
            secret = self._pair.open(sealed_secret, CHANNEL_DOMAIN + REQUEST)
        except KeyTransportError:
            raise ChannelError("channel request secret failed authentication") from None
        return RequestKeys(secret)

    def __repr__(self) -> str:
        return f"ChannelKeys({self._pair!r})"
