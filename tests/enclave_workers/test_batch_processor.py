"""BatchProcessor against a real broker: the feature spec, violations, k-anonymity, PME, denials."""

from __future__ import annotations

import hashlib
import hmac
import json

import pyarrow as pa
import pytest

from enclave_workers.batch_processor import (
    DEAD_ROWS_KIND,
    PARQUET_PME,
    SPEC_CONTEXT_KEY,
    BatchConfigError,
    BatchProcessor,
    BatchResult,
    broker_key_name,
    default_feature_spec,
)
from enclave_workers.features import (
    FINGERPRINT_METADATA_KEY,
    CompiledSpec,
    FeatureSpec,
    compile_spec,
)
from enclave_workers.features.pme import pseudonymized_columns
from enclave_workers.key_session import KeySession
from enclave_workers.pme_keys import PmeKeyScopeError
from enclave_workers.records import (
    INPUT_SCHEMA_FINGERPRINT,
    parse_records,
    table_from_ipc,
    table_to_ipc,
)
from envelope import DataKey, dek_wrap_aad, open_batch, parse_envelope, read_header, seal_batch
from tests.enclave_workers.broker_env import DENIED_PRODUCER, BrokerEnv, person, seal_json
from tests.envelope.parse_counting import count_header_parses

SECRETS = (b"cust-secret", b"Zebulon", b"private.example")


@pytest.fixture(scope="module")
def compiled() -> CompiledSpec:
    return compile_spec(default_feature_spec())


@pytest.fixture
def processor(broker: BrokerEnv, compiled: CompiledSpec) -> BatchProcessor:
    return BatchProcessor(KeySession(broker.client(), broker.provider()), compiled)


def _row(index: int, region: str, amount: float = 20.0) -> dict[str, object]:
    """A partner record; amounts of 20 share one k-anonymity band, so nothing is suppressed."""
    return {**person(index, region), "amount": amount}


def _sealed(broker: BrokerEnv, region: str, producer: str, rows: list[dict[str, object]],
            per_key: int = 10) -> list[bytes]:
    sealed = []
    for position, row in enumerate(rows):
        if position % per_key == 0:
            data_key, wrapped = broker.wrap_new_key(region, producer)
        sealed.append(seal_json(row, data_key, wrapped, region, producer))
    return sealed


def _sealed_batch(broker: BrokerEnv, region: str, producer: str,
                  rows: list[dict[str, object]]) -> bytes:
    table = parse_records([json.dumps(r).encode() for r in rows]).table
    data_key, wrapped = broker.wrap_new_key(region, producer)
    return seal_batch(table_to_ipc(table), data_key=data_key, wrapped_key=wrapped, region=region,
                      producer_id=producer, schema_fingerprint=INPUT_SCHEMA_FINGERPRINT,
                      context={"sealbeam.kind": "partner-records"})


def _open(broker: BrokerEnv, envelope: bytes):
    header, _ = read_header(envelope)
    secret = broker.keyring.unwrap(header.wrapped_key,
                                   dek_wrap_aad(header.region, header.producer_id))
    return header, table_from_ipc(open_batch(envelope, DataKey(secret)))


def _reconciles(inputs: int, result: BatchResult) -> bool:
    return inputs == (sum(o.source_count for o in result.outputs)
                      + sum(d.records for d in result.dead_letters))


def _assert_no_plaintext(result: BatchResult) -> None:
    blobs = [o.payload for o in result.outputs] + [
        d.sealed + d.reason.encode() for d in result.dead_letters]
    for blob in blobs:
        for secret in SECRETS:
            assert secret not in blob


def _tenant_key(broker: BrokerEnv, producer: str) -> bytes:
    session = KeySession(broker.client(), broker.provider())
    return session.named_key(broker_key_name("tenant", producer))


def test_the_spec_runs_and_every_output_header_carries_its_fingerprint(
        broker: BrokerEnv, processor: BatchProcessor, compiled: CompiledSpec) -> None:
    inputs = (_sealed(broker, "eu", "acme", [_row(i, "eu") for i in range(25)])
              + _sealed(broker, "us", "acme", [_row(i, "us") for i in range(25, 40)])
              + _sealed(broker, "eu", "globex", [_row(i, "eu") for i in range(40, 45)]))
    result = processor.process(inputs)
    assert result.dead_letters == []
    assert sorted((o.region, o.producer_id, o.row_count, o.source_count)
                  for o in result.outputs) == [("eu", "acme", 25, 25), ("eu", "globex", 5, 5),
                                               ("us", "acme", 15, 15)]
    for output in result.outputs:
        header, table = _open(broker, output.payload)
        assert header.schema_fingerprint == compiled.fingerprint_bytes
        assert header.context[SPEC_CONTEXT_KEY] == compiled.fingerprint
        assert header.context["sealbeam.kind"] == "features"
        assert header.envelope_id == output.output_id
        assert header.wrapped_key.kek.uri == broker.keyring.kek_for_region(output.region)
        assert table.schema.names == compiled.output_schema.names
        assert table.schema.metadata[FINGERPRINT_METADATA_KEY] == compiled.fingerprint.encode()
        assert not {"customer_id", "name", "email"} & set(table.column_names)
        assert set(table.column("region").to_pylist()) == {output.region}
    _assert_no_plaintext(result)
    assert _reconciles(len(inputs), result)


def test_pseudonyms_use_the_producers_own_tenant_key(broker: BrokerEnv,
                                                     processor: BatchProcessor) -> None:
    rows = [_row(i, "eu") for i in range(3)]
    result = processor.process(_sealed(broker, "eu", "acme", rows)
                               + _sealed(broker, "eu", "globex", rows))
    by_producer = {o.producer_id: _open(broker, o.payload)[1] for o in result.outputs}
    for producer in ("acme", "globex"):
        key = _tenant_key(broker, producer)
        expected = [hmac.new(key, str(r["customer_id"]).encode(), hashlib.sha256).hexdigest()
                    for r in rows]
        assert by_producer[producer].column("customer_pseudonym").to_pylist() == expected
    assert broker_key_name("tenant", "acme") == "pseudonym/acme"
    assert broker_key_name("salt", "acme") == "salt/acme"


def test_a_violating_record_is_dead_lettered_with_column_and_reason(
        broker: BrokerEnv, processor: BatchProcessor) -> None:
    rows = [_row(i, "eu") for i in range(8)]       # 4 good rows: k-anonymity (k=3) keeps them
    rows[1]["amount"] = -5.0
    rows[2]["event_time"] = "yesterday at noon"
    rows[3]["region"] = "us"                                    # claims another region
    rows[4]["customer_id"] = None
    inputs = _sealed(broker, "eu", "acme", rows)
    result = processor.process(inputs)
    [output] = result.outputs
    assert (output.row_count, output.source_count, output.rows_suppressed) == (4, 4, 0)
    reasons = {d.sealed: d for d in result.dead_letters}
    assert set(reasons) == {inputs[1], inputs[2], inputs[3], inputs[4]}
    assert {d.stage for d in result.dead_letters} == {"schema"}
    assert reasons[inputs[1]].reason == "column amount: below the declared minimum 0"
    assert reasons[inputs[2]].reason.startswith("column event_time: wrong type")
    assert reasons[inputs[3]].reason == "column region: differs from the envelope's region"
    assert reasons[inputs[4]].reason == "column customer_id: null in a non-nullable column"
    assert all(d.records == 1 for d in result.dead_letters)
    _assert_no_plaintext(result)
    assert _reconciles(len(inputs), result)


def test_a_batch_keeps_its_good_rows_and_reseals_the_bad_ones_for_its_region(
        broker: BrokerEnv, processor: BatchProcessor) -> None:
    rows = [_row(i, "us") for i in range(10)]
    rows[3]["amount"] = 2_000_000.0
    rows[7]["customer_id"] = None
    batch = _sealed_batch(broker, "us", "globex", rows)
    result = processor.process([batch])
    [output] = result.outputs
    assert (output.row_count, output.source_count) == (8, 1)
    [dead] = result.dead_letters
    assert (dead.stage, dead.records, dead.rows) == ("schema", 0, 2)
    assert dead.record_id == read_header(batch)[0].envelope_id.hex()
    assert dead.reason == ("2 of 10 rows break the spec: row 3: column amount: above the "
                           "declared maximum 1000000 | row 7: column customer_id: null in a "
                           "non-nullable column")
    header, dead_rows = _open(broker, dead.sealed)
    assert header.region == "us"
    assert header.wrapped_key.kek.uri == broker.keyring.kek_for_region("us")
    assert header.context["sealbeam.kind"] == DEAD_ROWS_KIND
    assert header.context["sealbeam.rows"] == "2"
    assert dead_rows.column("customer_id").to_pylist() == [rows[3]["customer_id"], None]
    assert dead_rows.column("name").to_pylist() == [rows[3]["name"], rows[7]["name"]]
    _assert_no_plaintext(result)
    assert _reconciles(1, result)


def test_a_batch_whose_rows_all_break_the_spec_is_one_whole_dead_letter(
        broker: BrokerEnv, processor: BatchProcessor) -> None:
    batch = _sealed_batch(broker, "eu", "acme", [{**_row(i, "eu"), "amount": -1.0}
                                                 for i in range(3)])
    result = processor.process([batch])
    assert result.outputs == []
    [dead] = result.dead_letters
    assert (dead.sealed, dead.records, dead.rows) == (batch, 1, 0)
    assert dead.reason.startswith("all 3 rows break the spec: row 0: column amount:")


def test_k_anonymity_suppressions_are_counted_and_reconcile(
        broker: BrokerEnv, processor: BatchProcessor) -> None:
    # bands by amount: 5 (band 0) once, 700 (band 4) twice -> 3 suppressed; 20 (band 1) kept
    amounts = [20.0] * 5 + [5.0, 700.0, 700.0]
    inputs = _sealed(broker, "eu", "acme", [_row(i, "eu", a) for i, a in enumerate(amounts)])
    result = processor.process(inputs)
    [output] = result.outputs
    assert (output.row_count, output.rows_suppressed, output.source_count) == (5, 3, 8)
    assert result.rows_suppressed == 3
    assert result.dead_letters == []
    assert _reconciles(len(inputs), result)


def test_when_every_row_is_suppressed_an_empty_output_still_accounts_for_them(
        broker: BrokerEnv, processor: BatchProcessor, compiled: CompiledSpec) -> None:
    inputs = _sealed(broker, "us", "acme", [_row(0, "us", 5.0), _row(1, "us", 700.0)])
    result = processor.process(inputs)
    [output] = result.outputs
    assert (output.row_count, output.rows_suppressed, output.source_count) == (0, 2, 2)
    _, table = _open(broker, output.payload)
    assert table.num_rows == 0 and table.schema.names == compiled.output_schema.names
    assert _reconciles(len(inputs), result)


def test_parquet_pme_output_with_two_fresh_master_keys(broker: BrokerEnv,
                                                       compiled: CompiledSpec) -> None:
    session = KeySession(broker.client(), broker.provider(), output_key_max_envelopes=1)
    processor = BatchProcessor(session, compiled, output_format=PARQUET_PME)
    inputs = _sealed(broker, "eu", "acme", [_row(i, "eu") for i in range(6)])
    result = processor.process(inputs)
    [output] = result.outputs
    assert output.output_format == PARQUET_PME
    assert output.payload[:4] == b"PARE" and output.payload[-4:] == b"PARE"
    assert (output.row_count, output.source_count) == (6, 6)
    assert session.broker_calls["generate"] == 2
    _assert_no_plaintext(result)
    assert pseudonymized_columns(compiled) == ("customer_pseudonym",)


def test_parquet_pme_refuses_one_dek_for_both_master_keys(broker: BrokerEnv,
                                                          compiled: CompiledSpec) -> None:
    session = KeySession(broker.client(), broker.provider())     # reuses its output key
    processor = BatchProcessor(session, compiled, output_format=PARQUET_PME)
    with pytest.raises(PmeKeyScopeError, match="share one output DEK"):
        processor.process(_sealed(broker, "eu", "acme", [_row(0, "eu")]))


def test_a_key_the_policy_denies_dead_letters_its_records(
        broker: BrokerEnv, processor: BatchProcessor) -> None:
    good = _sealed(broker, "us", "acme", [_row(i, "us") for i in range(3)])
    denied = _sealed(broker, "us", DENIED_PRODUCER, [_row(i, "us") for i in range(3, 7)])
    result = processor.process(good + denied)
    assert [o.source_count for o in result.outputs] == [3]
    assert len(result.dead_letters) == 4
    assert {d.stage for d in result.dead_letters} == {"key"}
    assert all("BrokerDeniedError" in d.reason for d in result.dead_letters)
    assert {d.sealed for d in result.dead_letters} == set(denied)


def test_tampering_bad_json_and_non_envelopes_are_isolated(
        broker: BrokerEnv, processor: BatchProcessor) -> None:
    inputs = _sealed(broker, "eu", "acme", [_row(i, "eu") for i in range(4)])
    data_key, wrapped = broker.wrap_new_key("eu", "acme")
    tampered = bytearray(inputs[2])
    tampered[-5] ^= 0x01
    inputs[2] = bytes(tampered)
    inputs += [seal_json(b"{this is not json", data_key, wrapped, "eu", "acme"),
               seal_json({**_row(9, "eu"), "amount": "a lot"}, data_key, wrapped, "eu", "acme"),
               b"not an envelope at all"]
    result = processor.process(inputs)
    assert [o.source_count for o in result.outputs] == [3]
    stages = sorted(d.stage for d in result.dead_letters)
    assert stages == ["decode", "decode", "open", "parse"]
    wrong_type = next(d for d in result.dead_letters if "amount" in d.reason)
    assert wrong_type.stage == "decode" and "a lot" not in wrong_type.reason
    assert _reconciles(len(inputs), result)
    _assert_no_plaintext(result)


def test_a_batch_lacking_a_declared_column_is_a_schema_dead_letter(
        broker: BrokerEnv, processor: BatchProcessor) -> None:
    table = pa.table({"customer_id": ["a"], "amount": [1.0]})
    data_key, wrapped = broker.wrap_new_key("eu", "acme")
    batch = seal_batch(table_to_ipc(table), data_key=data_key, wrapped_key=wrapped, region="eu",
                       producer_id="acme", schema_fingerprint=INPUT_SCHEMA_FINGERPRINT,
                       context={})
    [dead] = processor.process([batch]).dead_letters
    assert dead.stage == "schema" and "declared column" in dead.reason


def test_each_key_is_released_once_for_many_records(broker: BrokerEnv,
                                                    compiled: CompiledSpec) -> None:
    session = KeySession(broker.client(), broker.provider())
    BatchProcessor(session, compiled).process(
        _sealed(broker, "eu", "acme", [_row(i, "eu") for i in range(200)], per_key=100))
    assert session.broker_calls["release"] == 2
    assert session.broker_calls["release_named"] == 1
    assert session.broker_calls["attest"] == 1


def test_a_spec_naming_another_key_asks_the_broker_for_it_per_tenant(
        broker: BrokerEnv) -> None:
    document = default_feature_spec().to_json_document()
    document["features"][0]["key"] = "salt"
    compiled = compile_spec(FeatureSpec.from_dict(document))
    processor = BatchProcessor(KeySession(broker.client(), broker.provider()), compiled)
    inputs = _sealed(broker, "eu", "acme", [_row(0, "eu")])
    [dead] = processor.process(inputs).dead_letters
    assert dead.stage == "key" and "spec key not released" in dead.reason
    assert "'salt/acme'" in dead.reason


def test_an_unknown_output_format_is_refused(broker: BrokerEnv,
                                             compiled: CompiledSpec) -> None:
    with pytest.raises(BatchConfigError, match="parquet-pme"):
        BatchProcessor(KeySession(broker.client(), broker.provider()), compiled,
                       output_format="csv")


def test_processing_n_envelopes_parses_n_headers_not_2n(
        broker: BrokerEnv, processor: BatchProcessor, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = (_sealed(broker, "eu", "acme", [_row(i, "eu") for i in range(12)])
              + _sealed(broker, "us", "acme", [_row(i, "us") for i in range(12, 20)])
              + [_sealed_batch(broker, "eu", "globex", [_row(i, "eu") for i in range(20, 25)])])
    header_parses = count_header_parses(monkeypatch)
    sorted_records = _count_sorted_records(monkeypatch)
    full_decodes = _count_variable_part_decodes(monkeypatch)
    result = processor.process(inputs)
    assert sorted((o.region, o.producer_id, o.source_count) for o in result.outputs) == [
        ("eu", "acme", 12), ("eu", "globex", 1), ("us", "acme", 8)]
    assert result.dead_letters == []
    # The 20 v1 records are read once each by the record sorter (no parse_header), the
    # batch once by parse_header; the variable part is decoded once per distinct header.
    assert sorted_records[0] == 20
    assert header_parses[0] == 1
    assert full_decodes[0] == 4   # eu/acme: 2 DEKs, us/acme: 1, the batch: 1


def _count_sorted_records(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from envelope import RecordSorter
    original = RecordSorter.add
    taken = [0]

    def counting_add(self, envelope, tag=None):  # type: ignore[no-untyped-def]
        took = original(self, envelope, tag)
        taken[0] += took
        return took

    monkeypatch.setattr(RecordSorter, "add", counting_add)
    return taken


def _count_variable_part_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import envelope.header as header_module
    import envelope.record_groups as groups_module
    original = groups_module.decode_variable_part
    calls = [0]

    def counting(view):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return original(view)

    monkeypatch.setattr(groups_module, "decode_variable_part", counting)
    monkeypatch.setattr(header_module, "decode_variable_part", counting)
    monkeypatch.setattr(header_module, "_known_suffixes", ())
    return calls


def test_already_parsed_envelopes_are_not_parsed_again(
        broker: BrokerEnv, processor: BatchProcessor, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = _sealed(broker, "eu", "acme", [_row(i, "eu") for i in range(6)])
    parsed = [parse_envelope(envelope) for envelope in inputs]
    tampered = bytearray(inputs[0])
    tampered[-3] ^= 0x01
    parsed[0] = parse_envelope(bytes(tampered))
    header_parses = count_header_parses(monkeypatch)
    result = processor.process(parsed)
    assert header_parses[0] == 0
    assert [o.source_count for o in result.outputs] == [5]
    [dead] = result.dead_letters
    assert dead.stage == "open" and dead.sealed == bytes(tampered)
    assert dead.record_id == parsed[0].header.record_id
