"""Which TEE a confidential worker runs in, and how it gets its evidence provider.

What it does: ``TeeSettings`` names the TEE and its inputs — ``simulated-sev-snp`` (the dev
chain in ``dev_tee_dir``), or real hardware: ``configfs-tsm`` (SEV-SNP through the kernel's
TSM reports), ``configfs-tsm-tdx`` (TDX through the same interface) or ``sev-guest``
(SEV-SNP through ``/dev/sev-guest``) — and ``make_evidence_provider`` builds the matching
``enclave_workers`` provider on the worker (in ``DoFn.setup``), so nothing TEE-specific is
pickled with the pipeline. ``SessionLimits`` carries the key-session caching limits.

What it does not: it does not collect evidence or talk to the broker (``KeySession`` does),
and it does not check that the worker really has the hardware (the provider fails closed on
its first ``collect`` when it has not).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from enclave_workers.evidence.base import EvidenceProvider
from keybroker.attestation.simulated_location import location_host_data

from .errors import TransformConfigError

__all__ = [
    "CONFIGFS_TSM",
    "CONFIGFS_TSM_TDX",
    "HARDWARE_TEES",
    "SEV_GUEST",
    "SIMULATED_SEV_SNP",
    "SUPPORTED_TEES",
    "SessionLimits",
    "TeeSettings",
    "make_evidence_provider",
]

SIMULATED_SEV_SNP = "simulated-sev-snp"
CONFIGFS_TSM = "configfs-tsm"
CONFIGFS_TSM_TDX = "configfs-tsm-tdx"
SEV_GUEST = "sev-guest"
HARDWARE_TEES = (CONFIGFS_TSM, CONFIGFS_TSM_TDX, SEV_GUEST)
SUPPORTED_TEES = (SIMULATED_SEV_SNP, *HARDWARE_TEES)  # the first is the flags' default


@dataclass(frozen=True)
class TeeSettings:
    """The TEE a worker attests as; ``dev_tee_dir`` is the dev chain for the simulated one."""

    tee: str = SIMULATED_SEV_SNP
    dev_tee_dir: str | None = None
    location: str | None = None
    """The simulated TEE's location claim (``--worker_location``); hardware TEEs attest their
    own, so it is ignored for them."""

    def __post_init__(self) -> None:
        if self.tee not in SUPPORTED_TEES:
            raise TransformConfigError(
                f"unknown TEE {self.tee!r}; supported: {', '.join(SUPPORTED_TEES)}")
        if self.tee == SIMULATED_SEV_SNP and not self.dev_tee_dir:
            raise TransformConfigError("the simulated SEV-SNP TEE needs dev_tee_dir "
                                       "(the dev chain made by `sealbeam keys init`)")
        if self.location is not None:
            try:
                location_host_data(self.location)
            except ValueError as exc:
                raise TransformConfigError(f"worker location: {exc}") from None
        if self.tee in HARDWARE_TEES and self.dev_tee_dir:
            raise TransformConfigError(f"dev_tee_dir is for the simulated TEE only; the "
                                       f"hardware TEE {self.tee!r} takes none")


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

        return SimulatedSnpProvider(Path(str(settings.dev_tee_dir)), location=settings.location)
    if settings.tee == CONFIGFS_TSM:
        from enclave_workers.evidence.configfs_tsm import ConfigfsTsmProvider

        return ConfigfsTsmProvider()
    if settings.tee == CONFIGFS_TSM_TDX:
        from enclave_workers.evidence.configfs_tsm import ConfigfsTsmTdxProvider

        return ConfigfsTsmTdxProvider()
    if settings.tee == SEV_GUEST:
        from enclave_workers.evidence.sev_guest import SevGuestProvider

        return SevGuestProvider()
    raise TransformConfigError(f"unknown TEE {settings.tee!r}")
