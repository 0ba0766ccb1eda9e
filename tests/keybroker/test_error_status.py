"""The one error -> HTTP status mapping of the broker, pinned as a table."""

from __future__ import annotations

import pytest

from envelope.errors import EnvelopeFormatError, EnvelopeLimitError, KeyTransportError
from keybroker.attestation.errors import (
    AttestationError,
    EndorsementUnavailableError,
    EvidenceFormatError,
    EvidenceVerificationError,
    ReportDataMismatchError,
    TrustStoreError,
    UnsupportedHardwareError,
)
from keybroker.dek_cache import UnwrapWaitTimeoutError
from keybroker.kms.backend_settings import KmsSettingsError
from keybroker.kms.base import (
    InsecureKeyringError,
    KeyDestroyedError,
    KeyNotFoundError,
    KeyringFormatError,
    KmsError,
    KmsPermissionError,
    KmsTransientError,
    KmsUnwrapError,
    UnsupportedKmsSchemeError,
)
from keybroker.kms.registry import KekLocationError, KmsBackendUnavailableError
from keybroker.ledger import LedgerError
from keybroker.service.errors import (
    INTERNAL_ERROR_REASON,
    BadRequestError,
    PolicyDeniedError,
    UnsupportedTeeError,
    error_body,
    error_status,
)
from keybroker.service.sessions import CapacityError, NonceError, SessionError

TABLE = [
    (PolicyDeniedError("measurement not allowed by rule r"), 403, "denied"),
    (KmsPermissionError("version disabled"), 403, "kms_permission_denied"),
    (NonceError("nonce already used"), 401, "bad_nonce"),
    (SessionError("session expired"), 401, "bad_session"),
    (AttestationError("x"), 401, "attestation_failed"),
    (EvidenceFormatError("report too short"), 401, "bad_evidence"),
    (EvidenceVerificationError("bad signature"), 401, "evidence_not_verified"),
    (ReportDataMismatchError("report_data"), 401, "report_data_mismatch"),
    (EndorsementUnavailableError("no vcek"), 503, "endorsement_unavailable"),
    (TrustStoreError("no ark"), 500, "verifier_misconfigured"),
    (KeyNotFoundError("no KEK"), 404, "key_not_found"),
    (UnsupportedKmsSchemeError("no backend"), 404, "key_not_found"),
    (KeyDestroyedError("destroyed"), 404, "key_destroyed"),
    (KmsUnwrapError(), 400, "wrapped_key_rejected"),
    (KmsTransientError("timeout"), 503, "kms_unavailable"),
    (UnwrapWaitTimeoutError("waited 60s"), 503, "kms_unavailable"),
    (KekLocationError("KEK in us-central1 for region eu"), 403, "kek_location_denied"),
    (KmsBackendUnavailableError("google-cloud-kms missing"), 500, "kms_error"),
    (KmsSettingsError("kms.pkcs11.module"), 500, "kms_error"),
    (KmsError("other"), 500, "kms_error"),
    (KeyringFormatError("bad"), 500, "kms_error"),
    (InsecureKeyringError("0644"), 500, "kms_error"),
    (CapacityError("full"), 503, "busy"),
    (LedgerError("disk full"), 503, "ledger_unavailable"),
    (BadRequestError("nonce: not valid base64"), 400, "bad_request"),
    (UnsupportedTeeError("tee: no verifier"), 400, "unsupported_tee"),
    (UnsupportedHardwareError("no TDX verifier configured"), 400, "unsupported_tee"),
    (EnvelopeFormatError("region too long"), 400, "bad_request"),
    (EnvelopeLimitError("wrapped key too long"), 400, "bad_request"),
    (KeyTransportError("bad TEE key"), 400, "bad_tee_key"),
    (RuntimeError("boom"), 500, "internal_error"),
    (KeyError("secret-ish"), 500, "internal_error"),
]


@pytest.mark.parametrize(("error", "status", "code"), TABLE, ids=lambda v: type(v).__name__)
def test_error_status_table(error: Exception, status: int, code: str) -> None:
    mapped = error_status(error)
    assert (mapped.status, mapped.error) == (status, code)


@pytest.mark.parametrize(
    "error",
    [RuntimeError("secret detail"), KmsError("/srv/keys path"), TrustStoreError("/etc/x")],
)
def test_server_side_errors_hide_their_message(error: Exception) -> None:
    status, body = error_body(error)
    assert status == 500
    assert body["reason"] == INTERNAL_ERROR_REASON


def test_client_side_errors_carry_their_reason() -> None:
    status, body = error_body(PolicyDeniedError("region 'us' not allowed by rule demo"))
    assert status == 403
    assert body == {"error": "denied", "reason": "region 'us' not allowed by rule demo"}
