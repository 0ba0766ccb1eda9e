"""DeduplicateEnvelopes on bounded input (FnApiRunner) and on a stream (TestStream)."""

from __future__ import annotations

import hashlib

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from transforms.dedupe import STRATEGIES, DeduplicateEnvelopes
from transforms.errors import TransformConfigError
from transforms.metrics import DUPLICATES, NAMESPACE
from transforms.sealed import SealedEnvelope


def _envelope(envelope_id: int, data: bytes) -> SealedEnvelope:
    return SealedEnvelope(envelope_id.to_bytes(16, "big"), "key-1", "eu", "acme",
                          hashlib.sha256(data).digest(), data)


def _duplicates(result) -> int:
    counters = result.metrics().query(
        MetricsFilter().with_namespace(NAMESPACE).with_name(DUPLICATES))["counters"]
    return sum(c.committed or c.attempted or 0 for c in counters)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_exact_copies_are_dropped_counted_and_forgeries_pass_on(strategy: str) -> None:
    originals = [_envelope(i, b"sealed-%d" % i) for i in range(30)]
    copies = [originals[3], originals[3], originals[17]]
    forged = _envelope(5, b"other bytes claiming id 5")      # same id, other bytes
    pipeline = beam.Pipeline(runner=FnApiRunner())
    deduped = (pipeline | beam.Create(originals + copies + [forged])
               | DeduplicateEnvelopes(horizon_s=60, strategy=strategy))
    assert_that(deduped[DeduplicateEnvelopes.UNIQUE] | "U" >> beam.Map(lambda e: e.data),
                equal_to([e.data for e in originals] + [forged.data]), label="unique")
    assert_that(deduped[DeduplicateEnvelopes.DUPLICATES] | "D" >> beam.Map(lambda e: e.data),
                equal_to([b"sealed-3", b"sealed-3", b"sealed-17"]), label="copies")
    result = pipeline.run()
    result.wait_until_finish()
    assert _duplicates(result) == 3


def test_on_a_stream_copies_within_the_horizon_are_dropped_later_ones_pass() -> None:
    first, other = _envelope(1, b"one"), _envelope(2, b"two")
    stream = (TestStream()
              .add_elements([TimestampedValue(first, 10), TimestampedValue(other, 11)])
              .advance_watermark_to(20)
              .add_elements([TimestampedValue(first, 25)])          # within 60 s: a copy
              .advance_watermark_to(200)                            # the horizon passes
              .add_elements([TimestampedValue(first, 205)])         # no longer remembered
              .advance_watermark_to_infinity())
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(runner=BundleBasedDirectRunner(), options=options) as pipeline:
        deduped = pipeline | stream | DeduplicateEnvelopes(horizon_s=60)
        assert_that(deduped[DeduplicateEnvelopes.UNIQUE]
                    | "U" >> beam.Map(lambda e, t=beam.DoFn.TimestampParam: (e.data, int(t))),
                    equal_to([(b"one", 10), (b"two", 11), (b"one", 205)]), label="unique")
        assert_that(deduped[DeduplicateEnvelopes.DUPLICATES]
                    | "D" >> beam.Map(lambda e, t=beam.DoFn.TimestampParam: (e.data, int(t))),
                    equal_to([(b"one", 25)]), label="copies")


def test_in_fixed_windows_copies_are_found_per_window() -> None:
    first = _envelope(1, b"one")
    items = [TimestampedValue(first, 1), TimestampedValue(first, 2), TimestampedValue(first, 61)]
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        deduped = (pipeline | beam.Create(items) | beam.WindowInto(FixedWindows(60))
                   | DeduplicateEnvelopes(horizon_s=3600))
        assert_that(deduped[DeduplicateEnvelopes.UNIQUE]
                    | "U" >> beam.Map(lambda e, t=beam.DoFn.TimestampParam: int(t)),
                    equal_to([1, 61]), label="unique")


def test_the_horizon_must_be_positive() -> None:
    with pytest.raises(TransformConfigError, match="horizon"):
        DeduplicateEnvelopes(horizon_s=0)
    with pytest.raises(TransformConfigError, match="strategy"):
        DeduplicateEnvelopes(strategy="bloom")
