"""A real key broker on loopback for tests: ``start_broker`` and the ``running_broker`` fixture.

Also two helpers for tests that play the worker: ``attest_simulated_worker`` (challenge,
simulated SEV-SNP evidence bound to a fresh TEE key, attest) and ``ledger_entries``.

``start_broker(state_dir)`` runs ``init_state`` (keyring, named keys, dev SEV-SNP chain,
demo policy allowing the simulated worker's measurement) and ``serve_in_thread``, and stops
the server on exit. ``running_broker`` is the same as a pytest fixture on ``tmp_path``;
use it from a test module with::

    from tests.support.broker import running_broker  # noqa: F401  (a fixture)

or call ``start_broker`` from a fixture of your own to change settings or the policy first
(``policy_edit`` receives the policy document and may change it before the broker loads it;
``settings_changes`` replaces BrokerSettings fields, e.g. ``region_keks`` or ``kms``;
``kms_backends`` injects KMS backend instances by scheme, e.g. a ``GcpKms`` bound to a fake,
or is a function of the settings that returns them, e.g. to share the state's own keyring).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT, SimulatedSnpProvider
from envelope.transport import TeeKeyPair, report_data_binding
from keybroker.client import BrokerClient, BrokerSession
from keybroker.config import BrokerSettings, init_state
from keybroker.kms.base import KeyManagementService
from keybroker.ledger import AuditLedger, LedgerEntry
from keybroker.service.server import RunningBroker, serve_in_thread

__all__ = ["attest_simulated_worker", "ledger_entries", "running_broker", "start_broker"]


@contextmanager
def start_broker(
    state_dir: Path,
    *,
    regions: tuple[str, ...] = ("eu", "us"),
    tenants: tuple[str, ...] = ("acme",),
    policy_edit: Callable[[dict[str, Any]], None] | None = None,
    settings_changes: Mapping[str, Any] | None = None,
    clock: Callable[[], float] | None = None,
    kms_backends: (
        Mapping[str, KeyManagementService]
        | Callable[[BrokerSettings], Mapping[str, KeyManagementService]]
        | None
    ) = None,
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
    extra: dict[str, Any] = {} if clock is None else {"clock": clock}
    backends = kms_backends(settings) if callable(kms_backends) else kms_backends
    broker = serve_in_thread(settings, kms_backends=backends, **extra)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def running_broker(tmp_path: Path) -> Iterator[RunningBroker]:
    """A broker over the demo state in ``tmp_path / "state"``; ``.settings`` has its paths."""
    with start_broker(tmp_path / "state") as broker:
        yield broker


def attest_simulated_worker(
    client: BrokerClient, settings: BrokerSettings
) -> tuple[TeeKeyPair, BrokerSession]:
    """A fresh TEE key pair and the session the simulated SEV-SNP worker attests it into."""
    assert settings.dev_chain_dir is not None
    tee_keys = TeeKeyPair.generate()
    nonce = client.challenge()
    evidence = SimulatedSnpProvider(settings.dev_chain_dir).collect(
        report_data_binding(nonce, tee_keys.public_bytes())
    )
    session = client.attest(
        nonce, evidence.tee, evidence.evidence, dict(evidence.endorsements),
        tee_keys.public_bytes(),
    )
    return tee_keys, session


def ledger_entries(settings: BrokerSettings, event: str | None = None) -> list[LedgerEntry]:
    """The broker's ledger entries (of ``event``, when given), oldest first."""
    with AuditLedger(settings.ledger_path, read_only=True) as ledger:
        return [entry for entry in ledger.entries() if event is None or entry.event == event]
