"""Fixtures for the cloud attestation tests: real Azure vectors, a dev SEV-SNP chain, an AK."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider
from keybroker.attestation.azure_cvm import AzureCvmVerifier
from keybroker.attestation.snp import SnpTrustStore, SnpVerifier
from tests.attestation_cloud.support import SnpAzureBuilder, new_rsa_key
from tests.support.attestation import dev_snp_chain_fixture, vector_dir_fixture

# Inside the validity of the Azure vector's VCEK chain.
AZURE_VECTOR_TIME = datetime(2025, 6, 1, tzinfo=timezone.utc)

azure_vectors = vector_dir_fixture("azure-cvm", "Azure CVM vectors")
dev_chain = dev_snp_chain_fixture("Milan")


@pytest.fixture(scope="session")
def ak_key() -> rsa.RSAPrivateKey:
    return new_rsa_key()


@pytest.fixture(scope="session")
def builder(dev_chain: Path, ak_key: rsa.RSAPrivateKey) -> SnpAzureBuilder:
    return SnpAzureBuilder(SimulatedSnpProvider(dev_chain), ak_key)


@pytest.fixture(scope="session")
def dev_snp_verifier(dev_chain: Path) -> SnpVerifier:
    return SnpVerifier(SnpTrustStore(allow_simulated=True, dev_chain_dir=dev_chain))


@pytest.fixture(scope="session")
def azure_verifier(dev_snp_verifier: SnpVerifier) -> AzureCvmVerifier:
    return AzureCvmVerifier(snp=dev_snp_verifier)
