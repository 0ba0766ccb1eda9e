"""Publish a sealed data set to a Pub/Sub topic at a given rate (``sealbeam feed``).

What it does: ``publish_sealed`` reads sealed files as ``sealbeam seal`` writes them (one
base64 record or batch envelope per line), reads each envelope's header (no key is needed:
the header is plain, authenticated later in the TEE) and publishes one message per envelope:
the envelope (raw bytes, or the base64 line with ``message_format="base64"``) with the
attributes ``partner_id`` (the header's producer id; the streaming pipeline dead-letters a
message whose attribute and header disagree) and ``envelope_id`` (hex; Dataflow's
``id_label``). Messages go out at ``rate`` per second at most (0: as fast as the client
publishes); the call returns after every publish was acknowledged by the service, with counts
and the measured rate. ``PUBSUB_EMULATOR_HOST`` points Google's client at an emulator.

Late records are replayed the same way: a line of a ``late/late-*.jsonl`` file (a JSON
object, as ``transforms.late_output`` writes it) is published as the envelope in its
``sealed_b64``, with the same attributes. A late stream record is a one-record excerpt of
its stream (``SBRX``): its attributes are the stream header's producer and
``<stream envelope id>#<record index>``, so that no two excerpts of one stream share a
Pub/Sub id (the pipeline de-duplicates by envelope id and bytes, and reads excerpts as it
reads streams).

What it does not: it never opens an envelope, and it stops at the first line that is not an
envelope (a ``PipelineError`` naming the file and line) before publishing anything.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envelope import (
    STREAM_RECORD_MARK,
    EnvelopeError,
    index_ranges,
    is_stream_excerpt,
    read_header,
    read_stream_piece,
)
from transforms.pubsub import BASE64, ID_ATTRIBUTE, MESSAGE_FORMATS, PARTNER_ATTRIBUTE, RAW
from transforms.read import MAX_LINE_BYTES, iter_bounded_lines

from .errors import InputFileError, PipelineError

__all__ = ["FeedMessage", "FeedReport", "publish_sealed", "read_feed_messages"]

PUBLISH_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class FeedMessage:
    """One message to publish: its data and attributes."""

    data: bytes
    partner_id: str
    envelope_id: str

    def attributes(self) -> dict[str, str]:
        return {PARTNER_ATTRIBUTE: self.partner_id, ID_ATTRIBUTE: self.envelope_id}


@dataclass(frozen=True)
class FeedReport:
    """What a feed published (counts and timing only; no content)."""

    topic: str
    messages: int
    bytes: int
    seconds: float
    messages_per_second: float


def read_feed_messages(paths: Iterable[Path], message_format: str) -> list[FeedMessage]:
    """Every envelope of the sealed files as a message, in file and line order."""
    if message_format not in MESSAGE_FORMATS:
        raise PipelineError(f"--message-format must be one of {', '.join(MESSAGE_FORMATS)}")
    messages: list[FeedMessage] = []
    for path in paths:
        if not Path(path).is_file():
            raise InputFileError(f"sealed file {path} does not exist")
        with Path(path).open("rb") as stream:
            for line_no, line, length in iter_bounded_lines(stream, MAX_LINE_BYTES):
                where = f"{Path(path).name}:{line_no}"
                if line is None:
                    raise InputFileError(f"{where}: line is {length} bytes, over "
                                         f"{MAX_LINE_BYTES}")
                line = line.strip()
                if not line:
                    continue
                try:
                    encoded = _late_line_envelope(line) if line.startswith(b"{") else line
                    envelope = base64.b64decode(encoded, validate=True)
                    producer_id, envelope_id = _message_ids(envelope)
                except (binascii.Error, ValueError, EnvelopeError) as exc:
                    raise InputFileError(f"{where}: not a base64 sealed envelope or a late "
                                         f"record line ({type(exc).__name__})") from None
                messages.append(FeedMessage(envelope if message_format == RAW else encoded,
                                            producer_id, envelope_id))
    return messages


def _late_line_envelope(line: bytes) -> bytes:
    """The base64 envelope of a late record's line (``{"record_id", "event_time", "arrival",
    "sealed_b64"}``); ValueError for any other JSON."""
    document = json.loads(line)
    if not isinstance(document, dict) or not isinstance(document.get("sealed_b64"), str):
        raise ValueError("a JSON line without sealed_b64")
    return document["sealed_b64"].encode("ascii")


def _message_ids(envelope: bytes) -> tuple[str, str]:
    """(partner_id, envelope_id) attributes of an envelope or a stream excerpt, read without
    a key: an excerpt's id names its records, ``<stream id>#<indices>`` (``#4``, ``#0-2,6``:
    as a piece's dead letter names them)."""
    try:
        header, _ = read_header(envelope)
    except EnvelopeError:
        if not is_stream_excerpt(envelope):
            raise
        piece = read_stream_piece(envelope)
        return (piece.header.producer_id,
                piece.header.envelope_id.hex() + STREAM_RECORD_MARK + index_ranges(piece.indices))
    return header.producer_id, header.envelope_id.hex()


def _publisher() -> Any:
    from google.cloud import pubsub_v1  # the gcp/pubsub extra
    return pubsub_v1.PublisherClient()


def publish_sealed(paths: Sequence[Path], topic: str, *, rate: float = 0.0,
                   message_format: str = RAW, publisher: Any = None) -> FeedReport:
    """Publish every envelope of ``paths`` to ``topic`` (``projects/P/topics/T``), at most
    ``rate`` messages per second (0: unpaced); wait until the service took them all."""
    if not topic.startswith("projects/") or "/topics/" not in topic:
        raise PipelineError(f"--topic must be projects/PROJECT/topics/TOPIC, not {topic!r}")
    if rate < 0:
        raise PipelineError(f"--rate must not be negative, not {rate}")
    if message_format not in (RAW, BASE64):
        raise PipelineError(f"--message-format must be one of {', '.join(MESSAGE_FORMATS)}")
    messages = read_feed_messages(paths, message_format)
    client = publisher if publisher is not None else _publisher()
    started = time.monotonic()
    futures = []
    for index, message in enumerate(messages):
        if rate > 0:
            due = started + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        futures.append(client.publish(topic, message.data, **message.attributes()))
    for future in futures:
        future.result(timeout=PUBLISH_TIMEOUT_S)
    seconds = time.monotonic() - started
    return FeedReport(topic, len(messages), sum(len(m.data) for m in messages),
                      round(seconds, 3), round(len(messages) / seconds, 1) if seconds else 0.0)
