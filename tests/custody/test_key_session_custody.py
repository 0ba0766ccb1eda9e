"""The key session's custody side: the statement key is bound in the evidence and listed in
the broker's signed result; the ledger head is fetched again only after a new grant."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from enclave_workers.key_session import KeySession
from enclave_workers.provenance import PROVENANCE_KEY_LABEL
from keybroker.checkpoints import verify_checkpoint
from keybroker.client import BrokerClient
from keybroker.grants import verify_attestation_result
from keybroker.identity import BrokerPublicKey
from tests.enclave_workers.broker_env import BrokerEnv, broker_env


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerEnv]:
    with broker_env(tmp_path_factory.mktemp("broker")) as env:
        yield env


def _pinned_session(broker: BrokerEnv, **limits: float) -> tuple[KeySession, BrokerPublicKey]:
    key = BrokerPublicKey.load(broker.settings.identity_path)
    client = BrokerClient(broker.url, broker_identity=key)
    return KeySession(client, broker.provider(), owns_broker=True, **limits), key


def test_the_statement_key_is_listed_in_the_signed_result(broker: BrokerEnv) -> None:
    session, key = _pinned_session(broker)
    try:
        signer, envelope = session.custody_signer()
        result = verify_attestation_result(key, envelope)
        assert result.tee_public_keys[PROVENANCE_KEY_LABEL] == signer.public_bytes
    finally:
        session.close()


def test_a_new_attestation_brings_a_new_signer_with_its_own_result(broker: BrokerEnv) -> None:
    offset = [0.0]
    key = BrokerPublicKey.load(broker.settings.identity_path)
    session = KeySession(BrokerClient(broker.url, broker_identity=key), broker.provider(),
                         owns_broker=True, clock=lambda: time.time() + offset[0])
    try:
        first, first_result = session.custody_signer()
        offset[0] = 10 * 3600                # far past the broker session's expiry
        second, second_result = session.custody_signer()
        assert first.public_bytes != second.public_bytes
        listed = verify_attestation_result(key, second_result).tee_public_keys
        assert listed[PROVENANCE_KEY_LABEL] == second.public_bytes
        assert verify_attestation_result(key, first_result).session != \
            verify_attestation_result(key, second_result).session
    finally:
        session.close()


def test_the_ledger_head_follows_the_grants(broker: BrokerEnv) -> None:
    session, key = _pinned_session(broker)
    try:
        first = verify_checkpoint(key, session.ledger_head())
        assert session.ledger_head() == first.envelope          # no grant since: cached
        assert session.broker_calls["ledger_head"] == 1
        _, wrapped = broker.wrap_new_key("eu", "acme")
        session.data_key(wrapped, "eu", "acme")                  # a grant
        later = verify_checkpoint(key, session.ledger_head())
        assert later.entries > first.entries
        assert session.broker_calls["ledger_head"] == 2
    finally:
        session.close()


def test_without_a_pinned_broker_key_there_is_no_ledger_head(broker: BrokerEnv) -> None:
    """The client cannot verify a checkpoint it has no key for, so the session offers none
    (an auditor then refuses the statement for its missing ledger head)."""
    session = KeySession(broker.client(), broker.provider(), owns_broker=True)
    try:
        assert session.ledger_head() is None
    finally:
        session.close()
