"""HoldForBatches on a TestStream (bundle-based DirectRunner): batches close at the count bound,
the byte bound, or the window's end, per window and (region, producer), across bundles.

The streams pass the windows' ends (watermark 200) before ending: ``assert_that`` groups, and
a group drops what a timer releases only once the watermark is already at the end of time
(which is why the pipeline writes dead letters without grouping: stream_dead_letters.py)."""

from __future__ import annotations

import hashlib

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from transforms.errors import TransformConfigError
from transforms.sealed import SealedEnvelope
from transforms.stream_batches import HoldForBatches


def _envelope(number: int, producer: str = "acme", size: int = 10) -> SealedEnvelope:
    data = number.to_bytes(4, "big") * (size // 4)
    return SealedEnvelope(number.to_bytes(16, "big"), "key-1", "eu", producer,
                          hashlib.sha256(data).digest(), data)


def _batch_shapes(stream: TestStream, hold: HoldForBatches) -> beam.Pipeline:
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    pipeline = beam.Pipeline(runner=BundleBasedDirectRunner(), options=options)
    shapes = (
        pipeline
        | stream
        | beam.WindowInto(FixedWindows(60))
        | hold
        | beam.Map(lambda batch, w=beam.DoFn.WindowParam: (
            float(w.start), sorted(int.from_bytes(e.envelope_id, "big")
                                   for e in batch.envelopes)))
    )
    return pipeline, shapes


def _one_by_one(numbers: list[int], producer: str = "acme", size: int = 10) -> TestStream:
    stream = TestStream()
    for number in numbers:                                  # one element per bundle
        stream = stream.add_elements([TimestampedValue(_envelope(number, producer, size),
                                                       number)])
    return stream


def test_the_count_bound_closes_a_batch_and_the_window_end_the_rest() -> None:
    stream = (_one_by_one([1, 2, 3, 4, 5, 61, 62]).advance_watermark_to(200)
              .advance_watermark_to_infinity())
    pipeline, shapes = _batch_shapes(stream, HoldForBatches(
        max_records=2, max_bytes=1 << 20, max_duration_s=3600))
    assert_that(shapes, equal_to([(0.0, [1, 2]), (0.0, [3, 4]), (0.0, [5]),
                                  (60.0, [61, 62])]))
    pipeline.run().wait_until_finish()


def test_the_byte_bound_closes_a_batch_per_region_and_producer() -> None:
    stream = TestStream()
    for number in (1, 2, 3, 4, 5, 6):                      # acme and globex interleaved
        producer = "acme" if number % 2 else "globex"
        stream = stream.add_elements([TimestampedValue(_envelope(number, producer, 40),
                                                       number)])
    stream = stream.advance_watermark_to(200).advance_watermark_to_infinity()
    pipeline, shapes = _batch_shapes(stream, HoldForBatches(
        max_records=100, max_bytes=80, max_duration_s=3600))
    assert_that(shapes, equal_to([(0.0, [1, 3]), (0.0, [5]), (0.0, [2, 4]), (0.0, [6])]))
    pipeline.run().wait_until_finish()


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(TransformConfigError):
        HoldForBatches(max_records=0, max_bytes=1, max_duration_s=1)
    with pytest.raises(TransformConfigError, match="duration"):
        HoldForBatches(max_records=1, max_bytes=1, max_duration_s=0)
