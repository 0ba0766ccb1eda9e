"""ConfidentialProcess on FnApiRunner with a real broker: spec, outputs, dead letters, metrics."""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from enclave_workers.batch_processor import PARQUET_PME, default_feature_spec
from enclave_workers.features import FeatureSpec
from keybroker.ledger import AuditLedger
from tests.enclave_workers.broker_env import DENIED_PRODUCER, BrokerEnv, person, seal_json
from transforms import ConfidentialProcess, TeeSettings, TransformConfigError
from transforms.metrics import BROKER_CALLS, NAMESPACE, ROWS_SUPPRESSED


def _sealed(broker: BrokerEnv, producer: str, amounts: list[float], start: int = 0
            ) -> list[bytes]:
    data_key, wrapped = broker.wrap_new_key("eu", producer)
    return [seal_json({**person(start + i, "eu"), "amount": amount}, data_key, wrapped, "eu",
                      producer) for i, amount in enumerate(amounts)]


def _tee(broker: BrokerEnv) -> TeeSettings:
    return TeeSettings("simulated-sev-snp", str(broker.dev_tee_dir))


def _counter(result, name: str) -> int:
    counters = result.metrics().query(
        MetricsFilter().with_namespace(NAMESPACE).with_name(name))["counters"]
    return sum(c.committed for c in counters)


def test_processes_batches_dead_letters_violations_and_counts_suppressions(
        broker: BrokerEnv) -> None:
    good = _sealed(broker, "acme", [20.0] * 40 + [700.0])           # the 700 row is alone
    bad = _sealed(broker, "acme", [-1.0], start=41)
    denied = _sealed(broker, DENIED_PRODUCER, [20.0] * 3, start=50)
    transform = ConfidentialProcess(broker.url, _tee(broker), default_feature_spec(),
                                    max_batch_size=64, key_shards=1)
    pipeline = beam.Pipeline(runner=FnApiRunner())
    processed = pipeline | beam.Create(good + bad + denied) | transform
    sources = (processed[ConfidentialProcess.SEALED]
               | beam.Map(lambda o: (o.source_count, o.row_count, o.rows_suppressed))
               | beam.CombineGlobally(lambda triples: tuple(map(sum, zip(*triples, strict=False)))))
    assert_that(sources, equal_to([(41, 40, 1)]), label="sources")
    stages = processed[ConfidentialProcess.DEAD_LETTER] | beam.Map(
        lambda d: (d.stage, d.reason.split(":")[0]))
    assert_that(stages, equal_to([("key", "data key not released")] * 3
                                 + [("schema", "column amount")]), label="dead")
    result = pipeline.run()
    result.wait_until_finish()
    assert _counter(result, ROWS_SUPPRESSED) == 1
    # challenge + attest + 2 data keys + 1 tenant key + 1 output key
    assert 6 <= _counter(result, BROKER_CALLS) <= 10
    with AuditLedger(broker.settings.ledger_path) as ledger:
        generated = [e for e in ledger.entries() if e.event == "generate"]
    assert generated[-1].details["spec_fingerprint"] == transform.compiled.fingerprint


def test_parquet_pme_outputs_get_fresh_master_keys_per_file(broker: BrokerEnv) -> None:
    transform = ConfidentialProcess(broker.url, _tee(broker), default_feature_spec(),
                                    output_format=PARQUET_PME, max_batch_size=8)
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        outputs = (pipeline | beam.Create(_sealed(broker, "globex", [20.0] * 16))
                   | transform)
        shapes = outputs[ConfidentialProcess.SEALED] | beam.Map(
            lambda o: (o.output_format, o.payload[:4], o.row_count))
        assert_that(shapes, equal_to([(PARQUET_PME, b"PARE", 8)] * 2))


def test_settings_and_specs_are_checked_before_the_pipeline_runs(broker: BrokerEnv) -> None:
    spec = default_feature_spec()
    with pytest.raises(TransformConfigError, match="dev_tee_dir"):
        TeeSettings("simulated-sev-snp", None)
    with pytest.raises(TransformConfigError, match="unknown TEE"):
        TeeSettings("sgx", str(broker.dev_tee_dir))
    with pytest.raises(TransformConfigError, match="batch sizes"):
        ConfidentialProcess(broker.url, _tee(broker), spec, max_batch_size=0)
    with pytest.raises(TransformConfigError, match="shards"):
        ConfidentialProcess(broker.url, _tee(broker), spec, key_shards=0)
    with pytest.raises(TransformConfigError, match="output format"):
        ConfidentialProcess(broker.url, _tee(broker), spec, output_format="csv")
    with pytest.raises(TransformConfigError, match="FeatureSpec"):
        ConfidentialProcess(broker.url, _tee(broker), {"version": 1})   # type: ignore[arg-type]
    document = spec.to_json_document()
    document["features"][0]["input"] = "nowhere"
    with pytest.raises(Exception, match="nowhere"):
        ConfidentialProcess(broker.url, _tee(broker), FeatureSpec.from_dict(document))


def test_parquet_pme_refuses_a_spec_whose_columns_pme_cannot_name(broker: BrokerEnv) -> None:
    spec = FeatureSpec.from_dict({
        "version": 1,
        "input": {"columns": [{"name": "a,b", "type": "string"},
                              {"name": "id", "type": "string", "identifier": True}],
                  "unconsumed_columns": "passthrough"},
        "features": [{"name": "p", "op": "pseudonymize", "input": "id", "key": "tenant"}],
    })
    ConfidentialProcess(broker.url, _tee(broker), spec)          # sealed-arrow: fine
    with pytest.raises(TransformConfigError, match="parquet-pme cannot encrypt"):
        ConfidentialProcess(broker.url, _tee(broker), spec, output_format=PARQUET_PME)


def test_an_envelope_routed_by_facts_its_header_does_not_state_is_a_route_dead_letter(
        broker: BrokerEnv) -> None:
    """The routing facts reach the TEE beside the bytes (``SealedEnvelope``): one whose
    region was forged outside is never processed (stage ``route``), the others are."""
    from transforms.parse import read_sealed  # the facts ParseSealed would have found

    good = [read_sealed(e) for e in _sealed(broker, "acme", [20.0] * 12)]
    forged = dataclasses.replace(good[0], region="us")
    transform = ConfidentialProcess(broker.url, _tee(broker), default_feature_spec(),
                                    max_batch_size=64, key_shards=1)
    pipeline = beam.Pipeline(runner=FnApiRunner())
    processed = pipeline | beam.Create([forged, *good[1:]]) | transform
    outputs = processed[ConfidentialProcess.SEALED] | beam.Map(
        lambda o: (o.region, o.source_count))
    assert_that(outputs, equal_to([("eu", 11)]), label="outputs")
    dead = processed[ConfidentialProcess.DEAD_LETTER] | beam.Map(
        lambda d: (d.stage, d.record_id, d.sealed))
    assert_that(dead, equal_to([("route", forged.envelope_id.hex(), forged.data)]),
                label="dead")
    pipeline.run().wait_until_finish()
