"""The evidence a TEE worker hands to the broker, and the protocol every provider follows.

What it does: defines `Evidence` (TEE kind, evidence bytes, endorsements by name) and
`EvidenceProvider.collect(report_data)`, plus the provider errors. What it does not:
talk to hardware or to the broker; providers do the first, `KeySession` the second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

__all__ = [
    "REPORT_DATA_SIZE",
    "Evidence",
    "EvidenceError",
    "EvidenceProvider",
    "EvidenceUnavailableError",
    "check_report_data",
]

REPORT_DATA_SIZE = 64


class EvidenceError(Exception):
    """Base of the evidence providers' errors."""


class EvidenceUnavailableError(EvidenceError):
    """This machine cannot produce the requested evidence (no device, no chain, bad answer)."""


@dataclass(frozen=True)
class Evidence:
    """What `POST /v1/attest` carries: TEE kind, raw evidence, endorsements by name (DER)."""

    tee: str
    evidence: bytes
    endorsements: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tee:
            raise ValueError("evidence needs a TEE kind")
        if not isinstance(self.evidence, bytes) or not self.evidence:
            raise ValueError("evidence must be non-empty bytes")
        frozen = {}
        for name, blob in self.endorsements.items():
            if not isinstance(blob, bytes):
                raise ValueError(f"endorsement {name!r} must be bytes")
            frozen[name] = blob
        object.__setattr__(self, "endorsements", MappingProxyType(frozen))

    def __repr__(self) -> str:
        return (f"Evidence(tee={self.tee!r}, evidence=<{len(self.evidence)} bytes>, "
                f"endorsements={sorted(self.endorsements)})")


@runtime_checkable
class EvidenceProvider(Protocol):
    """Produces evidence whose report_data is exactly the 64 bytes given."""

    tee: str
    simulated: bool

    def collect(self, report_data: bytes) -> Evidence: ...


def check_report_data(report_data: bytes) -> bytes:
    """The 64-byte binding every provider requires; a clear error otherwise."""
    if not isinstance(report_data, bytes | bytearray) or len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"report_data must be exactly {REPORT_DATA_SIZE} bytes")
    return bytes(report_data)
