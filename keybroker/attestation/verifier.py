"""The one interface every TEE verifier implements (SEV-SNP, TDX, Azure CVM, ...).

What it does: fixes ``evaluate(evidence, expected_report_data, *, endorsements) -> Claims``
so that the broker treats every TEE alike. What it does not: apply release policy; a
verifier only says what the evidence proves, `keybroker.policy` decides what to allow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from keybroker.attestation.claims import Claims

__all__ = ["Verifier"]


@runtime_checkable
class Verifier(Protocol):
    """Checks evidence for one TEE kind and returns normalized claims, or raises.

    Implementations raise `EvidenceFormatError` for malformed input,
    `EvidenceVerificationError` when authenticity fails, and `ReportDataMismatchError`
    when authentic evidence is bound to something other than ``expected_report_data``.
    """

    tee: str

    def evaluate(
        self,
        evidence: bytes,
        expected_report_data: bytes,
        *,
        endorsements: Mapping[str, bytes],
    ) -> Claims: ...
