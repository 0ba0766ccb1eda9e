"""A real key broker on loopback for tests: ``start_broker`` and the ``running_broker`` fixture.

``start_broker(state_dir)`` runs ``init_state`` (keyring, named keys, dev SEV-SNP chain,
demo policy allowing the simulated worker's measurement) and ``serve_in_thread``, and stops
the server on exit. ``running_broker`` is the same as a pytest fixture on ``tmp_path``;
use it from a test module with::

    from tests.support.broker import running_broker  # noqa: F401  (a fixture)

or call ``start_broker`` from a fixture of your own to change settings or the policy first
(``policy_edit`` receives the policy document and may change it before the broker loads it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT
from keybroker.config import BrokerSettings, init_state
from keybroker.service.server import RunningBroker, serve_in_thread

__all__ = ["running_broker", "start_broker"]


@contextmanager
def start_broker(
    state_dir: Path,
    *,
    regions: tuple[str, ...] = ("eu", "us"),
    tenants: tuple[str, ...] = ("acme",),
    policy_edit: Callable[[dict[str, Any]], None] | None = None,
    settings_changes: Mapping[str, Any] | None = None,
    clock: Callable[[], float] | None = None,
) -> Iterator[RunningBroker]:
    """Create a state in ``state_dir`` and serve it on 127.0.0.1 until the block ends."""
    settings: BrokerSettings = init_state(
        state_dir, regions=regions, tenants=tenants, allowed_measurements=(DEV_MEASUREMENT,)
    )
    if policy_edit is not None:
        document = yaml.safe_load(settings.policy_path.read_text(encoding="utf-8"))
        policy_edit(document)
        settings.policy_path.write_text(yaml.safe_dump(document, sort_keys=False), "utf-8")
    if settings_changes:
        settings = dataclasses.replace(settings, **dict(settings_changes))
    extra = {} if clock is None else {"clock": clock}
    broker = serve_in_thread(settings, **extra)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def running_broker(tmp_path: Path) -> Iterator[RunningBroker]:
    """A broker over the demo state in ``tmp_path / "state"``; ``.settings`` has its paths."""
    with start_broker(tmp_path / "state") as broker:
        yield broker
