"""Cloud KMS failures as sealbeam's typed KMS errors.

Maps google-api-core and google-auth exceptions to the ``keybroker.kms.base`` errors: the
transient gRPC codes (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL) and
checksum mismatches to ``KmsTransientError`` so that they are retried; PERMISSION_DENIED and
UNAUTHENTICATED to ``KmsPermissionError``; NOT_FOUND to ``KeyNotFoundError``;
FAILED_PRECONDITION on a destroyed or disabled version to ``KeyDestroyedError`` /
``KeyDisabledError``; INVALID_ARGUMENT from Decrypt to the detail-free ``KmsUnwrapError``.
This module makes no calls and does not decide whether to retry (``keybroker.kms.retry`` does).
"""

from __future__ import annotations

import re

import grpc
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions

from keybroker.kms.base import (
    KeyDestroyedError,
    KeyNotFoundError,
    KmsError,
    KmsPermissionError,
    KmsTransientError,
    KmsUnwrapError,
)

__all__ = [
    "DESTROYED_STATES",
    "TRANSIENT_STATUS_CODES",
    "KeyDisabledError",
    "KmsIntegrityError",
    "typed_error",
]

TRANSIENT_STATUS_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
    }
)
_PERMISSION_STATUS_CODES = frozenset(
    {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}
)
DESTROYED_STATES = frozenset({"DESTROYED", "DESTROY_SCHEDULED"})
_STATE_IN_MESSAGE = re.compile(r"current state is:?\s*([A-Z_]+)")


class KeyDisabledError(KmsPermissionError):
    """The Cloud KMS key version exists but is DISABLED; an operator can re-enable it."""


class KmsIntegrityError(KmsTransientError):
    """A CRC32C checksum did not match: the request or the response was corrupted in transit."""


def _failed_precondition(message: str, what: str) -> KmsError:
    match = _STATE_IN_MESSAGE.search(message)
    state = match.group(1) if match else None
    if state in DESTROYED_STATES:
        return KeyDestroyedError(f"{what}: key version is {state} ({message})")
    if state == "DISABLED":
        return KeyDisabledError(f"{what}: key version is DISABLED ({message})")
    return KmsError(f"{what}: FAILED_PRECONDITION: {message}")


def typed_error(error: Exception, what: str, *, decrypting: bool) -> KmsError:
    """Map a google-api-core / google-auth exception to the typed KMS errors."""
    if isinstance(error, auth_exceptions.RefreshError):
        if getattr(error, "retryable", False):  # the token endpoint itself was unavailable
            return KmsTransientError(f"{what}: credential refresh failed, retryable: {error}")
        return KmsPermissionError(f"{what}: credentials could not be refreshed: {error}")
    if isinstance(error, auth_exceptions.TransportError):
        return KmsTransientError(f"{what}: credential transport failed: {error}")
    if isinstance(error, auth_exceptions.GoogleAuthError):
        return KmsPermissionError(f"{what}: credentials unusable: {error}")
    if not isinstance(error, api_exceptions.GoogleAPICallError):
        return KmsError(f"{what}: unexpected {type(error).__name__}: {error}")
    code = error.grpc_status_code
    message = str(error.message)
    name = code.name if code is not None else f"HTTP {error.code}"
    if code in TRANSIENT_STATUS_CODES:
        return KmsTransientError(f"{what}: {name}: {message}")
    if code in _PERMISSION_STATUS_CODES:
        return KmsPermissionError(f"{what}: {name}: {message}")
    if code == grpc.StatusCode.NOT_FOUND:
        return KeyNotFoundError(f"{what}: NOT_FOUND: {message}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return _failed_precondition(message, what)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        if "checksum" in message.lower() or "crc32c" in message.lower():
            return KmsIntegrityError(f"{what}: the KMS saw a checksum mismatch: {message}")
        if decrypting:
            return KmsUnwrapError()
    return KmsError(f"{what}: {name}: {message}")
