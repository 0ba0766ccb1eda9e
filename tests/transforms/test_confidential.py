"""ConfidentialProcess on FnApiRunner with a real broker: outputs, dead letters, metrics."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from enclave_workers.basic_features import FeatureSettings
from tests.enclave_workers.broker_env import DENIED_PRODUCER, BrokerEnv, person, seal_json
from transforms import ConfidentialProcess, TeeSettings, TransformConfigError
from transforms.metrics import BROKER_CALLS, NAMESPACE


def _sealed(broker: BrokerEnv, producer: str, indices: range) -> list[bytes]:
    data_key, wrapped = broker.wrap_new_key("eu", producer)
    return [seal_json(person(i, "eu"), data_key, wrapped, "eu", producer) for i in indices]


def test_processes_batches_and_dead_letters_denied_keys(broker: BrokerEnv) -> None:
    good = _sealed(broker, "acme", range(40))
    denied = _sealed(broker, DENIED_PRODUCER, range(40, 43))
    pipeline = beam.Pipeline(runner=FnApiRunner())
    processed = (pipeline | beam.Create(good + denied)
                 | ConfidentialProcess(broker.url,
                                       TeeSettings("simulated-sev-snp", str(broker.dev_tee_dir)),
                                       FeatureSettings(100.0, 10.0), max_batch_size=16))
    sources = (processed[ConfidentialProcess.SEALED]
               | beam.Map(lambda o: o.source_count) | beam.CombineGlobally(sum))
    assert_that(sources, equal_to([40]), label="sources")
    stages = processed[ConfidentialProcess.DEAD_LETTER] | beam.Map(lambda d: d.stage)
    assert_that(stages, equal_to(["key"] * 3), label="dead")
    result = pipeline.run()
    result.wait_until_finish()
    calls = result.metrics().query(
        MetricsFilter().with_namespace(NAMESPACE).with_name(BROKER_CALLS))["counters"]
    total = sum(c.committed for c in calls)
    # challenge + attest + 2 data keys + 1 pseudonym key + >= 1 output key
    assert 6 <= total <= 10


def test_settings_are_checked_before_the_pipeline_runs(broker: BrokerEnv) -> None:
    with pytest.raises(TransformConfigError, match="dev_tee_dir"):
        TeeSettings("simulated-sev-snp", None)
    with pytest.raises(TransformConfigError, match="unknown TEE"):
        TeeSettings("sgx", str(broker.dev_tee_dir))
    with pytest.raises(TransformConfigError, match="batch sizes"):
        ConfidentialProcess(broker.url, TeeSettings("simulated-sev-snp", "x"),
                            FeatureSettings(), min_batch_size=5, max_batch_size=2)
