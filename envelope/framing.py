"""Where the ciphertext lies: the structural walk of record and batch bodies, no key needed.

A record body is ``u32 BE length || ciphertext``; a batch body is a run of segment frames
``u8 final || u32 BE length || ciphertext`` ending with the one frame whose flag is 1
(docs/FORMAT.md section 3); a record stream's frames are walked by
``envelope.record_stream`` (section 13). These walkers bound every length before they step
over it and report where each ciphertext starts, so openers can decrypt memoryview slices
in place and :func:`envelope_length` can tell where an envelope ends inside a larger
buffer. They never decrypt and never judge trailing bytes; the openers do.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from envelope._wire import BoundedReader
from envelope.errors import EnvelopeFormatError, EnvelopeLimitError
from envelope.header import KIND_RECORD, KIND_RECORD_STREAM, ParsedEnvelope, view_and_header
from envelope.limits import MAX_RECORD_PLAINTEXT, MAX_SEGMENT_COUNT, TAG_LENGTH

__all__ = ["SegmentFrame", "envelope_length", "iter_batch_frames", "record_frame"]

_FLAG_MORE = 0
_FLAG_FINAL = 1


class MissingFinalSegmentError(EnvelopeFormatError):
    """A batch body ends at a frame boundary before its final segment (truncation).

    Openers turn this into :class:`EnvelopeAuthenticationError`, as STREAM demands;
    :func:`envelope_length` lets it through as the structural fact it is.
    """


@dataclass(frozen=True)
class SegmentFrame:
    """One ciphertext's place in the envelope: ``view[start:start + length]``."""

    index: int
    start: int
    length: int
    final: bool

    @property
    def end(self) -> int:
        return self.start + self.length


def record_frame(view: memoryview, position: int) -> SegmentFrame:
    """The single ciphertext of a record body that starts at ``position``."""
    reader = BoundedReader(view, position)
    length = reader.u32("record length")
    maximum = MAX_RECORD_PLAINTEXT + TAG_LENGTH
    if length > maximum:
        raise EnvelopeLimitError(f"record length {length} exceeds {maximum}")
    if length < TAG_LENGTH:
        raise EnvelopeFormatError(f"record length {length} is below {TAG_LENGTH}")
    start = reader.position
    reader.take(length, "record ciphertext")
    return SegmentFrame(index=0, start=start, length=length, final=True)


def iter_batch_frames(view: memoryview, position: int, segment_size: int) -> Iterator[SegmentFrame]:
    """Every segment frame of a batch body that starts at ``position``, checked as it goes.

    Non-final segments hold exactly ``segment_size`` plaintext bytes; the final one holds
    1..segment_size (0 only when it is the only segment, i.e. an empty batch).
    """
    reader = BoundedReader(view, position)
    full_length = segment_size + TAG_LENGTH
    index = 0
    while True:
        if reader.remaining == 0:
            raise MissingFinalSegmentError(f"batch ends before its final segment (after {index})")
        if index >= MAX_SEGMENT_COUNT:
            raise EnvelopeLimitError(f"segment count exceeds {MAX_SEGMENT_COUNT}")
        flag = reader.u8(f"segment {index} flag")
        if flag not in (_FLAG_MORE, _FLAG_FINAL):
            raise EnvelopeFormatError(f"segment {index} flag {flag} is not 0 or 1")
        length = reader.u32(f"segment {index} length")
        if length > full_length:
            raise EnvelopeLimitError(f"segment {index} length {length} exceeds {full_length}")
        if length < TAG_LENGTH:
            raise EnvelopeFormatError(f"segment {index} length {length} is below {TAG_LENGTH}")
        final = flag == _FLAG_FINAL
        if not final and length != full_length:
            raise EnvelopeFormatError(
                f"segment {index} is not final but its length {length} is not {full_length}"
            )
        if final and index > 0 and length == TAG_LENGTH:
            raise EnvelopeFormatError(f"final segment {index} is empty")
        start = reader.position
        reader.take(length, f"segment {index} ciphertext")
        yield SegmentFrame(index=index, start=start, length=length, final=final)
        if final:
            return
        index += 1


def envelope_length(data: bytes | bytearray | memoryview | ParsedEnvelope) -> int:
    """The length of the envelope at the start of ``data``; the rest of ``data`` is ignored.

    Structural only (no key): proves the envelope is well formed and complete, not that it
    is authentic. A batch cut at a segment boundary raises :class:`EnvelopeFormatError`, as
    does a record stream with fewer frames than its header's record count.
    A :class:`ParsedEnvelope` is not parsed again.
    """
    view, header, layout = view_and_header(data)
    header_length = layout.end
    if header.kind == KIND_RECORD:
        return record_frame(view, header_length).end
    if header.kind == KIND_RECORD_STREAM:
        from envelope.record_stream import record_stream_end  # the stream's own walker

        return record_stream_end(view, header, layout)
    end = header_length
    for frame in iter_batch_frames(view, header_length, header.segment_size):
        end = frame.end
    return end
