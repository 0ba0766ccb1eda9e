"""Fixtures for the SEV-SNP tests: generated dev chains, a fixed clock, the real vectors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.attestation import dev_snp_chain_fixture, vector_dir_fixture

snp_vectors = vector_dir_fixture("sev-snp", "SEV-SNP vectors")


@pytest.fixture(scope="session")
def amd_roots_dir(snp_vectors: Path) -> Path:
    """AMD's real ASK/ASVK/ARK PEMs, read in place (never copied into the repo)."""
    return snp_vectors / "roots"


milan_chain = dev_snp_chain_fixture("Milan", include_vlek=True)
genoa_chain = dev_snp_chain_fixture("Genoa")
turin_chain = dev_snp_chain_fixture("Turin", include_vlek=True)
other_milan_chain = dev_snp_chain_fixture(
    "Milan", doc="A second, unrelated dev root with the same names as `milan_chain`.")
