"""The broker's own errors and the one function that maps any error to an HTTP status.

``error_status`` walks the exception's class hierarchy against one table, so a new
subclass inherits its parent's status; ``tests/keybroker/test_error_status.py`` pins the
table. Bodies are ``{"error": <code>, "reason": <message>}``. Anything not in the table is
a 500 with a fixed reason, so an unexpected exception never leaks its message.

This module does not log and does not write the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass

from envelope.errors import EnvelopeFormatError, KeyTransportError
from keybroker.attestation.errors import (
    AttestationError,
    EndorsementUnavailableError,
    EvidenceFormatError,
    EvidenceVerificationError,
    ReportDataMismatchError,
    TrustStoreError,
    UnsupportedHardwareError,
)
from keybroker.kms.base import (
    KeyDestroyedError,
    KeyNotFoundError,
    KmsError,
    KmsPermissionError,
    KmsTransientError,
    KmsUnwrapError,
)
from keybroker.kms.registry import KekLocationError
from keybroker.ledger import LedgerError
from keybroker.service.sessions import (
    CapacityError,
    NonceError,
    NonceStoreError,
    SessionError,
)

__all__ = [
    "HANDLED_ERROR_TYPES",
    "INTERNAL_ERROR_REASON",
    "BadRequestError",
    "BrokerServiceError",
    "ErrorStatus",
    "PolicyDeniedError",
    "UnsupportedTeeError",
    "error_status",
    "http_error_body",
]

INTERNAL_ERROR_REASON = "internal error"


class BrokerServiceError(Exception):
    """Base of the errors the service raises itself (as opposed to its libraries')."""


class BadRequestError(BrokerServiceError):
    """A field is malformed (bad base64, wrong length); the message names the field."""


class UnsupportedTeeError(BadRequestError):
    """No verifier is configured for the TEE kind named in the request."""


class PolicyDeniedError(BrokerServiceError):
    """The release policy said no; the message is the policy's reason."""


@dataclass(frozen=True)
class ErrorStatus:
    status: int
    error: str
    expose_reason: bool = True


# Most specific classes first is not required: the lookup follows each exception's MRO.
_STATUS_TABLE: dict[type[BaseException], ErrorStatus] = {
    PolicyDeniedError: ErrorStatus(403, "denied"),
    KmsPermissionError: ErrorStatus(403, "kms_permission_denied"),
    KekLocationError: ErrorStatus(403, "kek_location_denied"),
    NonceError: ErrorStatus(401, "bad_nonce"),
    SessionError: ErrorStatus(401, "bad_session"),
    AttestationError: ErrorStatus(401, "attestation_failed"),
    EvidenceFormatError: ErrorStatus(401, "bad_evidence"),
    EvidenceVerificationError: ErrorStatus(401, "evidence_not_verified"),
    ReportDataMismatchError: ErrorStatus(401, "report_data_mismatch"),
    EndorsementUnavailableError: ErrorStatus(503, "endorsement_unavailable"),
    TrustStoreError: ErrorStatus(500, "verifier_misconfigured", expose_reason=False),
    KeyNotFoundError: ErrorStatus(404, "key_not_found"),
    KeyDestroyedError: ErrorStatus(404, "key_destroyed"),
    KmsUnwrapError: ErrorStatus(400, "wrapped_key_rejected"),
    KmsTransientError: ErrorStatus(503, "kms_unavailable"),
    KmsError: ErrorStatus(500, "kms_error", expose_reason=False),
    CapacityError: ErrorStatus(503, "busy"),
    NonceStoreError: ErrorStatus(503, "nonce_store_unavailable"),
    LedgerError: ErrorStatus(503, "ledger_unavailable"),
    BadRequestError: ErrorStatus(400, "bad_request"),
    UnsupportedTeeError: ErrorStatus(400, "unsupported_tee"),
    UnsupportedHardwareError: ErrorStatus(400, "unsupported_tee"),
    EnvelopeFormatError: ErrorStatus(400, "bad_request"),
    KeyTransportError: ErrorStatus(400, "bad_tee_key"),
}
HANDLED_ERROR_TYPES: tuple[type[BaseException], ...] = tuple(_STATUS_TABLE)
_INTERNAL = ErrorStatus(500, "internal_error", expose_reason=False)


def error_status(error: BaseException) -> ErrorStatus:
    """The HTTP status and error code for ``error`` (500 for anything unknown)."""
    for cls in type(error).__mro__:
        status = _STATUS_TABLE.get(cls)
        if status is not None:
            return status
    return _INTERNAL


def error_body(error: BaseException) -> tuple[int, dict[str, str]]:
    """(status, {"error", "reason"}) for a response; unknown errors get a fixed reason."""
    status = error_status(error)
    reason = str(error) if status.expose_reason else INTERNAL_ERROR_REASON
    return status.status, {"error": status.error, "reason": reason or status.error}


_HTTP_ERROR_CODES = {
    400: "invalid_request",  # FastAPI: a body it could not parse (e.g. nested too deeply)
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def http_error_body(error: BaseException) -> tuple[int, dict[str, str], dict[str, str]]:
    """(status, {"error", "reason"}, headers) for the web framework's own HTTP errors.

    Starlette raises these for an unknown path or a wrong method; their ``detail`` is the
    framework's fixed phrase, never the caller's input. Allow headers are kept.
    """
    status = getattr(error, "status_code", 500)
    if not isinstance(status, int) or not 400 <= status <= 599:
        status = 500
    code = _HTTP_ERROR_CODES.get(status, "http_error" if status < 500 else "internal_error")
    detail = getattr(error, "detail", None)
    reason = detail if isinstance(detail, str) and detail and status < 500 else code
    raw_headers = getattr(error, "headers", None) or {}
    headers = {name: value for name, value in raw_headers.items() if name.lower() == "allow"}
    return status, {"error": code, "reason": reason[:200]}, headers
