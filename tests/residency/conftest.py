"""Fixtures of the residency tests: one real broker per session, the object-store emulators."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.enclave_workers.broker_env import BrokerEnv, broker_env
from tests.support.object_stores import azurite, gcs_emulator  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerEnv]:
    with broker_env(tmp_path_factory.mktemp("broker")) as env:
        yield env
