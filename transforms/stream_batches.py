"""Hold a stream's envelopes per window until a batch is big enough, then release it whole.

Usage::

    windowed = on_time | beam.WindowInto(FixedWindows(60), allowed_lateness=120)
    processed = windowed | ConfidentialProcess(..., batcher=HoldForBatches(
        max_records=2000, max_bytes=64 << 20, max_duration_s=30))

Why: ``beam.BatchElements`` batches within a bundle, and a stream's bundles are a few
records, so with k-anonymity on almost every row of a small batch would be suppressed. This
keeps envelopes in keyed state, per window and per (region, producer) — the unit an output
file and its k-anonymity cover — and releases them together when the batch reaches
``max_records`` (counted in records: a record stream or a piece of one counts its records)
or ``max_bytes`` (envelope bytes), when ``max_duration_s`` of processing time
has passed since its first envelope, or when the window closes (its end plus the allowed
lateness, an event-time timer), whichever comes first. A release is cut into
``batching.EnvelopeBatch`` elements (sorted, named by a digest of their envelope ids,
``batching.cut_batches``), which is what ``ConfidentialProcess`` takes from its ``batcher``.

Rows that stay under k: when a window's batch closes with fewer than k rows sharing a
quasi-identifier group, the confidential step suppresses those rows (counted in
``rows_suppressed``) and still writes the output, so its envelopes reconcile in
``records_out``; the suppressed rows are not carried into the next window.

Input: ``SealedEnvelope`` elements (``sealed.py``) in fixed windows; output: ``EnvelopeBatch``
elements in the same windows, timestamped at the window's end. On ``FnApiRunner``
the watermark reaches the end of time after every round of an unbounded source, so there a
batch is at most one source round (``pubsub.ReadPubsubUntilIdle`` sizes its rounds with the
same bounds); the bundle-based DirectRunner and Dataflow hold across rounds.

What it does not: it never opens an envelope; a late record never reaches it
(``event_time.StampEventTime`` diverts those).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder, TupleCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from .batching import cut_batches
from .errors import TransformConfigError
from .metrics import NAMESPACE
from .sealed import SealedEnvelope

__all__ = ["HoldForBatches"]

_HELD = BagStateSpec("held", PickleCoder())
# (records, bytes) held: one state, since every state read and write has a cost of its own
# on FnApiRunner (the state cache sizes each value with objsize).
_HELD_SIZE = ReadModifyWriteStateSpec("held_size", TupleCoder([VarIntCoder(), VarIntCoder()]))
_DEADLINE = TimerSpec("deadline", TimeDomain.REAL_TIME)
_WINDOW_END = TimerSpec("window_end", TimeDomain.WATERMARK)
_HELD_PARAM = beam.DoFn.StateParam(_HELD)
_HELD_SIZE_PARAM = beam.DoFn.StateParam(_HELD_SIZE)
_DEADLINE_PARAM = beam.DoFn.TimerParam(_DEADLINE)
_WINDOW_END_PARAM = beam.DoFn.TimerParam(_WINDOW_END)


def batch_key(envelope: SealedEnvelope) -> str:
    """``region/producer`` of an envelope: what one output file (and its k-anonymity) covers."""
    return f"{envelope.region}/{envelope.producer_id}"


class _HoldFn(beam.DoFn):
    def __init__(self, max_records: int, max_bytes: int, max_duration_s: float) -> None:
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._max_duration_s = max_duration_s
        self._sizes = Metrics.distribution(NAMESPACE, "stream_batch_size")

    def _release(self, held: Any, held_size: Any, window: Any) -> Iterable[object]:
        elements = list(held.read())
        held.clear()
        held_size.clear()
        if elements:
            self._sizes.update(len(elements))
        end = window.max_timestamp()
        for batch in cut_batches(elements, self._max_records, self._max_bytes):
            yield TimestampedValue(batch, end)

    def process(self, keyed: tuple[str, Any], window: Any = beam.DoFn.WindowParam,
                held: Any = _HELD_PARAM,
                held_size: Any = _HELD_SIZE_PARAM,
                deadline: Any = _DEADLINE_PARAM,
                window_end: Any = _WINDOW_END_PARAM) -> Iterable[object]:
        _, element = keyed
        records, size = held_size.read() or (0, 0)
        if records == 0:
            deadline.set(Timestamp.now() + self._max_duration_s)
            window_end.set(window.max_timestamp())
        held.add(element)
        records, size = records + element.records, size + len(element.data)
        if records >= self._max_records or size >= self._max_bytes:
            deadline.clear()
            yield from self._release(held, held_size, window)
        else:
            held_size.write((records, size))

    @on_timer(_DEADLINE)
    def on_deadline(self, window: Any = beam.DoFn.WindowParam,
                    held: Any = _HELD_PARAM,
                    held_size: Any = _HELD_SIZE_PARAM) -> Iterable[object]:
        yield from self._release(held, held_size, window)

    @on_timer(_WINDOW_END)
    def on_window_end(self, window: Any = beam.DoFn.WindowParam,
                      held: Any = _HELD_PARAM,
                      held_size: Any = _HELD_SIZE_PARAM) -> Iterable[object]:
        yield from self._release(held, held_size, window)


class HoldForBatches(beam.PTransform):
    """Windowed ``SealedEnvelope`` -> ``EnvelopeBatch``, held per window and
    (region, producer) until a bound or the window's end."""

    def __init__(self, *, max_records: int, max_bytes: int, max_duration_s: float) -> None:
        super().__init__()
        if max_records < 1 or max_bytes < 1:
            raise TransformConfigError("a streaming batch needs max_records >= 1 and "
                                       "max_bytes >= 1")
        if not max_duration_s > 0:
            raise TransformConfigError(f"--max_batch_duration_seconds must be positive, "
                                       f"not {max_duration_s}")
        self._fn = _HoldFn(max_records, max_bytes, float(max_duration_s))

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return (
            pcoll
            | "KeyByRegionProducer" >> beam.Map(lambda element: (batch_key(element), element))
            .with_output_types(beam.typehints.KV[str, Any])
            | "HoldPerWindow" >> beam.ParDo(self._fn)
        )
