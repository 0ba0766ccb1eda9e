"""Parse sealed envelopes' headers, leaving the ciphertext sealed.

Usage::

    parsed = envelopes | ParseSealed()
    sealed = parsed[ParseSealed.SEALED]          # SealedEnvelope: the bytes and header facts
    dead = parsed[ParseSealed.DEAD_LETTER]       # DeadLetter (stage "parse")

It runs ``envelope.read_header`` only: structure, bounds, known kind and algorithm. No key is
touched, so this runs anywhere (outside the TEE). Bytes that are not an envelope become a dead
letter named by their digest, without the bytes (they could be anything).

It forwards a ``SealedEnvelope`` (``sealed.py``): the envelope's bytes with the header facts
that de-duplication and keyed batching need (envelope id, data-key id, region, producer,
digest, records), so no step before the confidential one parses the header again.

Record streams (kind ``record-stream``, record profile 2, docs/FORMAT.md): the whole
structure is read without a key (``envelope.read_record_stream``: every frame's bounds, the
record count the header commits to, unique record ids), so a truncated or malformed stream is
a parse dead letter here. A stream stands for its records in the run's accounting: its line
counted once in ``records_in`` when it was read, and its other ``count - 1`` records are
counted here, where the count becomes known: the count its header commits to. A stream whose
header parses but whose frames do not (truncated, a bad frame, a duplicate record id) is one
dead letter for all of those records; bytes whose header does not parse are one line, one
record, as for any other envelope. A piece of a stream (``SBRX``, e.g. a late stream record's
excerpt replayed from ``late/``) stands for its records likewise. With
``record_streams=False`` a well-formed stream is a dead letter for all of its records
instead (no pipeline of ours asks for that any more).

V1 records (kind ``record``, one envelope a record) get a routing peek instead of a parse
(``envelope.peek_record``): the fixed fields at their offsets and the header's bytes after
them recognised as a suffix already decoded in full (a new suffix is decoded in full once),
so no header object is built per record here; the one full parse of each record is the
TEE's (``envelope.RecordSorter``, in ``BatchProcessor``). A record the peek does not
recognise is read by ``read_header`` like any other envelope (its error is the dead letter's
reason).

What it does not: it does not authenticate the header (that needs the data key, inside the
TEE), and it does not reorder or batch. It does not forward an ``envelope.ParsedEnvelope``:
that pickles as its bytes and is parsed again when unpickled, so between workers it would
save nothing; the confidential step parses each header once itself (``BatchProcessor``),
reusing that parse to open the envelope.
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import sha256

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from enclave_workers.batch_processor import (
    MAX_ENVELOPE_BYTES,
    STAGE_PARSE,
    DeadLetter,
    unparsed_record_id,
)
from envelope import (
    KIND_RECORD_STREAM,
    EnvelopeError,
    EnvelopeHeader,
    is_stream_excerpt,
    peek_record,
    read_header,
    read_record_stream,
    read_stream_piece,
    record_envelope_id,
)
from envelope.keys import memoized_key_id

from .metrics import NAMESPACE, RECORDS_IN
from .sealed import SealedEnvelope, sealed_envelope

__all__ = ["ENVELOPE_KINDS", "KIND_RECORD_STREAM", "ParseSealed", "read_sealed"]

ENVELOPE_KINDS = ("record", "batch", KIND_RECORD_STREAM)


def read_sealed(envelope: bytes, max_envelope_bytes: int = MAX_ENVELOPE_BYTES, *,
                record_streams: bool = True) -> SealedEnvelope | DeadLetter:
    """The header facts of ``envelope``, or the parse dead letter it is (module docstring)."""
    if len(envelope) > max_envelope_bytes:
        return DeadLetter(unparsed_record_id(envelope),
                          f"envelope is {len(envelope)} bytes, over {max_envelope_bytes}",
                          STAGE_PARSE, b"")
    record = _read_v1_record(envelope)
    if record is not None:
        return record
    try:
        header, _ = read_header(envelope)
    except EnvelopeError as exc:
        if is_stream_excerpt(envelope):
            return _read_piece(envelope)
        return DeadLetter(unparsed_record_id(envelope), f"not a sealed envelope: {exc}",
                          STAGE_PARSE, b"")
    if header.kind not in ENVELOPE_KINDS:
        return DeadLetter(header.envelope_id.hex(), f"unknown envelope kind {header.kind!r}",
                          STAGE_PARSE, envelope)
    if header.kind != KIND_RECORD_STREAM:
        return sealed_envelope(envelope, header, key_id=memoized_key_id(header.wrapped_key))
    return _read_stream(envelope, header, record_streams)


def _read_v1_record(envelope: bytes) -> SealedEnvelope | None:
    """A v1 record's routing facts from ``envelope.peek_record`` (fixed offsets, a header
    suffix recognised by its bytes): no header object, and no second validating parse, which
    the TEE's opener does once. None for anything else, which ``read_header`` then reads."""
    record = peek_record(envelope)
    if record is None:
        return None
    return SealedEnvelope(record_envelope_id(envelope), memoized_key_id(record.wrapped_key),
                          record.region, record.producer_id, sha256(envelope).digest(),
                          envelope)




def _read_piece(envelope: bytes) -> SealedEnvelope | DeadLetter:
    """A piece of a stream (``SBRX``: a late record's excerpt replayed, or a piece another
    run split off) stands for its records, as a stream does."""
    try:
        piece = read_stream_piece(envelope)
    except EnvelopeError as exc:
        return DeadLetter(unparsed_record_id(envelope), f"not a readable stream piece: {exc}",
                          STAGE_PARSE, b"")
    return sealed_envelope(envelope, piece.header, piece.record_count)


def _read_stream(envelope: bytes, header: EnvelopeHeader, record_streams: bool
                 ) -> SealedEnvelope | DeadLetter:
    try:
        layout = read_record_stream(envelope)
    except EnvelopeError as exc:
        return DeadLetter(header.envelope_id.hex(),
                          f"not a readable record stream: {exc}", STAGE_PARSE, envelope,
                          records=header.record_count or 1)
    count = len(layout.record_ids)
    if not record_streams:
        return DeadLetter(layout.header.envelope_id.hex(),
                          "record-stream envelopes (record profile 2) are not accepted by "
                          "this pipeline (streaming runs take v1 records and batches)",
                          STAGE_PARSE, envelope, records=count)
    return sealed_envelope(envelope, layout.header, count)


class _ParseHeaderFn(beam.DoFn):
    def __init__(self, max_envelope_bytes: int, record_streams: bool) -> None:
        self._max_envelope_bytes = max_envelope_bytes
        self._record_streams = record_streams
        self._records_in = Metrics.counter(NAMESPACE, RECORDS_IN)

    def process(self, envelope: bytes) -> Iterable[object]:
        read = read_sealed(envelope, self._max_envelope_bytes,
                           record_streams=self._record_streams)
        if read.records > 1:        # a record stream's other records (module docstring)
            self._records_in.inc(read.records - 1)
        if isinstance(read, SealedEnvelope):
            yield read
        else:
            yield TaggedOutput(ParseSealed.DEAD_LETTER, read)


class ParseSealed(beam.PTransform):
    """Envelope bytes -> ``SealedEnvelope`` when their header parses; else a dead letter."""

    SEALED = "sealed"
    DEAD_LETTER = "dead_letter"

    def __init__(self, *, max_envelope_bytes: int = MAX_ENVELOPE_BYTES,
                 record_streams: bool = True) -> None:
        super().__init__()
        self._max_envelope_bytes = max_envelope_bytes
        self._record_streams = record_streams

    def expand(self, pcoll: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return pcoll | "ReadHeader" >> beam.ParDo(
            _ParseHeaderFn(self._max_envelope_bytes, self._record_streams)).with_outputs(
            self.DEAD_LETTER, main=self.SEALED)
