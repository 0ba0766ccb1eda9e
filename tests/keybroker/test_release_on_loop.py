"""A release on the event loop (``KeyBrokerService.release_on_loop``): only a granted release
of a cached DEK is answered there, its ledger entry durable first; everything else is left,
unrecorded, to ``release`` on a thread. Over HTTP, both paths answer alike."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT, SimulatedSnpProvider
from envelope.keys import DataKey, dek_wrap_aad
from envelope.transport import TeeKeyPair, release_info, report_data_binding
from keybroker.client import RELEASE_PURPOSE, BrokerClient
from keybroker.config import BrokerSettings, init_state
from keybroker.dek_cache import DEK_FROM_CACHE, DEK_FROM_KMS
from keybroker.kms.local import LocalKeyring
from keybroker.kms.named_keys import NamedKeyStore
from keybroker.kms.registry import KmsRegistry
from keybroker.ledger import AuditLedger
from keybroker.ledger_rows import LedgerError
from keybroker.policy import ReleasePolicy
from keybroker.service.schemas import AttestRequest, ReleaseRequest
from keybroker.service.service import KeyBrokerService
from keybroker.service.verifiers import build_verifiers
from tests.keybroker.test_dek_cache import CountingKeyring, SpyPolicy
from tests.support.broker import attest_simulated_worker, ledger_entries, start_broker

AAD_EU = dek_wrap_aad("eu", "acme")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Setup:
    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.spy = SpyPolicy(ReleasePolicy.load(settings.policy_path))
        self.keyring = CountingKeyring(LocalKeyring.open(settings.keyring_path))
        self.service = KeyBrokerService(
            settings=settings,
            policy=self.spy,  # type: ignore[arg-type]
            kms=KmsRegistry(settings, backends={"local": self.keyring}),
            verifiers=build_verifiers(settings, self.spy._policy),
            ledger=AuditLedger(settings.ledger_path),
            named_keys=NamedKeyStore.open(settings.named_keys_path),
        )
        self.tee_keys = TeeKeyPair.generate()
        nonce = base64.b64decode(self.service.challenge().nonce)
        assert settings.dev_chain_dir is not None
        evidence = SimulatedSnpProvider(settings.dev_chain_dir).collect(
            report_data_binding(nonce, self.tee_keys.public_bytes()))
        self.session = self.service.attest(AttestRequest(
            nonce=b64(nonce), tee=evidence.tee, evidence=b64(evidence.evidence),
            endorsements={name: b64(value) for name, value in evidence.endorsements.items()},
            tee_public_key=b64(self.tee_keys.public_bytes()),
        ))
        self.data_key = DataKey.generate()
        wrapped = self.keyring.wrap("local://keyring/eu/kek-1", self.data_key.secret_bytes(),
                                    AAD_EU)
        self.request = ReleaseRequest(
            session_id=self.session.session_id, kek_uri=wrapped.kek.uri,
            kek_version=wrapped.kek.version, wrapped_dek=b64(wrapped.ciphertext),
            region="eu", producer_id="acme")

    def releases(self) -> list[tuple[str, object]]:
        return [(entry.decision, entry.details.get("dek_source"))
                for entry in self.service.ledger.entries() if entry.event == "release"]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    built = Setup(init_state(tmp_path / "state", allowed_measurements=(DEV_MEASUREMENT,)))
    yield built
    built.service.close()


def test_only_a_cached_dek_is_released_on_the_loop_and_it_is_recorded_first(
    setup: Setup,
) -> None:
    assert asyncio.run(setup.service.release_on_loop(setup.request)) is None
    assert setup.releases() == [] and setup.keyring.unwraps == 0  # nothing done, nothing kept
    setup.service.release(setup.request)  # the thread: through the KMS
    reply = asyncio.run(setup.service.release_on_loop(setup.request))
    assert reply is not None and setup.keyring.unwraps == 1
    assert setup.releases() == [("granted", DEK_FROM_KMS), ("granted", DEK_FROM_CACHE)]
    opened = setup.tee_keys.open(base64.b64decode(reply.sealed_dek),
                                 release_info(RELEASE_PURPOSE, reply.key_id))
    assert opened == setup.data_key.secret_bytes()
    assert reply.grant.payloadType and reply.grant.signatures


def test_a_refused_release_is_left_unrecorded_to_the_thread_which_records_it(
    setup: Setup,
) -> None:
    setup.service.release(setup.request)  # cached now
    setup.spy.deny = True
    assert asyncio.run(setup.service.release_on_loop(setup.request)) is None
    assert setup.releases() == [("granted", DEK_FROM_KMS)]
    with pytest.raises(Exception, match="switched off by the test"):
        setup.service.release(setup.request)
    assert setup.releases() == [("granted", DEK_FROM_KMS), ("denied", None)]


def test_a_grant_whose_entry_cannot_be_written_is_not_given(setup: Setup) -> None:
    setup.service.release(setup.request)

    def full(_appends: object) -> list[object]:
        raise LedgerError("the disk is full")

    setup.service.ledger.append_prepared = full  # type: ignore[method-assign]
    with pytest.raises(LedgerError, match="disk is full"):
        asyncio.run(setup.service.release_on_loop(setup.request))


def test_over_http_the_loop_and_the_thread_answer_alike(tmp_path: Path) -> None:
    with start_broker(tmp_path / "state") as broker, BrokerClient(broker.url) as client:
        tee_keys, session = attest_simulated_worker(client, broker.settings)
        keyring = LocalKeyring.open(broker.settings.keyring_path)
        dek = bytes(range(32))
        wrapped = keyring.wrap(keyring.kek_for_region("eu"), dek, AAD_EU)
        info = release_info(RELEASE_PURPOSE, wrapped.key_id)
        first = client.release(session, wrapped, "eu", "acme")   # a thread: the KMS
        second = client.release(session, wrapped, "eu", "acme")  # the loop: cached
        assert tee_keys.open(first, info) == tee_keys.open(second, info) == dek
        body = {"session_id": session.id, "kek_uri": wrapped.kek.uri,
                "kek_version": wrapped.kek.version, "wrapped_dek": b64(wrapped.ciphertext),
                "region": "eu", "producer_id": "acme"}
        replies = [httpx.post(f"{broker.url}/v1/keys/release", json=body) for _ in range(2)]
        assert [reply.status_code for reply in replies] == [200, 200]
        assert replies[0].headers["content-type"] == replies[1].headers["content-type"]
        assert set(replies[0].json()) == set(replies[1].json()) == {
            "sealed_dek", "key_id", "simulated", "grant"}
        refused = httpx.post(f"{broker.url}/v1/keys/release",
                             json={**body, "region": "us"})  # the DEK was wrapped for eu
        assert refused.status_code >= 400 and set(refused.json()) == {"error", "reason"}
    sources = [(entry.decision, entry.details.get("dek_source"))
               for entry in ledger_entries(broker.settings, "release")]
    assert sources[:4] == [("granted", DEK_FROM_KMS)] + [("granted", DEK_FROM_CACHE)] * 3
    assert sources[4][0] == "denied"
