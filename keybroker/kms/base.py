"""The KMS interface every backend implements, and the errors it raises.

A backend wraps a data key under a key-encryption key (KEK) named by URI and unwraps it
again, binding caller-supplied associated data. This module holds no key material and does
no I/O; it only fixes the shape that the service and the registry rely on, plus the one
input check (``checked_bytes``) that backends share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from envelope.keys import WrappedKey

__all__ = [
    "InsecureKeyringError",
    "KeyDestroyedError",
    "KeyManagementService",
    "KeyNotFoundError",
    "KeyringExistsError",
    "KeyringFormatError",
    "KmsError",
    "KmsPermissionError",
    "KmsTransientError",
    "KmsUnwrapError",
    "UnsupportedKmsSchemeError",
    "checked_bytes",
]


class KmsError(Exception):
    """Base of every error a KMS backend raises."""


class KeyNotFoundError(KmsError):
    """The KEK (or the KEK version) named does not exist in this backend."""


class UnsupportedKmsSchemeError(KeyNotFoundError):
    """No backend is configured for the URI's scheme, so no key by that name can exist here."""


class KeyDestroyedError(KmsError):
    """The KEK version existed but its material was destroyed: its wrapped keys are lost."""


class KmsPermissionError(KmsError):
    """The backend refused the operation for this caller (disabled version, IAM denial)."""


class KmsTransientError(KmsError):
    """A temporary failure (network, quota, lock); the same call may succeed later."""


class KmsUnwrapError(KmsError):
    """The wrapped key did not authenticate under the KEK and associated data given.

    One fixed message, no detail: a tampered ciphertext, the wrong KEK version and the wrong
    associated data are indistinguishable on purpose.
    """

    def __init__(self) -> None:
        super().__init__("wrapped key does not authenticate under this KEK and associated data")


class KeyringFormatError(KmsError):
    """A keyring or named-key file is malformed; the message names the field."""


class KeyringExistsError(KmsError):
    """Creating a keyring would overwrite an existing one (and orphan every key it wrapped)."""


class InsecureKeyringError(KmsError):
    """A keyring file is readable or writable by group/other, or is not a regular file."""


def checked_bytes(field: str, value: bytes, minimum: int, maximum: int) -> bytes:
    """``value`` as bytes when its length is within bounds; KmsError naming ``field`` otherwise."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise KmsError(f"{field}: expected bytes, got {type(value).__name__}")
    value = bytes(value)
    if not minimum <= len(value) <= maximum:
        raise KmsError(f"{field}: expected {minimum}..{maximum} bytes, got {len(value)}")
    return value


@runtime_checkable
class KeyManagementService(Protocol):
    """Wraps and unwraps data keys under named KEKs. Implementations must be thread-safe."""

    scheme: str

    def wrap(self, kek_uri: str, dek: bytes, aad: bytes) -> WrappedKey:
        """Wrap ``dek`` under the primary version of ``kek_uri``, binding ``aad``."""
        ...

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        """Return the DEK, or raise KmsUnwrapError when it does not authenticate with ``aad``."""
        ...
