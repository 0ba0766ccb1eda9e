"""Read sealed envelopes from a Pub/Sub subscription: one envelope per message.

Usage::

    deliveries = p | ReadPubsubUntilIdle("projects/P/subscriptions/S", until_idle_s=30)
    # or, on a runner that honours id_label (Dataflow):
    deliveries = p | ReadPubsubWithIdLabel("projects/P/subscriptions/S")
    accepted = deliveries | AcceptPubsubMessages(message_format="raw")
    envelopes = accepted[AcceptPubsubMessages.SEALED]      # bytes, one envelope each
    dead = accepted[AcceptPubsubMessages.DEAD_LETTER]      # DeadLetter
    copies = accepted[AcceptPubsubMessages.DUPLICATES]     # PubsubDelivery, redeliveries

A message carries one sealed record or batch envelope (raw bytes, or base64) and the
attribute ``partner_id`` (``PARTNER_ATTRIBUTE``), which must equal the producer id in the
envelope's header; a message without it, or naming another partner, becomes a dead letter
(stage ``attribute``) with its sealed bytes. ``sealbeam feed`` publishes messages this way,
with the envelope id in the attribute ``envelope_id`` (``ID_ATTRIBUTE``).

Two sources give the same ``PubsubDelivery`` elements; ``AcceptPubsubMessages`` passes them
on timestamped with the publish time (their arrival; ``event_time.StampEventTime`` then
re-stamps them with the header's event time):

- ``ReadPubsubWithIdLabel``: Beam's ``ReadFromPubSub`` with ``id_label=ID_ATTRIBUTE``, for
  runners that de-duplicate by it (Dataflow; the local runners refuse ``id_label``).
- ``ReadPubsubUntilIdle``: a synchronous-pull poll under ``apache_beam.io.watch.Watch`` for
  the local runners (``FnApiRunner``). Each poll pulls until it holds ``max_messages`` or
  ``max_bytes`` or ``max_wait_s`` has passed since its first message — the round is the unit
  ``FnApiRunner`` processes, so this is where local streaming batches get their size — and
  acknowledges what it pulled. The feed ends by itself once no message arrived for
  ``until_idle_s`` (``--until_idle_s``; a ``Watch`` termination condition whose state, the
  time of the last new message, is checkpointed with the restriction), and then releases the
  watermark. It acknowledges on pull, as Beam's own DirectRunner source does: a worker that
  dies after the pull loses those messages' processing (the local runners do not retry), so
  production runs use Dataflow.

``AcceptPubsubMessages`` counts every delivery in ``records_in`` and drops a second delivery
of one message id (a redelivery: an acknowledgement that was lost or came too late),
counting it in ``duplicates``, with keyed state that lasts ``horizon_s`` of event time.
Republished copies (new message id, same envelope) are left to de-duplication by envelope id.

What it does not: it never opens an envelope; the header is read only to compare the
producer id with the attribute (the TEE authenticates it later).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.coders import BytesCoder, FastPrimitivesCoder, TimestampCoder
from apache_beam.io.watch import PollFn, PollResult, TerminationCondition, Watch, never
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from enclave_workers.batch_processor import STAGE_FRAMING, STAGE_PARSE, DeadLetter
from envelope import EnvelopeError, read_header

from .errors import TransformConfigError
from .metrics import DUPLICATES, NAMESPACE, RECORDS_IN

__all__ = ["ID_ATTRIBUTE", "MESSAGE_FORMATS", "PARTNER_ATTRIBUTE", "STAGE_ATTRIBUTE",
           "AcceptPubsubMessages", "PubsubDelivery", "ReadPubsubUntilIdle",
           "ReadPubsubWithIdLabel"]

PARTNER_ATTRIBUTE = "partner_id"
ID_ATTRIBUTE = "envelope_id"
STAGE_ATTRIBUTE = "attribute"
RAW = "raw"
BASE64 = "base64"
MESSAGE_FORMATS = (RAW, BASE64)
DEFAULT_HORIZON_S = 3600.0
_PULL_TIMEOUT_S = 2.0
_CLOCK_STEP_S = 60.0       # Watch keeps the ack ids of the last minute of pull time, no more


class PubsubDelivery(NamedTuple):
    """One delivery of a message: its id, data, attributes (sorted pairs) and ack id."""

    message_id: str
    data: bytes
    attributes: tuple[tuple[str, str], ...]
    publish_micros: int
    ack_id: str


def _delivery_key(delivery: PubsubDelivery) -> str:
    return delivery.ack_id


class _PullSubscription(PollFn):
    """One Watch poll: pull a round of messages, acknowledge them, return them (the client
    is made lazily on the worker: it is not picklable)."""

    def __init__(self, subscription: str, *, max_messages: int, max_bytes: int,
                 max_wait_s: float, subscriber_factory: Callable[[], Any] | None) -> None:
        self._subscription = subscription
        self._subscriber_factory = subscriber_factory
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._max_wait_s = max_wait_s
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    def _subscriber(self) -> Any:
        if self._client is None:
            if self._subscriber_factory is not None:
                self._client = self._subscriber_factory()
            else:
                from google.cloud import pubsub_v1  # the gcp/pubsub extra
                self._client = pubsub_v1.SubscriberClient()
        return self._client

    def _pull_once(self, max_messages: int) -> list[Any]:
        from google.api_core import exceptions
        try:
            response = self._subscriber().pull(
                request={"subscription": self._subscription, "max_messages": max_messages},
                timeout=_PULL_TIMEOUT_S, retry=None)
        except exceptions.DeadlineExceeded:
            return []
        received = list(response.received_messages)
        if received:
            self._subscriber().acknowledge(request={
                "subscription": self._subscription,
                "ack_ids": [m.ack_id for m in received]})
        return received

    def _pull_round(self) -> list[Any]:
        """Pull until the round is full (messages, bytes) or ``max_wait_s`` after its first
        message; return at once when nothing is waiting."""
        held: list[Any] = []
        size = 0
        first: float | None = None
        while len(held) < self._max_messages and size < self._max_bytes:
            received = self._pull_once(self._max_messages - len(held))
            if received:
                held.extend(received)
                size += sum(len(m.message.data) for m in received)
                first = first if first is not None else time.monotonic()
            if first is None or time.monotonic() - first >= self._max_wait_s:
                break
            if not received:
                time.sleep(0.05)
        return held

    def __call__(self, subscription: str) -> PollResult[PubsubDelivery]:
        received = self._pull_round()
        now = Timestamp.now()
        # Stamped with the pull time, which only grows, so Watch can forget the keys of
        # earlier rounds (timestamp_cursor); AcceptPubsubMessages re-stamps the publish time.
        outputs = [TimestampedValue(_delivery(m), now) for m in received]
        return PollResult.incomplete(outputs).with_watermark(now)


class _AfterIdle(TerminationCondition):
    """Stop polling once ``idle`` passed since the last new message (or the start).

    Its state (when a message was last seen) is part of the ``Watch`` restriction, so it
    survives checkpoints, unlike anything the poll function could remember.
    """

    def __init__(self, idle: Duration) -> None:
        self._idle = idle

    def for_new_input(self, now: Timestamp, element: Any) -> Timestamp:
        return now

    def on_seen_new_output(self, now: Timestamp, state: Timestamp) -> Timestamp:
        return now

    def can_stop_polling(self, now: Timestamp, state: Timestamp) -> bool:
        return now - state >= self._idle

    def state_coder(self) -> TimestampCoder:
        return TimestampCoder()


def _delivery(received: Any) -> PubsubDelivery:
    message = received.message
    return PubsubDelivery(message.message_id, bytes(message.data),
                          tuple(sorted(message.attributes.items())),
                          Timestamp.from_utc_datetime(message.publish_time).micros,
                          received.ack_id)


class ReadPubsubUntilIdle(beam.PTransform):
    """A subscription -> ``PubsubDelivery`` elements, until ``until_idle_s`` without a
    message (``None``: never), on the local runners.

    ``subscriber_factory`` (picklable; default ``pubsub_v1.SubscriberClient``) makes the
    client on the worker: tests pass one that loses an acknowledgement on purpose.
    """

    def __init__(self, subscription: str, *, until_idle_s: float | None,
                 poll_interval_s: float = 0.1, max_messages: int = 1000,
                 max_bytes: int = 64 << 20, max_wait_s: float = 1.0,
                 subscriber_factory: Callable[[], Any] | None = None) -> None:
        super().__init__()
        if not subscription:
            raise TransformConfigError("ReadPubsubUntilIdle needs a subscription")
        if until_idle_s is not None and not until_idle_s > 0:
            raise TransformConfigError(f"--until_idle_s must be positive, not {until_idle_s}")
        if not (max_messages >= 1 and max_bytes >= 1 and max_wait_s >= 0):
            raise TransformConfigError("a pull round needs max_messages >= 1, max_bytes >= 1 "
                                       "and max_wait_s >= 0")
        self._subscription = subscription
        self._poll_interval_s = poll_interval_s
        self._termination = (never() if until_idle_s is None
                             else _AfterIdle(Duration.of(until_idle_s)))
        self._poll_fn = _PullSubscription(subscription,
                                          max_messages=max_messages, max_bytes=max_bytes,
                                          max_wait_s=max_wait_s,
                                          subscriber_factory=subscriber_factory)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Subscription" >> beam.Create([self._subscription])
            | "Pull" >> Watch(self._poll_fn, poll_interval=self._poll_interval_s,
                              termination=self._termination,
                              output_coder=FastPrimitivesCoder(),
                              output_key_fn=_delivery_key, timestamp_cursor=True,
                              allowed_lateness=_CLOCK_STEP_S)
            | "Delivery" >> beam.Map(lambda subscription_and_delivery:
                                     PubsubDelivery(*subscription_and_delivery[1]))
        )


def _from_beam_message(message: Any, timestamp: Timestamp) -> PubsubDelivery:
    """A Beam ``PubsubMessage`` as a delivery; Beam stamps it with its publish time, which
    stands in when the message does not carry one."""
    publish = message.publish_time
    micros = (Timestamp.from_utc_datetime(publish).micros if publish is not None
              else timestamp.micros)
    return PubsubDelivery(message.message_id or "", bytes(message.data),
                          tuple(sorted((message.attributes or {}).items())), micros,
                          message.message_id or "")


class ReadPubsubWithIdLabel(beam.PTransform):
    """A subscription -> ``PubsubDelivery`` through Beam's ``ReadFromPubSub`` with
    ``id_label``, for runners that de-duplicate by it (Dataflow)."""

    def __init__(self, subscription: str) -> None:
        super().__init__()
        if not subscription:
            raise TransformConfigError("ReadPubsubWithIdLabel needs a subscription")
        self._subscription = subscription

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "ReadFromPubSub" >> beam.io.ReadFromPubSub(
                subscription=self._subscription, with_attributes=True, id_label=ID_ATTRIBUTE)
            | "Delivery" >> beam.Map(lambda message, timestamp=beam.DoFn.TimestampParam:
                                     _from_beam_message(message, timestamp))
        )


_SEEN = ReadModifyWriteStateSpec("seen", BytesCoder())
_EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)
_SEEN_PARAM = beam.DoFn.StateParam(_SEEN)
_EXPIRY_PARAM = beam.DoFn.TimerParam(_EXPIRY)


class _FirstDeliveryFn(beam.DoFn):
    """Keyed by message id: passes the first delivery (timestamped with its publish time),
    counts and diverts the others."""

    def __init__(self, horizon_s: float) -> None:
        self._horizon = Duration.of(horizon_s)
        self._records_in = Metrics.counter(NAMESPACE, RECORDS_IN)
        self._duplicates = Metrics.counter(NAMESPACE, DUPLICATES)

    def process(self, keyed: tuple[str, PubsubDelivery],
                timestamp: Timestamp = beam.DoFn.TimestampParam,
                window: Any = beam.DoFn.WindowParam,
                seen: Any = _SEEN_PARAM,
                expiry: Any = _EXPIRY_PARAM) -> Iterable[object]:
        _, delivery = keyed
        self._records_in.inc()
        if seen.read() is not None:
            self._duplicates.inc()
            yield TaggedOutput(AcceptPubsubMessages.DUPLICATES, delivery)
            return
        seen.write(b"1")
        expiry.set(min(timestamp + self._horizon, window.max_timestamp()))
        yield TimestampedValue(delivery, Timestamp(micros=delivery.publish_micros))

    @on_timer(_EXPIRY)
    def expire(self, seen: Any = _SEEN_PARAM) -> None:
        seen.clear()


def _decode(delivery: PubsubDelivery, message_format: str) -> bytes | DeadLetter:
    where = f"pubsub:{delivery.message_id}"
    if not delivery.data:
        return DeadLetter(where, "message is empty", STAGE_FRAMING, b"")
    if message_format == RAW:
        return delivery.data
    try:
        return base64.b64decode(delivery.data.strip(), validate=True)
    except (binascii.Error, ValueError):
        return DeadLetter(where, f"message of {len(delivery.data)} bytes is not valid base64",
                          STAGE_FRAMING, b"")


class _CheckPartnerFn(beam.DoFn):
    """Decode the message; its ``partner_id`` attribute must name the header's producer."""

    def __init__(self, message_format: str) -> None:
        self._message_format = message_format

    def process(self, delivery: PubsubDelivery) -> Iterable[object]:
        decoded = _decode(delivery, self._message_format)
        if isinstance(decoded, DeadLetter):
            yield TaggedOutput(AcceptPubsubMessages.DEAD_LETTER, decoded)
            return
        try:
            header, _ = read_header(decoded)
        except EnvelopeError as exc:
            yield TaggedOutput(AcceptPubsubMessages.DEAD_LETTER, DeadLetter(
                f"pubsub:{delivery.message_id}", f"not a sealed envelope: {exc}",
                STAGE_PARSE, b""))
            return
        claimed = dict(delivery.attributes).get(PARTNER_ATTRIBUTE)
        if claimed is None or not hmac.compare_digest(claimed.encode("utf-8"),
                                                      header.producer_id.encode("utf-8")):
            reason = (f"message has no {PARTNER_ATTRIBUTE} attribute" if claimed is None else
                      f"{PARTNER_ATTRIBUTE} attribute differs from the header's producer")
            yield TaggedOutput(AcceptPubsubMessages.DEAD_LETTER, DeadLetter(
                header.envelope_id.hex(), reason, STAGE_ATTRIBUTE, decoded))
            return
        yield decoded


class AcceptPubsubMessages(beam.PTransform):
    """``PubsubDelivery`` -> envelope bytes (``SEALED``), dead letters and redeliveries."""

    SEALED = "sealed"
    DEAD_LETTER = "dead_letter"
    DUPLICATES = "duplicates"

    def __init__(self, *, message_format: str = RAW,
                 horizon_s: float = DEFAULT_HORIZON_S) -> None:
        super().__init__()
        if message_format not in MESSAGE_FORMATS:
            raise TransformConfigError(f"message format must be one of "
                                       f"{', '.join(MESSAGE_FORMATS)}, not {message_format!r}")
        if not horizon_s > 0:
            raise TransformConfigError(f"the message-id horizon must be positive, "
                                       f"not {horizon_s}")
        self._message_format = message_format
        self._horizon_s = float(horizon_s)

    def expand(self, deliveries: beam.PCollection) -> dict[str, beam.PCollection]:
        first = (
            deliveries
            | "KeyByMessageId" >> beam.Map(lambda d: (d.message_id, d)).with_output_types(
                beam.typehints.KV[str, Any])
            | "FirstDelivery" >> beam.ParDo(_FirstDeliveryFn(self._horizon_s)).with_outputs(
                self.DUPLICATES, main="first")
        )
        checked = first["first"] | "CheckPartner" >> beam.ParDo(
            _CheckPartnerFn(self._message_format)).with_outputs(
            self.DEAD_LETTER, main=self.SEALED)
        return {self.SEALED: checked[self.SEALED], self.DEAD_LETTER: checked[self.DEAD_LETTER],
                self.DUPLICATES: first[self.DUPLICATES]}
