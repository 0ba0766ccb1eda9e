"""Fixtures for the end-to-end tests: a SEV-SNP chain under test roots the brokers pin."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from keybroker.attestation.dev_chain import create_dev_chain
from keybroker.attestation.snp.certificates import spki_sha256


@dataclass(frozen=True)
class PinnedChain:
    """A generated ARK/ASK/VCEK chain, a trust dir holding its ASK/ARK, and the ARK's pin."""

    chain_dir: Path
    trust_dir: Path
    pins: dict[str, str]


@pytest.fixture(scope="session")
def pinned_milan(tmp_path_factory: pytest.TempPathFactory) -> PinnedChain:
    chain_dir = tmp_path_factory.mktemp("test-amd-milan")
    create_dev_chain(chain_dir, product="Milan")
    trust_dir = tmp_path_factory.mktemp("test-amd-milan-trust")
    for name in ("ark.pem", "ask.pem"):
        shutil.copy(chain_dir / name, trust_dir / name)
    ark = x509.load_pem_x509_certificate((chain_dir / "ark.pem").read_bytes())
    return PinnedChain(chain_dir, trust_dir, {spki_sha256(ark): "Milan"})
