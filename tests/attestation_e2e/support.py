"""Brokers configured for one TEE kind, and a worker that attests and opens a released key.

What it does: `serve_broker` creates a state (``init_state``), writes the test's policy,
adds the test's trust material to the settings (``attestation``, ``snp_trust_dir``), builds
the verifiers from those settings with the test's clock and JWKS getter, and serves the
broker on loopback. `open_released_key` plays the worker: a `KeySession` over the real
client with the given evidence provider attests (report_data bound to nonce and TEE key),
asks for a DEK the test wrapped under the state's keyring, and opens it. `expect_denied`
checks a refusal and its audit entry. What it does not: touch real keys or the network.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from enclave_workers.evidence.base import EvidenceProvider
from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT
from enclave_workers.key_session import KeySession
from envelope.keys import DataKey, dek_wrap_aad
from envelope.transport import TeeKeyPair, report_data_binding
from keybroker.attestation.jwks import Getter
from keybroker.client import BrokerClient, BrokerError, BrokerSession
from keybroker.config import AttestationSettings, init_state
from keybroker.kms.local import LocalKeyring
from keybroker.ledger import AuditLedger, LedgerEntry
from keybroker.policy import ReleasePolicy
from keybroker.service.server import RunningBroker, serve_in_thread
from keybroker.service.verifiers import build_verifiers

__all__ = [
    "REGION",
    "attest_once",
    "expect_denied",
    "ledger_entries",
    "open_released_key",
    "release_rule",
    "serve_broker",
]

REGION = "eu"
PRODUCER = "acme"


def release_rule(name: str, tee: list[str], measurements: list[str], **checks: Any
                 ) -> dict[str, Any]:
    """A rule releasing ``eu`` keys to any producer, plus the TEE-specific ``checks``."""
    return {"name": name, "tee": tee, "measurements": measurements,
            "regions": [REGION], "keks": [f"local://keyring/{REGION}/*"],
            "named_keys": ["pseudonym/acme"], "producers": ["*"], **checks}


@contextmanager
def serve_broker(
    state_dir: Path,
    rules: list[dict[str, Any]],
    *,
    allow_simulated: bool = False,
    attestation: Mapping[str, Any] | None = None,
    settings_changes: Mapping[str, Any] | None = None,
    clock: Callable[[], float] = time.time,
    jwks_getter: Getter | None = None,
) -> Iterator[RunningBroker]:
    settings = init_state(state_dir, regions=(REGION, "us"), tenants=("acme",),
                          allowed_measurements=(DEV_MEASUREMENT,))
    settings.policy_path.write_text(yaml.safe_dump(
        {"version": 1, "allow_simulated": allow_simulated, "rules": rules}), "utf-8")
    settings = dataclasses.replace(
        settings, attestation=AttestationSettings(**dict(attestation or {})),
        **dict(settings_changes or {}))
    policy = ReleasePolicy.load(settings.policy_path)
    verifiers = build_verifiers(settings, policy, clock=clock, jwks_getter=jwks_getter)
    broker = serve_in_thread(settings, clock=clock, verifiers=verifiers)
    try:
        yield broker
    finally:
        broker.stop()


def open_released_key(broker: RunningBroker, provider: EvidenceProvider, *,
                      clock: Callable[[], float] = time.time) -> LedgerEntry:
    """The worker's path: attest, have a DEK released, open it; returns the attest entry."""
    keyring = LocalKeyring.open(broker.settings.keyring_path)
    dek = DataKey.generate()
    wrapped = keyring.wrap(keyring.kek_for_region(REGION), dek.secret_bytes(),
                           dek_wrap_aad(REGION, PRODUCER))
    with BrokerClient(broker.url) as client:
        session = KeySession(client, provider, clock=clock)
        released = session.data_key(wrapped, REGION, PRODUCER)
        assert released.secret_bytes() == dek.secret_bytes()
        assert session.attestations == 1
    entries = ledger_entries(broker)
    granted = [entry for entry in entries if entry.event == "release"][-1]
    assert granted.decision == "granted" and granted.details["key_id"] == wrapped.key_id
    attested = [entry for entry in entries if entry.event == "attest"][-1]
    assert attested.decision == "granted" and attested.details["session"] \
        == granted.details["session"]
    return attested


def attest_once(broker: RunningBroker, provider: EvidenceProvider) -> BrokerSession:
    """One attestation with a fresh TEE key; the session carries the broker's claims."""
    tee_keys = TeeKeyPair.generate()
    with BrokerClient(broker.url) as client:
        nonce = client.challenge()
        evidence = provider.collect(report_data_binding(nonce, tee_keys.public_bytes()))
        return client.attest(nonce, evidence.tee, evidence.evidence,
                             dict(evidence.endorsements), tee_keys.public_bytes())


def expect_denied(broker: RunningBroker, provider: EvidenceProvider, status: int,
                  reason: str) -> LedgerEntry:
    """Attest with ``provider``'s evidence; the broker must refuse, and record why."""
    tee_keys = TeeKeyPair.generate()
    with BrokerClient(broker.url) as client:
        nonce = client.challenge()
        evidence = provider.collect(report_data_binding(nonce, tee_keys.public_bytes()))
        with pytest.raises(BrokerError) as refused:
            client.attest(nonce, evidence.tee, evidence.evidence, dict(evidence.endorsements),
                          tee_keys.public_bytes())
    assert refused.value.status == status, refused.value
    assert reason in str(refused.value)
    entry = [entry for entry in ledger_entries(broker) if entry.event == "attest"][-1]
    assert entry.decision == "denied" and reason in entry.details["reason"]
    assert entry.details["status"] == status
    return entry


def ledger_entries(broker: RunningBroker) -> list[LedgerEntry]:
    with AuditLedger(broker.settings.ledger_path, read_only=True) as ledger:
        assert ledger.verify().ok
        return list(ledger.entries())
