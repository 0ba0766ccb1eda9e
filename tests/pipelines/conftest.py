"""One real broker per test session for this folder (the dev chain is slow to make), and the
environment that lets Beam's worker processes import this checkout."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.enclave_workers.broker_env import BrokerEnv, broker_env
from tests.pipelines.keys_cli_support import initialized_state, state  # noqa: F401


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerEnv]:
    with broker_env(tmp_path_factory.mktemp("broker")) as env:
        yield env


@pytest.fixture
def worker_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes (``direct_running_mode=multi_processing``) import this checkout and
    the test hooks as the test process does: the repository root leads their PYTHONPATH."""
    root = str(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])]))
