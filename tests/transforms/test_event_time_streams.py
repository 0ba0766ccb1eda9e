"""StampEventTime on record streams, step by step (no runner): each record's window from its
frame's event time or, for 0, the header's; one piece per window; late records and records
without any event time as one-record excerpts; a stream wholly in one window unchanged."""

from __future__ import annotations

from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from envelope import (
    open_stream_piece,
    read_record_stream,
    read_stream_piece,
    read_stream_record,
    seal_record_stream,
)
from tests.envelope.support import DEK, seal_arguments
from transforms.event_time import (
    EVENT_TIME_CONTEXT_KEY,
    LateRecord,
    StampEventTime,
    _StampEventTimeFn,
    format_event_time,
)
from transforms.parse import read_sealed

WINDOW_S, LATENESS_S = 60.0, 30.0


def _stream(times: list[int | None], stated: float | None) -> bytes:
    context = {} if stated is None else {EVENT_TIME_CONTEXT_KEY: format_event_time(stated)}
    return seal_record_stream([f"r{i}".encode() for i in range(len(times))],
                              event_times_ms=times, **seal_arguments(context=context))


def _split(element: object, arrival: float) -> tuple[list, list, list]:
    fn = _StampEventTimeFn(WINDOW_S, LATENESS_S)
    on_time, late, dead = [], [], []
    for out in fn.process(element, Timestamp(arrival)):
        if isinstance(out, TaggedOutput):
            (late if out.tag == StampEventTime.LATE else dead).append(out.value)
        else:
            assert isinstance(out, TimestampedValue)
            on_time.append(out)
    return on_time, late, dead


def test_a_stream_in_one_window_goes_on_unchanged() -> None:
    stream = read_sealed(_stream([1_000, None, 59_000], stated=30.0))
    [only], late, dead = _split(stream, arrival=5.0)
    assert only.value is stream and only.timestamp == Timestamp(1.0)
    assert not late and not dead


def test_records_split_by_window_late_and_without_time() -> None:
    # windows: r0 [0,60) late at arrival 100; r1 [60,120); r2 none and no header time;
    # r3 [120,180); r4 [60,120)
    raw = _stream([10_000, 70_000, None, 130_000, 119_999], stated=None)
    stream = read_sealed(raw)
    on_time, late, dead = _split(stream, arrival=100.0)
    pieces = {float(t.timestamp): t.value for t in on_time}
    assert sorted(pieces) == [70.0, 130.0]
    assert read_stream_piece(pieces[70.0].data).indices == (1, 4)
    assert pieces[70.0].records == 2 and pieces[130.0].records == 1
    assert pieces[70.0].envelope_id == stream.envelope_id
    assert pieces[70.0].digest != stream.digest
    assert [r.plaintext for r in open_stream_piece(pieces[70.0].data, DEK).records] == [
        b"r1", b"r4"]
    envelope_id = read_record_stream(raw).header.envelope_id.hex()
    [late_record] = late
    assert isinstance(late_record, LateRecord)
    assert late_record.record_id == f"{envelope_id}#0"
    assert late_record.event_time == "1970-01-01T00:00:10.000Z"
    assert read_stream_record(late_record.sealed).index == 0
    [untimed] = dead
    assert untimed.record_id == f"{envelope_id}#2" and untimed.stage == "event-time"
    assert untimed.records == 1 and "no sealbeam.event_time" in untimed.reason
    assert read_stream_record(untimed.sealed).index == 2


def test_a_record_without_its_own_time_takes_the_headers() -> None:
    stream = read_sealed(_stream([None, 70_000], stated=10.0))
    on_time, late, dead = _split(stream, arrival=1.0)
    assert sorted(float(t.timestamp) for t in on_time) == [10.0, 70.0]
    assert not late and not dead


def test_a_piece_given_back_is_split_again_like_a_stream() -> None:
    raw = _stream([10_000, 70_000, 75_000], stated=None)
    on_time, _, _ = _split(read_sealed(raw), arrival=1.0)
    piece = next(t.value for t in on_time if t.value.records == 2)
    again = read_sealed(piece.data)
    assert again.records == 2 and again.envelope_id == piece.envelope_id
    [only], late, dead = _split(again, arrival=1.0)
    assert only.value is again and not late and not dead
    on_time, late, dead = _split(again, arrival=200.0)     # window [60,120) closed at 150
    assert not on_time and not dead
    assert sorted(r.record_id.split("#")[1] for r in late) == ["1", "2"]
    assert [read_stream_record(r.sealed).index for r in late] == [1, 2]


def test_a_pool_worker_reads_a_pieces_region_for_its_destination_check() -> None:
    """A piece sent to a remote pool is checked against the destination like an envelope."""
    from enclave_workers.pool.worker import destination_refusal
    from envelope import extract_stream_piece

    piece = extract_stream_piece(_stream([1_000, 2_000], stated=None), [1])
    assert destination_refusal({"region": "eu"}, [piece]) is None
    assert "'eu'" in destination_refusal({"region": "us"}, [piece])
