"""Builds the attestation verifiers the broker accepts evidence from, out of its settings.

The SEV-SNP trust store trusts the development root only when the policy's global
``allow_simulated`` is true (fail closed: with it false, simulated evidence cannot even
verify). TEE kinds without a configured verifier are refused at ``/v1/attest``. This module
does not verify anything itself.
"""

from __future__ import annotations

from keybroker.attestation.snp.trust import SnpTrustStore
from keybroker.attestation.snp.verifier import SnpVerifier
from keybroker.attestation.verifier import Verifier
from keybroker.config import BrokerSettings
from keybroker.policy import ReleasePolicy

__all__ = ["build_verifiers"]


def build_verifiers(settings: BrokerSettings, policy: ReleasePolicy) -> dict[str, Verifier]:
    """TEE kind -> verifier, for every TEE the settings configure."""
    trust = SnpTrustStore(
        settings.snp_trust_dir,
        allow_simulated=policy.allow_simulated,
        dev_chain_dir=settings.dev_chain_dir if policy.allow_simulated else None,
    )
    snp = SnpVerifier(trust)
    return {snp.tee: snp}
