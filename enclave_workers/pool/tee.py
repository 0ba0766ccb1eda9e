"""The evidence provider of the TEE a pool worker runs in, chosen by name.

The names are those of ``sealbeam run``'s ``--tee`` (``transforms.tee``), which the pool
cannot import (transforms stand on Beam): ``simulated-sev-snp`` (with the dev chain made by
``sealbeam keys init``), ``configfs-tsm``, ``configfs-tsm-tdx``, ``sev-guest``, and
``confidential-space`` (tokens from the launcher, for the ``audience`` the broker expects,
which pool images on Confidential Space use), and ``simulated-tdx`` (the dev TDX chain of
``enclave_workers.evidence.simulated_tdx``). Providers
are imported lazily, so a worker loads only its own TEE's code. It does not check that the
hardware exists: a provider fails closed on its first ``collect``.
"""

from __future__ import annotations

from pathlib import Path

from enclave_workers.evidence.base import EvidenceProvider

__all__ = ["CONFIDENTIAL_SPACE", "POOL_TEES", "SIMULATED_SEV_SNP", "SIMULATED_TDX",
           "make_provider"]

SIMULATED_SEV_SNP = "simulated-sev-snp"
SIMULATED_TDX = "simulated-tdx"
CONFIDENTIAL_SPACE = "confidential-space"
SIMULATED_TEES = (SIMULATED_SEV_SNP, SIMULATED_TDX)
POOL_TEES = (SIMULATED_SEV_SNP, "configfs-tsm", "configfs-tsm-tdx", "sev-guest",
             CONFIDENTIAL_SPACE, SIMULATED_TDX)


def make_provider(tee: str, dev_tee_dir: str | None, *, audience: str | None = None,
                  launcher_socket: str | None = None,
                  location: str | None = None) -> EvidenceProvider:
    if tee not in POOL_TEES:
        raise ValueError(f"unknown TEE {tee!r}; supported: {', '.join(POOL_TEES)}")
    if location is not None and tee != SIMULATED_SEV_SNP:
        raise ValueError("--worker_location is for simulated-sev-snp; hardware TEEs attest "
                         "their own location (or none)")
    if (tee == CONFIDENTIAL_SPACE) != bool(audience):
        raise ValueError("--audience is for Confidential Space, and it needs one")
    if tee == CONFIDENTIAL_SPACE:
        from enclave_workers.evidence.confidential_space import ConfidentialSpaceProvider

        if launcher_socket:
            return ConfidentialSpaceProvider(str(audience), socket_path=launcher_socket)
        return ConfidentialSpaceProvider(str(audience))
    if (tee in SIMULATED_TEES) != bool(dev_tee_dir):
        raise ValueError("--dev_tee_dir is for the simulated TEEs, and they need one")
    if tee == SIMULATED_SEV_SNP:
        from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider

        return SimulatedSnpProvider(Path(str(dev_tee_dir)), location=location)
    if tee == SIMULATED_TDX:
        from enclave_workers.evidence.simulated_tdx import SimulatedTdxProvider

        return SimulatedTdxProvider(Path(str(dev_tee_dir)))
    if tee == "configfs-tsm":
        from enclave_workers.evidence.configfs_tsm import ConfigfsTsmProvider

        return ConfigfsTsmProvider()
    if tee == "configfs-tsm-tdx":
        from enclave_workers.evidence.configfs_tsm import ConfigfsTsmTdxProvider

        return ConfigfsTsmTdxProvider()
    from enclave_workers.evidence.sev_guest import SevGuestProvider

    return SevGuestProvider()
