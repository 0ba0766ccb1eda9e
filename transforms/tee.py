"""Which TEE a confidential worker runs in, and how it gets its evidence provider.

What it does: ``TeeSettings`` names the TEE (``simulated-sev-snp`` today) and its inputs, and
``make_evidence_provider`` builds the matching ``enclave_workers`` provider on the worker (in
``DoFn.setup``), so nothing TEE-specific is pickled with the pipeline.
``SessionLimits`` carries the key-session caching limits.

What it does not: it does not collect evidence or talk to the broker (``KeySession`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from enclave_workers.evidence.base import EvidenceProvider

from .errors import TransformConfigError

__all__ = ["SUPPORTED_TEES", "SessionLimits", "TeeSettings", "make_evidence_provider"]

SIMULATED_SEV_SNP = "simulated-sev-snp"
SUPPORTED_TEES = (SIMULATED_SEV_SNP,)


@dataclass(frozen=True)
class TeeSettings:
    """The TEE a worker attests as; ``dev_tee_dir`` is the dev chain for the simulated one."""

    tee: str = SIMULATED_SEV_SNP
    dev_tee_dir: str | None = None

    def __post_init__(self) -> None:
        if self.tee not in SUPPORTED_TEES:
            raise TransformConfigError(
                f"unknown TEE {self.tee!r}; supported: {', '.join(SUPPORTED_TEES)}")
        if self.tee == SIMULATED_SEV_SNP and not self.dev_tee_dir:
            raise TransformConfigError("the simulated SEV-SNP TEE needs dev_tee_dir "
                                       "(the dev chain made by `sealbeam keys init`)")


@dataclass(frozen=True)
class SessionLimits:
    """Key-session caching limits (see ``enclave_workers.key_session.KeySession``)."""

    key_ttl_s: float = 300.0
    max_uses_per_key: int = 100_000
    max_cached_keys: int = 1024
    output_key_max_envelopes: int = 1024

    def __post_init__(self) -> None:
        if self.key_ttl_s <= 0:
            raise TransformConfigError("key_ttl_s must be greater than 0")
        if min(self.max_uses_per_key, self.max_cached_keys, self.output_key_max_envelopes) < 1:
            raise TransformConfigError("key-session limits must be at least 1")


def make_evidence_provider(settings: TeeSettings) -> EvidenceProvider:
    """Build the provider for ``settings`` (imports lazily: only the chosen TEE's code)."""
    if settings.tee == SIMULATED_SEV_SNP:
        from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider

        return SimulatedSnpProvider(Path(str(settings.dev_tee_dir)))
    raise TransformConfigError(f"unknown TEE {settings.tee!r}")
