"""BatchProcessor against a real broker: good records, tampering, denials, bad JSON, batches."""

from __future__ import annotations

import json

import pytest

from enclave_workers.basic_features import FEATURE_SCHEMA, FeatureSettings
from enclave_workers.batch_processor import BatchProcessor, BatchResult
from enclave_workers.key_session import KeySession
from enclave_workers.records import (
    INPUT_SCHEMA_FINGERPRINT,
    parse_records,
    table_from_ipc,
    table_to_ipc,
)
from envelope import DataKey, dek_wrap_aad, open_batch, read_header, seal_batch
from tests.enclave_workers.broker_env import DENIED_PRODUCER, BrokerEnv, person, seal_json


@pytest.fixture
def processor(broker: BrokerEnv) -> BatchProcessor:
    session = KeySession(broker.client(), broker.provider())
    return BatchProcessor(session, FeatureSettings(amount_mean=100.0, amount_std=10.0))


def _sealed_people(broker: BrokerEnv, region: str, producer: str, indices: range,
                   per_key: int = 10) -> list[bytes]:
    sealed = []
    for position, index in enumerate(indices):
        if position % per_key == 0:
            data_key, wrapped = broker.wrap_new_key(region, producer)
        sealed.append(seal_json(person(index, region), data_key, wrapped, region, producer))
    return sealed


def _open_output(broker: BrokerEnv, envelope: bytes):
    header, _ = read_header(envelope)
    secret = broker.keyring.unwrap(header.wrapped_key,
                                   dek_wrap_aad(header.region, header.producer_id))
    return header, table_from_ipc(open_batch(envelope, DataKey(secret)))


def _reconciles(inputs: int, result: BatchResult) -> bool:
    return inputs == (sum(o.source_count for o in result.outputs)
                      + sum(d.records for d in result.dead_letters))


def _assert_no_plaintext(result: BatchResult) -> None:
    blobs = [o.envelope for o in result.outputs] + [
        d.sealed + d.reason.encode() for d in result.dead_letters]
    for blob in blobs:
        assert b"cust-secret" not in blob
        assert b"Zebulon" not in blob
        assert b"private.example" not in blob


def test_good_records_become_one_sealed_batch_per_region_and_producer(
        broker: BrokerEnv, processor: BatchProcessor) -> None:
    inputs = (_sealed_people(broker, "eu", "acme", range(0, 25))
              + _sealed_people(broker, "us", "acme", range(25, 40))
              + _sealed_people(broker, "eu", "globex", range(40, 45)))
    result = processor.process(inputs)
    assert result.dead_letters == []
    assert sorted((o.region, o.producer_id, o.row_count, o.source_count)
                  for o in result.outputs) == [("eu", "acme", 25, 25), ("eu", "globex", 5, 5),
                                               ("us", "acme", 15, 15)]
    for output in result.outputs:
        header, table = _open_output(broker, output.envelope)
        assert header.kind == "batch"
        assert header.region == output.region
        assert header.context["sealbeam.kind"] == "features"
        assert header.context["sealbeam.source_count"] == str(output.source_count)
        assert header.wrapped_key.kek.uri == broker.keyring.kek_for_region(output.region)
        assert table.schema == FEATURE_SCHEMA
        assert set(table.column("region").to_pylist()) == {output.region}
    _, eu_acme = _open_output(broker, next(o.envelope for o in result.outputs
                                           if (o.region, o.producer_id) == ("eu", "acme")))
    assert eu_acme.column("amount_z").to_pylist()[:3] == [0.0, 0.1, 0.2]
    _assert_no_plaintext(result)
    assert _reconciles(len(inputs), result)


def test_each_key_is_released_once_for_many_records(broker: BrokerEnv) -> None:
    session = KeySession(broker.client(), broker.provider())
    processor = BatchProcessor(session, FeatureSettings())
    processor.process(_sealed_people(broker, "eu", "acme", range(200), per_key=100))
    assert session.broker_calls["release"] == 2
    assert session.broker_calls["attest"] == 1


def test_a_tampered_record_is_a_dead_letter_with_its_sealed_bytes(
        broker: BrokerEnv, processor: BatchProcessor) -> None:
    inputs = _sealed_people(broker, "eu", "acme", range(5))
    tampered = bytearray(inputs[2])
    tampered[-5] ^= 0x01
    inputs[2] = bytes(tampered)
    result = processor.process(inputs)
    assert [(o.row_count, o.source_count) for o in result.outputs] == [(4, 4)]
    [dead] = result.dead_letters
    assert dead.stage == "open"
    assert dead.reason == "envelope failed authentication"
    assert dead.sealed == inputs[2]
    assert dead.record_id == read_header(inputs[2])[0].envelope_id.hex()
    assert _reconciles(len(inputs), result)


def test_a_key_the_policy_denies_dead_letters_its_records(
        broker: BrokerEnv, processor: BatchProcessor) -> None:
    good = _sealed_people(broker, "us", "acme", range(3))
    denied = _sealed_people(broker, "us", DENIED_PRODUCER, range(3, 7))
    result = processor.process(good + denied)
    assert [o.source_count for o in result.outputs] == [3]
    assert len(result.dead_letters) == 4
    assert {d.stage for d in result.dead_letters} == {"key"}
    assert all("BrokerDeniedError" in d.reason for d in result.dead_letters)
    assert {d.sealed for d in result.dead_letters} == set(denied)
    _assert_no_plaintext(result)


def test_bad_json_schema_and_region_problems_are_isolated(
        broker: BrokerEnv, processor: BatchProcessor) -> None:
    data_key, wrapped = broker.wrap_new_key("eu", "acme")
    inputs = [
        seal_json(person(0, "eu"), data_key, wrapped, "eu", "acme"),
        seal_json(b"{this is not json", data_key, wrapped, "eu", "acme"),
        seal_json({**person(2, "eu"), "amount": None}, data_key, wrapped, "eu", "acme"),
        seal_json(person(3, "us"), data_key, wrapped, "eu", "acme"),    # claims another region
        seal_json(person(4, "eu"), data_key, wrapped, "eu", "acme"),
        b"not an envelope at all",
    ]
    result = processor.process(inputs)
    assert [o.source_count for o in result.outputs] == [2]
    by_stage = {d.stage: d for d in result.dead_letters}
    assert set(by_stage) == {"decode", "schema", "parse"}
    schema_reasons = sorted(d.reason for d in result.dead_letters if d.stage == "schema")
    assert any("amount" in r for r in schema_reasons)
    assert any("region" in r for r in schema_reasons)
    assert by_stage["parse"].sealed == b""
    assert by_stage["parse"].record_id.startswith("sha256:")
    assert _reconciles(len(inputs), result)
    _assert_no_plaintext(result)


def test_sealed_batches_are_opened_like_records(broker: BrokerEnv,
                                                processor: BatchProcessor) -> None:
    table = parse_records([json.dumps(person(i, "us")).encode() for i in range(30)]).table
    data_key, wrapped = broker.wrap_new_key("us", "globex")
    batch = seal_batch(table_to_ipc(table), data_key=data_key, wrapped_key=wrapped, region="us",
                       producer_id="globex", schema_fingerprint=INPUT_SCHEMA_FINGERPRINT,
                       context={"sealbeam.kind": "partner-records"})
    records = _sealed_people(broker, "us", "globex", range(30, 35))
    result = processor.process([batch, *records])
    assert result.dead_letters == []
    [output] = result.outputs
    assert (output.row_count, output.source_count) == (35, 6)
    assert _reconciles(6, result)

