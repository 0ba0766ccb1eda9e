"""The typed errors of opening an Azure Secure Key Release token inside the TEE.

Every failure of `enclave_workers.skr` and `enclave_workers.skr_token` is a
`SecureKeyReleaseError`: a malformed or oversized token (`ReleaseTokenFormatError`, naming the
field), a signature or certificate chain that does not verify (`ReleaseTokenSignatureError`), a
token releasing another key (`ReleasedKeyMismatchError`), or a key that the runtime key cannot
unwrap (`ReleasedKeyUnwrapError`, one fixed message so that it tells an attacker nothing). This
module defines the errors only; it checks nothing.
"""

from __future__ import annotations

__all__ = [
    "ReleaseTokenFormatError",
    "ReleaseTokenSignatureError",
    "ReleasedKeyMismatchError",
    "ReleasedKeyUnwrapError",
    "SecureKeyReleaseError",
]


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
