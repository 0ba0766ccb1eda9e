"""One real broker per test session for this folder (the dev chain is slow to make)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.enclave_workers.broker_env import BrokerEnv, broker_env
from tests.pipelines.keys_cli_support import initialized_state, state  # noqa: F401


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerEnv]:
    with broker_env(tmp_path_factory.mktemp("broker")) as env:
        yield env
