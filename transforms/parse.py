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
digest), so no step before the confidential one parses the header again.

What it does not: it does not authenticate the header (that needs the data key, inside the
TEE), and it does not reorder or batch. It does not forward an ``envelope.ParsedEnvelope``:
that pickles as its bytes and is parsed again when unpickled, so between workers it would
save nothing; the confidential step parses each header once itself (``BatchProcessor``),
reusing that parse to open the envelope.
"""

from __future__ import annotations

from collections.abc import Iterable

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from enclave_workers.batch_processor import (
    MAX_ENVELOPE_BYTES,
    STAGE_PARSE,
    DeadLetter,
    unparsed_record_id,
)
from envelope import EnvelopeError, read_header

from .sealed import sealed_envelope

__all__ = ["ParseSealed"]

ENVELOPE_KINDS = ("record", "batch")


class _ParseHeaderFn(beam.DoFn):
    def __init__(self, max_envelope_bytes: int) -> None:
        self._max_envelope_bytes = max_envelope_bytes

    def process(self, envelope: bytes) -> Iterable[object]:
        if len(envelope) > self._max_envelope_bytes:
            yield TaggedOutput(ParseSealed.DEAD_LETTER, DeadLetter(
                unparsed_record_id(envelope),
                f"envelope is {len(envelope)} bytes, over {self._max_envelope_bytes}",
                STAGE_PARSE, b""))
            return
        try:
            header, _ = read_header(envelope)
        except EnvelopeError as exc:
            yield TaggedOutput(ParseSealed.DEAD_LETTER, DeadLetter(
                unparsed_record_id(envelope), f"not a sealed envelope: {exc}", STAGE_PARSE, b""))
            return
        if header.kind not in ENVELOPE_KINDS:
            yield TaggedOutput(ParseSealed.DEAD_LETTER, DeadLetter(
                header.envelope_id.hex(), f"unknown envelope kind {header.kind!r}", STAGE_PARSE,
                envelope))
            return
        yield sealed_envelope(envelope, header)


class ParseSealed(beam.PTransform):
    """Envelope bytes -> ``SealedEnvelope`` when their header parses; else a dead letter."""

    SEALED = "sealed"
    DEAD_LETTER = "dead_letter"

    def __init__(self, *, max_envelope_bytes: int = MAX_ENVELOPE_BYTES) -> None:
        super().__init__()
        self._max_envelope_bytes = max_envelope_bytes

    def expand(self, pcoll: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return pcoll | "ReadHeader" >> beam.ParDo(
            _ParseHeaderFn(self._max_envelope_bytes)).with_outputs(
            self.DEAD_LETTER, main=self.SEALED)
