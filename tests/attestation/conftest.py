"""Fixtures for the SEV-SNP tests: generated dev chains, a fixed clock, the real vectors."""

from __future__ import annotations

from pathlib import Path

import pytest

from keybroker.attestation.dev_chain import create_dev_chain


@pytest.fixture(scope="session")
def snp_vectors(shared_vectors: Path) -> Path:
    path = shared_vectors / "sev-snp"
    if not path.is_dir():
        pytest.skip(f"no SEV-SNP vectors in {path}")
    return path


@pytest.fixture(scope="session")
def amd_roots_dir(snp_vectors: Path) -> Path:
    """AMD's real ASK/ASVK/ARK PEMs, read in place (never copied into the repo)."""
    return snp_vectors / "roots"


@pytest.fixture(scope="session")
def milan_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dev-milan")
    create_dev_chain(directory, product="Milan", include_vlek=True)
    return directory


@pytest.fixture(scope="session")
def genoa_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dev-genoa")
    create_dev_chain(directory, product="Genoa")
    return directory


@pytest.fixture(scope="session")
def turin_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dev-turin")
    create_dev_chain(directory, product="Turin", include_vlek=True)
    return directory


@pytest.fixture(scope="session")
def other_milan_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated dev root with the same names as `milan_chain`."""
    directory = tmp_path_factory.mktemp("dev-milan-other")
    create_dev_chain(directory, product="Milan")
    return directory
