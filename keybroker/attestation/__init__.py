"""Attestation verifiers for the key broker: one `Verifier` protocol, one package per TEE.

What it does: exports `Claims`, the error classes and the `Verifier` protocol that every
TEE verifier implements (SEV-SNP lives in `keybroker.attestation.snp`). What it does not:
decide key release; verifiers return claims and `keybroker.policy` decides.
"""

from __future__ import annotations

from keybroker.attestation.claims import Claims
from keybroker.attestation.errors import (
    AttestationError,
    EndorsementUnavailableError,
    EvidenceFormatError,
    EvidenceVerificationError,
    ReportDataMismatchError,
    TrustStoreError,
    UnsupportedHardwareError,
)
from keybroker.attestation.verifier import Verifier

__all__ = [
    "AttestationError",
    "Claims",
    "EndorsementUnavailableError",
    "EvidenceFormatError",
    "EvidenceVerificationError",
    "ReportDataMismatchError",
    "TrustStoreError",
    "UnsupportedHardwareError",
    "Verifier",
]
