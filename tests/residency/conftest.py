"""Fixtures of the residency tests: one real broker per session, the object-store emulators."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.enclave_workers.broker_env import BrokerEnv, broker_env
from tests.residency.object_store_maps import emulator_stores
from tests.support.object_stores import (  # noqa: F401  (fixtures)
    AzuriteServer,
    azurite,
    gcs_emulator,
)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerEnv]:
    with broker_env(tmp_path_factory.mktemp("broker")) as env:
        yield env


@pytest.fixture(scope="module")
def stores(gcs_emulator: str, azurite: AzuriteServer,  # noqa: F811  (the fixtures above)
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """Emulator buckets and containers (``object_store_maps``), per test module."""
    with emulator_stores(gcs_emulator, azurite,
                         tmp_path_factory.mktemp("gcp") / "adc.json") as clients:
        yield clients
