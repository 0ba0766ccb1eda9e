"""Module-scoped broker deployments, one per KMS scheme, shared by the broker and registry tests.

Each fixture starts a broker (``tests.keybroker.kms.broker_deployments``) against its backend
(a local keyring, the fake Cloud KMS and Key Vault servers, SoftHSM) once per test module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.keybroker.kms.broker_deployments import (
    Deployment,
    azure_deployment,
    gcp_deployment,
    local_deployment,
    pkcs11_deployment,
    softhsm_tokens,
)
from tests.keybroker.kms.softhsm import SoftHsm


@pytest.fixture(scope="module")
def local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with local_deployment(tmp_path_factory.mktemp("local")) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def gcp_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with gcp_deployment(tmp_path_factory.mktemp("gcp")) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def azure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with azure_deployment(tmp_path_factory.mktemp("azure")) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    with softhsm_tokens(tmp_path_factory.mktemp("softhsm")) as hsm:
        yield hsm


@pytest.fixture(scope="module")
def pkcs11_broker(
    tmp_path_factory: pytest.TempPathFactory, softhsm: SoftHsm
) -> Iterator[Deployment]:
    with pkcs11_deployment(tmp_path_factory.mktemp("pkcs11"), softhsm) as deployed:
        yield deployed
