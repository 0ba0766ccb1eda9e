"""BatchProcessor's lookahead: ``prepare`` then ``complete`` gives what ``process`` gives, each
key is still released once, and custody statements signed together share one ledger head
that covers every grant behind them."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from enclave_workers.batch_processor import BatchProcessor, BatchResult, default_feature_spec
from enclave_workers.features import CompiledSpec, compile_spec
from enclave_workers.key_session import KeySession
from keybroker.checkpoints import verify_checkpoint
from keybroker.client import BrokerClient, BrokerUnavailableError
from keybroker.identity import BrokerPublicKey
from keybroker.ledger import AuditLedger
from tests.enclave_workers.broker_env import BrokerEnv, broker_env, person, seal_json


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerEnv]:
    """A broker of this module's own: its attestations do not spend the attest rate limit
    of the folder's shared broker."""
    with broker_env(tmp_path_factory.mktemp("broker")) as env:
        yield env


@pytest.fixture(scope="module")
def compiled() -> CompiledSpec:
    return compile_spec(default_feature_spec())


@pytest.fixture
def pinned(broker: BrokerEnv) -> Iterator[tuple[KeySession, BrokerPublicKey]]:
    key = BrokerPublicKey.load(broker.settings.identity_path)
    session = KeySession(BrokerClient(broker.url, broker_identity=key), broker.provider(),
                         owns_broker=True)
    try:
        yield session, key
    finally:
        session.close()


def _sealed(broker: BrokerEnv, region: str, start: int, count: int,
            per_key: int) -> list[bytes]:
    sealed = []
    for index in range(start, start + count):
        if (index - start) % per_key == 0:
            data_key, wrapped = broker.wrap_new_key(region, "acme")
        sealed.append(seal_json({**person(index, region), "amount": 20.0}, data_key, wrapped,
                                region, "acme"))
    return sealed


def _summary(result: BatchResult) -> tuple[list[tuple[str, int, int]], list[str]]:
    return (sorted((o.region, o.row_count, o.source_count) for o in result.outputs),
            sorted(d.stage for d in result.dead_letters))


def _ledger_head_of(statement: bytes) -> object:
    payload = json.loads(base64.b64decode(json.loads(statement)["payload"]))
    return payload["predicate"]["ledger_head"]


def test_prepare_then_complete_is_process_and_releases_each_key_once(
        broker: BrokerEnv, compiled: CompiledSpec) -> None:
    first = _sealed(broker, "eu", 0, 12, per_key=4) + _sealed(broker, "us", 12, 6, per_key=3)
    second = _sealed(broker, "eu", 18, 9, per_key=3)
    tampered = bytearray(second[0])
    tampered[-3] ^= 0x01
    second[0] = bytes(tampered)
    session = KeySession(broker.client(), broker.provider())
    processor = BatchProcessor(session, compiled)
    try:
        # The second batch's keys are in flight before the first completes.
        prepared = [processor.prepare(first), processor.prepare(second)]
        results = [processor.complete(p) for p in prepared]
    finally:
        processor.close()
    reference = BatchProcessor(KeySession(broker.client(), broker.provider()), compiled)
    try:
        assert [_summary(r) for r in results] == [_summary(reference.process(first)),
                                                  _summary(reference.process(second))]
    finally:
        reference.close()
    assert _summary(results[1]) == ([("eu", 8, 8)], ["open"])
    assert session.broker_calls["release"] == 3 + 2 + 3   # one per DEK
    assert session.broker_calls["attest"] == 1


def test_an_unavailable_broker_raises_when_the_batch_completes(
        broker: BrokerEnv, compiled: CompiledSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    session = KeySession(broker.client(), broker.provider())
    processor = BatchProcessor(session, compiled)

    def unavailable(*_: object) -> None:
        raise BrokerUnavailableError("broker down")

    try:
        with monkeypatch.context() as patch:
            patch.setattr(session, "data_key", unavailable)
            prepared = processor.prepare(_sealed(broker, "eu", 0, 4, per_key=2))
            with pytest.raises(BrokerUnavailableError):
                processor.complete(prepared)
        # Nothing was dead-lettered for the outage: the batch is whole again on a retry.
        retried = processor.process(_sealed(broker, "eu", 0, 4, per_key=2))
        assert _summary(retried) == ([("eu", 4, 4)], [])
    finally:
        processor.close()


def test_outputs_signed_together_share_one_ledger_head_covering_their_grants(
        broker: BrokerEnv, compiled: CompiledSpec,
        pinned: tuple[KeySession, BrokerPublicKey]) -> None:
    session, key = pinned
    processor = BatchProcessor(session, compiled)
    try:
        outputs = []
        for start, region in ((0, "eu"), (10, "us"), (20, "eu")):   # new grants each time
            result = processor.process(_sealed(broker, region, start, 10, per_key=5))
            outputs += [(o, f"part-{start}-{n}.arrow") for n, o in enumerate(result.outputs)]
        with AuditLedger(broker.settings.ledger_path, read_only=True) as ledger:
            entries_after_grants = ledger.head()[0]
        before = session.broker_calls.get("ledger_head", 0)
        signed = processor.sign_custody_all(outputs)
    finally:
        processor.close()
    assert len(signed) == len(outputs) == 3
    assert session.broker_calls["ledger_head"] == before + 1
    heads = [_ledger_head_of(output.statement) for output in signed]
    assert heads[0] == heads[1] == heads[2]
    assert verify_checkpoint(key, heads[0]).entries >= entries_after_grants
