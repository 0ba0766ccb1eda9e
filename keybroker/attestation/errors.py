"""The attestation room's errors: one base and one class per kind of failure.

What it does: gives the broker one place to map attestation failures to HTTP statuses
(bad evidence 401, missing endorsements 503). What it does not: carry evidence bytes,
key bytes or report_data in messages; messages name the field or check that failed.
"""

from __future__ import annotations

__all__ = [
    "AttestationError",
    "EndorsementUnavailableError",
    "EvidenceFormatError",
    "EvidenceVerificationError",
    "ReportDataMismatchError",
    "TrustStoreError",
    "UnsupportedHardwareError",
]


class AttestationError(Exception):
    """Base of every error raised while verifying attestation evidence."""


class EvidenceFormatError(AttestationError):
    """The evidence or an endorsement is structurally malformed (length, version, reserved bits)."""


class EvidenceVerificationError(AttestationError):
    """The evidence is well formed but not authentic: signature, chain, pin, validity, TCB."""


class ReportDataMismatchError(AttestationError):
    """The authentic evidence does not carry the report_data the relying party expected."""


class TrustStoreError(AttestationError):
    """The verifier's own trust configuration (trust dir, dev root, pins) is unusable."""


class UnsupportedHardwareError(TrustStoreError):
    """The evidence runs on hardware this verifier was not given trust material for (Azure
    CVM evidence from TDX to a verifier without a TDX verifier): a request the broker does
    not serve, not a broken configuration, so the broker answers it like an unknown TEE."""


class EndorsementUnavailableError(AttestationError):
    """A needed endorsement (e.g. the VCEK) is absent and could not be fetched (offline KDS)."""
