"""Fixtures for the TDX tests: one generated test PKI per session, trust stores, vectors."""

from __future__ import annotations

from pathlib import Path

import pytest

from keybroker.attestation.tdx.trust import TdxTrustStore, certificate_fingerprint
from tests.attestation_tdx.builder import TestPki, make_pki
from tests.support.attestation import vector_dir_fixture


@pytest.fixture(scope="session")
def pki() -> TestPki:
    return make_pki()


@pytest.fixture(scope="session")
def dev_trust(pki: TestPki) -> TdxTrustStore:
    """The test root as a developer root: chains ending there are simulated."""
    return TdxTrustStore(dev_roots=[pki.root])


@pytest.fixture(scope="session")
def pinned_trust(pki: TestPki) -> TdxTrustStore:
    """The test root pinned as if it were Intel's: chains ending there are not simulated."""
    return TdxTrustStore([pki.root], pinned_fingerprints=[certificate_fingerprint(pki.root)])


tdx_vectors = vector_dir_fixture("tdx", "TDX vectors")


@pytest.fixture(scope="session")
def intel_trust(tdx_vectors: Path) -> TdxTrustStore:
    """Intel's real root, read from the vectors and checked against the compiled-in pin."""
    return TdxTrustStore.from_directory(tdx_vectors)
