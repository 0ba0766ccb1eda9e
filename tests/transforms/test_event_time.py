"""StampEventTime: event time from the header, the late split, dead letters (FnApiRunner), and
the event-time text form (hypothesis)."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from envelope import DataKey, KeyReference, WrappedKey, read_header, seal_record
from transforms.errors import TransformConfigError
from transforms.event_time import (
    EVENT_TIME_CONTEXT_KEY,
    STAGE_EVENT_TIME,
    StampEventTime,
    format_event_time,
    parse_event_time,
)
from transforms.metrics import LATE, NAMESPACE


def _sealed(event_time: str | None) -> bytes:
    context = {"sealbeam.kind": "partner-records"}
    if event_time is not None:
        context[EVENT_TIME_CONTEXT_KEY] = event_time
    return seal_record(b'{"a": 1}', data_key=DataKey.generate(simulated=True),
                       wrapped_key=WrappedKey(KeyReference("local://keyring/eu/kek-1", "1"),
                                              b"wrapped"),
                       region="eu", producer_id="acme", schema_fingerprint=bytes(32),
                       context=context)


def _record_id(envelope: bytes) -> str:
    return read_header(envelope)[0].envelope_id.hex()


def test_records_are_stamped_late_split_or_dead_lettered() -> None:
    on_time = _sealed("1970-01-01T00:00:10.000Z")         # window [0, 60), arrives at 50
    within = _sealed("1970-01-01T00:00:20.000Z")          # arrives at 89: 60 + 30 > 89
    late = _sealed("1970-01-01T00:00:30.000Z")            # arrives at 90: 60 + 30 <= 90
    missing, malformed = _sealed(None), _sealed("yesterday")
    arrivals = [(on_time, 50), (within, 89), (late, 90), (missing, 5), (malformed, 5)]
    pipeline = beam.Pipeline(runner=FnApiRunner())
    timed = (pipeline
             | beam.Create([TimestampedValue(e, t) for e, t in arrivals])
             | StampEventTime(window_s=60, allowed_lateness_s=30))
    stamped = timed[StampEventTime.ON_TIME] | "WithTime" >> beam.Map(
        lambda e, t=beam.DoFn.TimestampParam: (e, t))
    assert_that(stamped, equal_to([(on_time, Timestamp(10)), (within, Timestamp(20))]),
                label="on time")
    assert_that(timed[StampEventTime.LATE] | "Late" >> beam.Map(
        lambda r: (r.record_id, r.event_time, r.arrival_micros, r.sealed)),
        equal_to([(_record_id(late), "1970-01-01T00:00:30.000Z", 90_000_000, late)]),
        label="late")
    assert_that(timed[StampEventTime.DEAD_LETTER] | "Dead" >> beam.Map(
        lambda d: (d.record_id, d.stage, d.sealed)),
        equal_to([(_record_id(missing), STAGE_EVENT_TIME, missing),
                  (_record_id(malformed), STAGE_EVENT_TIME, malformed)]), label="dead")
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(
        MetricsFilter().with_namespace(NAMESPACE).with_name(LATE))["counters"]
    assert sum(c.committed or 0 for c in counters) == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(TransformConfigError, match="window"):
        StampEventTime(window_s=0, allowed_lateness_s=0)
    with pytest.raises(TransformConfigError, match="lateness"):
        StampEventTime(window_s=60, allowed_lateness_s=-1)


@given(st.integers(min_value=0, max_value=253_402_300_799_999))     # up to 9999-12-31
def test_event_time_text_round_trips_every_millisecond(millis: int) -> None:
    text = format_event_time(millis / 1000)
    assert len(text) == 24 and text.endswith("Z")
    assert parse_event_time(text) == Timestamp(micros=millis * 1000)


@given(st.text(max_size=40))
def test_parse_event_time_accepts_only_the_documented_form(text: str) -> None:
    try:
        parsed = parse_event_time(text)
    except ValueError:
        return
    assert format_event_time(float(parsed)) == text
