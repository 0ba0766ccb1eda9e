"""Event time from the envelope header, fixed windows, and the split of late records.

Usage::

    timed = envelopes | StampEventTime(window_s=60, allowed_lateness_s=120)
    on_time = timed[StampEventTime.ON_TIME]       # bytes, timestamped with their event time
    late = timed[StampEventTime.LATE]             # DeadLetter-shaped LateRecord, still sealed
    dead = timed[StampEventTime.DEAD_LETTER]      # no or bad event time in the header

A partner states when each record happened in the envelope header's context entry
``sealbeam.event_time`` (docs/FORMAT.md section 2.1: RFC 3339 UTC with milliseconds, e.g.
``2026-12-01T13:30:00.250Z``). The header tag covers the context, so the TEE detects a
changed event time when it opens the envelope; outside the TEE this step reads it unverified
(as ``ParseSealed`` reads the region) — a forged time can at worst move a record, still
sealed, to another window or to the late output, where opening it fails.

Each element arrives with its *arrival* timestamp from the source (Pub/Sub publish time, the
file-drop poll time, a ``TestStream`` timestamp): that is the watermark this step judges
against. A record is **late** when the fixed window of its event time closed for good before
it arrived: ``window end + allowed lateness <= arrival``. Late records go to ``LATE`` (counted
in the ``late`` metric) and never into a window: a closed window's output is never
reopened. Every other record is re-stamped with its event time, so the windows that follow
are event-time windows. Judging by the arrival time, not by a runner's watermark, makes the
split deterministic: the same messages with the same publish times give the same late set on
every runner and on a rerun, which exactly-once output names need. Beam's own watermark is at
or before the arrival time, so a record accepted here is at most ``allowed lateness`` behind
it, and the windowing that follows is given that lateness.

Record streams (record profile 2) and their pieces: each record's event time is its frame's
(``u64 event_time_ms``, authenticated in the record's AAD, read here without a key by
``envelope.read_record_stream``); a record whose frame says 0 (none) falls back exactly as a
v1 record does, to the header's ``sealbeam.event_time``, and without one it is a dead letter
of its own. The records are then judged one by one. A stream whose records all fall into one
window, none late, goes on as it is; otherwise it is split here, outside the TEE and without
a key, into one **piece** per window (``envelope.extract_stream_piece``: the stream's header
and just those records' frames, ``SBRX`` version 2), each timestamped into its window and
standing for its records (``SealedEnvelope.records``). A late record goes to ``LATE`` as its
own one-record excerpt (``<envelope id>#<index>``, counted once in ``late``), a record
without a usable event time to ``DEAD_LETTER`` likewise; the excerpts of one stream are cut
from one walk (``envelope.extract_stream_records``).

What it does not: it does not window (``beam.WindowInto`` does) or write anything.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from enclave_workers.batch_processor import DeadLetter, unparsed_record_id
from envelope import (
    KIND_RECORD_STREAM,
    STREAM_RECORD_MARK,
    EnvelopeError,
    EnvelopeHeader,
    extract_stream_piece,
    extract_stream_records,
    is_stream_excerpt,
    piece_records,
    read_header,
    read_record_stream,
    read_stream_piece,
)

from .errors import TransformConfigError
from .metrics import LATE, NAMESPACE
from .sealed import SealedEnvelope

__all__ = ["EVENT_TIME_CONTEXT_KEY", "STAGE_EVENT_TIME", "STAGE_LATE", "EventTimeError",
           "LateRecord", "StampEventTime", "format_event_time", "parse_event_time", "window_end"]

EVENT_TIME_CONTEXT_KEY = "sealbeam.event_time"
STAGE_EVENT_TIME = "event-time"
STAGE_LATE = "late"
_EVENT_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.([0-9]{3})Z")


class EventTimeError(ValueError):
    """A header's event time is missing or not in the documented form."""


def format_event_time(moment: float | datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC) for seconds since the epoch or an aware datetime."""
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise EventTimeError("an event time must be timezone-aware")
        moment = moment.timestamp()
    millis = round(float(moment) * 1000)
    when = datetime.fromtimestamp(millis // 1000, tz=timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis % 1000:03d}Z"


def parse_event_time(value: str) -> Timestamp:
    """The documented form back to a Beam ``Timestamp``; anything else raises
    ``EventTimeError``."""
    match = _EVENT_TIME.fullmatch(value)
    if match is None:
        raise EventTimeError(f"event time {value[:40]!r} is not YYYY-MM-DDTHH:MM:SS.mmmZ")
    year, month, day, hour, minute, second, millis = (int(g) for g in match.groups())
    try:
        when = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError as exc:
        raise EventTimeError(f"event time {value!r} is not a valid date: {exc}") from None
    return Timestamp(micros=(int(when.timestamp()) * 1000 + millis) * 1000)


def window_end(event_time: Timestamp, window_s: float) -> Timestamp:
    """The end of the fixed window (offset 0, as ``FixedWindows(window_s)``) holding
    ``event_time``."""
    size = Duration.of(window_s)
    start = event_time - (event_time - Timestamp(0)) % size
    return start + size


class LateRecord(NamedTuple):
    """A late envelope, still sealed, with the times that made it late."""

    record_id: str
    event_time: str
    arrival_micros: int
    sealed: bytes


class _StreamRecords(NamedTuple):
    """What splitting needs of a stream or a piece, read without a key."""

    header: EnvelopeHeader
    indices: Sequence[int]
    event_times_ms: Sequence[int | None]
    piece: Callable[[Sequence[int]], bytes]
    excerpts: Callable[[Sequence[int]], list[bytes]]


def _stream_records(envelope: bytes) -> _StreamRecords:
    """A record stream's (or piece's) records; raises ``EnvelopeError``."""
    if is_stream_excerpt(envelope):
        piece = read_stream_piece(envelope)
        return _StreamRecords(piece.header, piece.indices, piece.event_times_ms,
                              lambda indices: extract_stream_piece(piece, indices),
                              lambda indices: piece_records(piece, indices))
    layout = read_record_stream(envelope)
    return _StreamRecords(
        layout.header, range(layout.record_count), layout.event_times_ms,
        lambda indices: extract_stream_piece(envelope, indices, layout=layout),
        lambda indices: extract_stream_records(envelope, indices, layout=layout))


def _as_piece(element: Any, piece: bytes, records: int) -> Any:
    """The element for a piece of ``element``'s stream: bytes for bytes, else a
    ``SealedEnvelope`` with the piece's bytes, digest and record count."""
    if isinstance(element, bytes):
        return piece
    return replace(element, data=piece, digest=hashlib.sha256(piece).digest(),
                   records=records)


class _StampEventTimeFn(beam.DoFn):
    def __init__(self, window_s: float, allowed_lateness_s: float) -> None:
        self._window_s = window_s
        self._lateness = Duration.of(allowed_lateness_s)
        self._late = Metrics.counter(NAMESPACE, LATE)

    def process(self, element: Any, arrival=beam.DoFn.TimestampParam) -> Iterable[object]:
        envelope = element if isinstance(element, bytes) else element.data
        if is_stream_excerpt(envelope) or (
                isinstance(element, SealedEnvelope) and element.records > 1):
            yield from self._split(element, envelope, arrival)
            return
        try:
            header, _ = read_header(envelope)
        except EnvelopeError as exc:
            yield TaggedOutput(StampEventTime.DEAD_LETTER, DeadLetter(
                unparsed_record_id(envelope), f"not a sealed envelope: {exc}",
                STAGE_EVENT_TIME, b""))
            return
        if header.kind == KIND_RECORD_STREAM:
            yield from self._split(element, envelope, arrival)
            return
        stated = header.context.get(EVENT_TIME_CONTEXT_KEY)
        try:
            event_time = _stated_time(stated)
        except EventTimeError as exc:
            yield TaggedOutput(StampEventTime.DEAD_LETTER, DeadLetter(
                header.envelope_id.hex(), str(exc), STAGE_EVENT_TIME, envelope))
            return
        if window_end(event_time, self._window_s) + self._lateness <= arrival:
            self._late.inc()
            yield TaggedOutput(StampEventTime.LATE, LateRecord(
                header.envelope_id.hex(), stated, arrival.micros, envelope))
            return
        yield TimestampedValue(element, event_time)

    def _split(self, element: Any, envelope: bytes, arrival: Timestamp) -> Iterable[object]:
        """A stream's (or piece's) records by window, late, or without an event time."""
        try:
            stream = _stream_records(envelope)
        except EnvelopeError as exc:   # ParseSealed read it; only a bare-bytes input gets here
            records = element.records if isinstance(element, SealedEnvelope) else 1
            yield TaggedOutput(StampEventTime.DEAD_LETTER, DeadLetter(
                unparsed_record_id(envelope), f"not a readable record stream: {exc}",
                STAGE_EVENT_TIME, b"", records=records))
            return
        stated = stream.header.context.get(EVENT_TIME_CONTEXT_KEY)
        fallback: Timestamp | EventTimeError | None = None
        windows: dict[Timestamp, list[tuple[int, Timestamp]]] = {}
        late: list[tuple[int, Timestamp]] = []
        untimed: list[int] = []
        for index, millis in zip(stream.indices, stream.event_times_ms, strict=True):
            if millis is None:
                if fallback is None:
                    try:
                        fallback = _stated_time(stated)
                    except EventTimeError as exc:
                        fallback = exc
                if isinstance(fallback, EventTimeError):
                    untimed.append(index)
                    continue
                event_time = fallback
            else:
                event_time = Timestamp(micros=millis * 1000)
            end = window_end(event_time, self._window_s)
            if end + self._lateness <= arrival:
                late.append((index, event_time))
            else:
                windows.setdefault(end, []).append((index, event_time))
        if len(windows) == 1 and not late and not untimed:
            [records] = windows.values()
            yield TimestampedValue(element, min(t for _, t in records))
            return
        name = stream.header.envelope_id.hex() + STREAM_RECORD_MARK
        if untimed:
            reason = f"the record has no event time of its own and {fallback}"
            for index, excerpt in zip(untimed, stream.excerpts(untimed), strict=True):
                yield TaggedOutput(StampEventTime.DEAD_LETTER, DeadLetter(
                    f"{name}{index}", reason, STAGE_EVENT_TIME, excerpt))
        if late:
            self._late.inc(len(late))
            excerpts = stream.excerpts([index for index, _ in late])
            for (index, event_time), excerpt in zip(late, excerpts, strict=True):
                yield TaggedOutput(StampEventTime.LATE, LateRecord(
                    f"{name}{index}", format_event_time(float(event_time)), arrival.micros,
                    excerpt))
        for records in windows.values():
            piece = stream.piece([index for index, _ in records])
            yield TimestampedValue(_as_piece(element, piece, len(records)),
                                   min(t for _, t in records))


def _stated_time(stated: str | None) -> Timestamp:
    if stated is None:
        raise EventTimeError(f"the header has no {EVENT_TIME_CONTEXT_KEY} entry")
    return parse_event_time(stated)


class StampEventTime(beam.PTransform):
    """Envelopes (bytes or ``SealedEnvelope``, timestamped on arrival) -> on time (the same
    elements, timestamped with their header's event time), late (``LateRecord``) and dead
    letters (no usable event time)."""

    ON_TIME = "on_time"
    LATE = "late"
    DEAD_LETTER = "dead_letter"

    def __init__(self, *, window_s: float, allowed_lateness_s: float) -> None:
        super().__init__()
        if not window_s > 0:
            raise TransformConfigError(f"the window must be positive, not {window_s} s")
        if not allowed_lateness_s >= 0:
            raise TransformConfigError(
                f"the allowed lateness must not be negative, not {allowed_lateness_s} s")
        self._fn = _StampEventTimeFn(float(window_s), float(allowed_lateness_s))

    def expand(self, pcoll: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return pcoll | "StampFromHeader" >> beam.ParDo(self._fn).with_outputs(
            self.LATE, self.DEAD_LETTER, main=self.ON_TIME)
