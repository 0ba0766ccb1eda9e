"""Evidence providers: how a worker inside a TEE obtains attestation evidence.

What it does: exports the `Evidence` value, the `EvidenceProvider` protocol and the
providers (simulated SEV-SNP, configfs-tsm, /dev/sev-guest). What it does not: verify
evidence; the key broker does that.
"""

from __future__ import annotations

from enclave_workers.evidence.base import (
    Evidence,
    EvidenceError,
    EvidenceProvider,
    EvidenceUnavailableError,
)
from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT, SimulatedSnpProvider

__all__ = [
    "DEV_MEASUREMENT",
    "Evidence",
    "EvidenceError",
    "EvidenceProvider",
    "EvidenceUnavailableError",
    "SimulatedSnpProvider",
]
