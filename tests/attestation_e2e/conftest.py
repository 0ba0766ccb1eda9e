"""Fixtures for the end-to-end tests: a SEV-SNP chain under test roots the brokers pin."""

from __future__ import annotations

import pytest

from keybroker.attestation.dev_chain import create_dev_chain
from tests.support.attestation import PinnedChain, pin_amd_chain

__all__ = ["PinnedChain"]


@pytest.fixture(scope="session")
def pinned_milan(tmp_path_factory: pytest.TempPathFactory) -> PinnedChain:
    chain_dir = tmp_path_factory.mktemp("test-amd-milan")
    create_dev_chain(chain_dir, product="Milan")
    return pin_amd_chain(chain_dir, tmp_path_factory.mktemp("test-amd-milan-trust"), "Milan")
