"""A pyarrow ``KmsClient`` for Parquet Modular Encryption backed by two plain callables.

What it does: adapts ``wrap(key_bytes, master_key_id) -> bytes`` and
``unwrap(blob, master_key_id) -> bytes`` -- which the pipeline backs with the key broker, and
tests with an in-memory keyring -- to ``pyarrow.parquet.encryption.KmsClient``. Blobs travel
through Parquet's key material as base64 text. Every length is checked before anything is
decoded or returned: the key handed to ``wrap`` (16, 24 or 32 bytes), the blob the callable
returns, the base64 text read back from a file, and the key that ``unwrap`` returns. A callable
that fails, or returns something malformed, raises ``ParquetKmsError`` naming the master key id
and the kind of failure -- never the callable's own message, which could quote key bytes.

What it does not: no key storage, no caching (pyarrow's ``CryptoFactory`` caches KEKs for the
configured lifetime), no broker or Beam imports: the callables arrive from outside.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

import pyarrow.parquet.encryption as pqe

from .errors import FeatureError

WrapKey = Callable[[bytes, str], bytes]
UnwrapKey = Callable[[bytes, str], bytes]
KmsClientFactory = Callable[[pqe.KmsConnectionConfig], pqe.KmsClient]

AES_KEY_LENGTHS = (16, 24, 32)
MAX_MASTER_KEY_ID_CHARS = 256
MAX_WRAPPED_BLOB_BYTES = 16 * 1024
MAX_WRAPPED_TEXT_CHARS = 4 * ((MAX_WRAPPED_BLOB_BYTES + 2) // 3)


class ParquetEncryptionError(FeatureError):
    """Base of every error of the Parquet Modular Encryption output."""


class ParquetKmsError(ParquetEncryptionError):
    """Wrapping or unwrapping a Parquet key through the KMS callables failed."""


class CallbackKmsClient(pqe.KmsClient):
    """A pyarrow ``KmsClient`` whose wrap and unwrap are the two callables it was given."""

    def __init__(self, wrap: WrapKey, unwrap: UnwrapKey) -> None:
        super().__init__()
        if not callable(wrap) or not callable(unwrap):
            raise TypeError("CallbackKmsClient needs callable wrap and unwrap")
        self._wrap = wrap
        self._unwrap = unwrap

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        """Wrap a KEK (or DEK, without double wrapping) under a master key; base64 text."""
        _check_master_key_id(master_key_identifier)
        _check_key_length(len(key_bytes), master_key_identifier, "to wrap")
        try:
            blob = self._wrap(bytes(key_bytes), master_key_identifier)
        except Exception as exc:
            raise ParquetKmsError(f"wrapping a key under master key {master_key_identifier!r} "
                                  f"failed ({type(exc).__name__})") from None
        if not isinstance(blob, bytes | bytearray):
            raise ParquetKmsError(f"the wrap callable returned {type(blob).__name__}, not bytes, "
                                  f"for master key {master_key_identifier!r}")
        if not 0 < len(blob) <= MAX_WRAPPED_BLOB_BYTES:
            raise ParquetKmsError(f"the wrapped key for master key {master_key_identifier!r} is "
                                  f"{len(blob)} bytes; allowed 1 to {MAX_WRAPPED_BLOB_BYTES}")
        return base64.b64encode(bytes(blob)).decode("ascii")

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        """Decode the base64 blob from the file's key material and unwrap it."""
        _check_master_key_id(master_key_identifier)
        blob = decode_wrapped_key(wrapped_key, master_key_identifier)
        try:
            key = self._unwrap(blob, master_key_identifier)
        except Exception as exc:
            raise ParquetKmsError(f"unwrapping a key under master key {master_key_identifier!r} "
                                  f"failed ({type(exc).__name__})") from None
        if not isinstance(key, bytes | bytearray):
            raise ParquetKmsError(f"the unwrap callable returned {type(key).__name__}, not "
                                  f"bytes, for master key {master_key_identifier!r}")
        _check_key_length(len(key), master_key_identifier, "unwrapped")
        return bytes(key)


def callback_kms_client_factory(wrap: WrapKey, unwrap: UnwrapKey) -> KmsClientFactory:
    """The ``kms_client_factory`` that ``CryptoFactory`` wants, over the two callables.

    The connection config is ignored: where the keys live is the callables' business.
    """
    if not callable(wrap) or not callable(unwrap):
        raise TypeError("callback_kms_client_factory needs callable wrap and unwrap")

    def make_client(kms_connection_config: pqe.KmsConnectionConfig) -> pqe.KmsClient:
        return CallbackKmsClient(wrap, unwrap)

    return make_client


def decode_wrapped_key(wrapped_key: str, master_key_identifier: str) -> bytes:
    """Strict base64 -> bytes, with the text's length checked before decoding."""
    if isinstance(wrapped_key, bytes | bytearray):
        try:
            wrapped_key = bytes(wrapped_key).decode("ascii")
        except UnicodeDecodeError:
            raise ParquetKmsError(f"the wrapped key for master key {master_key_identifier!r} "
                                  "is not ASCII base64 text") from None
    if not isinstance(wrapped_key, str):
        raise ParquetKmsError(f"the wrapped key for master key {master_key_identifier!r} is "
                              f"{type(wrapped_key).__name__}, not base64 text")
    if not 0 < len(wrapped_key) <= MAX_WRAPPED_TEXT_CHARS:
        raise ParquetKmsError(f"the wrapped key for master key {master_key_identifier!r} is "
                              f"{len(wrapped_key)} characters; allowed 1 to "
                              f"{MAX_WRAPPED_TEXT_CHARS}")
    try:
        return base64.b64decode(wrapped_key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ParquetKmsError(f"the wrapped key for master key {master_key_identifier!r} is "
                              "not valid base64") from None


def _check_master_key_id(master_key_identifier: str) -> None:
    if not isinstance(master_key_identifier, str) or not master_key_identifier:
        raise ParquetKmsError("the master key id must be a non-empty string")
    if len(master_key_identifier) > MAX_MASTER_KEY_ID_CHARS:
        raise ParquetKmsError(f"a master key id is {len(master_key_identifier)} characters; "
                              f"allowed up to {MAX_MASTER_KEY_ID_CHARS}")


def _check_key_length(length: int, master_key_identifier: str, what: str) -> None:
    if length not in AES_KEY_LENGTHS:
        raise ParquetKmsError(f"the key {what} under master key {master_key_identifier!r} is "
                              f"{length} bytes; an AES key is 16, 24 or 32")
