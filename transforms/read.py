"""Read sealed records: files of base64 envelopes, one per line, or raw message bytes.

Usage::

    read = p | ReadSealedRecords("gs://partner-drop/acme/*.sealed")
    envelopes = read[ReadSealedRecords.SEALED]          # bytes, still sealed
    dead = read[ReadSealedRecords.DEAD_LETTER]           # DeadLetter

    # Pub/Sub (or any source of base64 lines as bytes):
    decoded = messages | DecodeSealedLines()

    # Messages that are each one raw (binary) envelope:
    accepted = messages | RawSealedMessages()

    # Files matched elsewhere (a file-drop feed; pipelines/file_drop.py):
    read = matches | fileio.ReadMatches() | ReadSealedFiles()

Work spreads: ``ReadSealedRecords`` matches files with ``fileio.MatchFiles``, cuts each
uncompressed file into byte ranges of ``range_bytes`` (``FileRange``; a compressed file is one
range), and breaks fusion with a ``Reshuffle`` of those small range elements, so every worker
of the runner reads ranges and the steps fused after the read (parse, de-duplication keys)
run where the reading did. A line belongs to the range holding its first byte: a range that
does not start at 0 skips the partial line it starts in and reads past its end to finish its
last line, so every line is read exactly once, whatever the range size. A sealed batch
envelope is one line, so it is one unit, never split.

Framing is robust: lines are split by this module with a hard length bound, so a corrupt line
(not base64, over the bound) becomes one dead letter and the file goes on. A framing dead
letter carries the line's location (``path@<byte offset>``) and digest but not its bytes,
since bytes that are not an envelope could be anything, even a partner's plaintext. Every
non-blank line counts once in the ``records_in`` metric, and so does every raw message.
``ReadSealedFiles`` reads whole matched files (``path:<line number>``), for files a streaming
source matched.

What it does not: it never parses envelope headers (``ParseSealed`` does) and never decrypts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from enclave_workers.batch_processor import STAGE_FRAMING, DeadLetter

from .errors import TransformConfigError
from .metrics import NAMESPACE, RECORDS_IN

__all__ = ["DEFAULT_RANGE_BYTES", "MAX_LINE_BYTES", "DecodeSealedLines", "FileRange",
           "RawSealedMessages", "ReadSealedFiles", "ReadSealedRecords", "file_ranges",
           "iter_bounded_lines", "iter_range_lines"]

MAX_LINE_BYTES = 64 << 20          # one base64 envelope line (envelopes are far smaller)
DEFAULT_RANGE_BYTES = 16 << 20     # a unit of reading work
_READ_CHUNK = 1 << 20


def _digest_id(line: bytes) -> str:
    return f"sha256:{hashlib.sha256(line).hexdigest()[:32]}"


def iter_bounded_lines(stream: BinaryIO, max_line_bytes: int
                       ) -> Iterator[tuple[int, bytes | None, int]]:
    """Yield (line number, line or None when over the bound, line length) from a stream.

    An overlong line is skipped chunk by chunk, never held in memory whole.
    """
    line_no = 0
    pending = bytearray()
    overlong_length = -1           # >= 0 while skipping an overlong line
    while True:
        chunk = stream.read(_READ_CHUNK)
        if not chunk:
            break
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            piece = chunk[start:] if newline < 0 else chunk[start:newline]
            if overlong_length >= 0:
                overlong_length += len(piece)
            else:
                pending += piece
                if len(pending) > max_line_bytes:
                    overlong_length = len(pending)
                    pending.clear()
            if newline < 0:
                break
            line_no += 1
            if overlong_length >= 0:
                yield line_no, None, overlong_length
            else:
                yield line_no, bytes(pending), len(pending)
            pending.clear()
            overlong_length = -1
            start = newline + 1
    if overlong_length >= 0:
        yield line_no + 1, None, overlong_length
    elif pending:
        yield line_no + 1, bytes(pending), len(pending)


@dataclass(frozen=True)
class FileRange:
    """Bytes ``[start, end)`` of ``path``: the lines whose first byte lies there.

    ``compressed`` ranges cover a whole compressed file (``end`` is its stored size), read
    from the start through the file's decompression.
    """

    path: str
    start: int
    end: int
    compressed: bool = False


def file_ranges(path: str, size: int, range_bytes: int) -> list[FileRange]:
    """Ranges of at most ``range_bytes`` covering a file (one range when compressed/empty)."""
    compressed = CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED
    if compressed or size <= range_bytes:
        return [FileRange(path, 0, max(size, 0), compressed)]
    return [FileRange(path, start, min(start + range_bytes, size))
            for start in range(0, size, range_bytes)]


def _skip_partial_line(stream: BinaryIO, start: int) -> int:
    """From a stream positioned at ``start - 1``: skip to just after the next newline; returns
    the offset reached (the first line starting at or after ``start``)."""
    offset = start - 1
    while True:
        chunk = stream.read(_READ_CHUNK)
        if not chunk:
            return offset
        newline = chunk.find(b"\n")
        if newline >= 0:
            # Push back what follows the newline by seeking (the stream is seekable).
            offset += newline + 1
            stream.seek(offset)
            return offset
        offset += len(chunk)


def iter_range_lines(stream: BinaryIO, file_range: FileRange, max_line_bytes: int
                     ) -> Iterator[tuple[int, bytes | None, int]]:
    """Yield (offset, line or None when over the bound, length) of the range's lines.

    ``stream`` is the file opened at offset 0; it is seeked unless the range starts at 0.
    """
    offset = 0
    if file_range.start > 0:
        stream.seek(file_range.start - 1)
        offset = _skip_partial_line(stream, file_range.start)
    for line_offset, line, length in _iter_lines_at(stream, offset, max_line_bytes):
        if not file_range.compressed and line_offset >= file_range.end:
            return
        yield line_offset, line, length


def _iter_lines_at(stream: BinaryIO, base: int, max_line_bytes: int
                   ) -> Iterator[tuple[int, bytes | None, int]]:
    """``iter_bounded_lines`` with each line's byte offset instead of its number."""
    line_start = base
    for _, line, length in iter_bounded_lines(stream, max_line_bytes):
        yield line_start, line, length
        line_start += length + 1


def decode_line(line: bytes, record_id: str | None = None) -> bytes | DeadLetter:
    """One base64 line -> envelope bytes, or a framing dead letter without the line's bytes.

    The dead letter is named by ``record_id`` (a file location) or else by a digest.
    """
    line = line.strip()
    if len(line) > MAX_LINE_BYTES:
        return DeadLetter(record_id or _digest_id(line[:MAX_LINE_BYTES]),
                          f"line is {len(line)} bytes, over {MAX_LINE_BYTES}", STAGE_FRAMING, b"")
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        return DeadLetter(record_id or _digest_id(line),
                          f"line of {len(line)} bytes is not valid base64", STAGE_FRAMING, b"")


class _FramedLinesFn(beam.DoFn):
    """Base of the file readers: base64 lines -> envelope bytes, or framing dead letters."""

    def __init__(self, max_line_bytes: int) -> None:
        self._max_line_bytes = max_line_bytes
        self._records_in = Metrics.counter(NAMESPACE, RECORDS_IN)

    def _decoded(self, lines: Iterable[tuple[str, bytes | None, int]]) -> Iterator[object]:
        """(where, the line or None when over the bound, its length) -> each envelope, or a
        dead letter for a line too long or not base64; blank lines are no records."""
        for where, line, length in lines:
            if line is not None and not line.strip():
                continue
            self._records_in.inc()
            if line is None:
                yield TaggedOutput(ReadSealedRecords.DEAD_LETTER, DeadLetter(
                    where, f"line is {length} bytes, over {self._max_line_bytes}",
                    STAGE_FRAMING, b""))
                continue
            decoded = decode_line(line, where)
            if isinstance(decoded, DeadLetter):
                yield TaggedOutput(ReadSealedRecords.DEAD_LETTER, decoded)
            else:
                yield decoded


class _ReadFramedLinesFn(_FramedLinesFn):
    """Splits one matched file into base64 lines and decodes each."""

    def process(self, readable_file: fileio.ReadableFile) -> Iterable[object]:
        path = readable_file.metadata.path
        with readable_file.open(mime_type="application/octet-stream") as stream:
            yield from self._decoded(
                (f"{path}:{line_no}", line, length)
                for line_no, line, length in iter_bounded_lines(stream, self._max_line_bytes))


class _SplitFileFn(beam.DoFn):
    def __init__(self, range_bytes: int) -> None:
        self._range_bytes = range_bytes

    def process(self, metadata: FileMetadata) -> Iterable[FileRange]:
        yield from file_ranges(metadata.path, metadata.size_in_bytes, self._range_bytes)


class _ReadRangeFn(_FramedLinesFn):
    """Reads one ``FileRange``: its lines, base64-decoded, or framing dead letters."""

    def process(self, file_range: FileRange) -> Iterable[object]:
        compression = (CompressionTypes.AUTO if file_range.compressed
                       else CompressionTypes.UNCOMPRESSED)
        with FileSystems.open(file_range.path, mime_type="application/octet-stream",
                              compression_type=compression) as stream:
            yield from self._decoded(
                (f"{file_range.path}@{offset}", line, length)
                for offset, line, length in iter_range_lines(stream, file_range,
                                                             self._max_line_bytes))


class _DecodeLinesFn(beam.DoFn):
    def __init__(self) -> None:
        self._records_in = Metrics.counter(NAMESPACE, RECORDS_IN)

    def process(self, line: bytes) -> Iterable[object]:
        if not line.strip():
            return
        self._records_in.inc()
        decoded = decode_line(line)
        if isinstance(decoded, DeadLetter):
            yield TaggedOutput(DecodeSealedLines.DEAD_LETTER, decoded)
        else:
            yield decoded


class _AcceptRawFn(beam.DoFn):
    def __init__(self) -> None:
        self._records_in = Metrics.counter(NAMESPACE, RECORDS_IN)

    def process(self, message: bytes) -> Iterable[object]:
        self._records_in.inc()
        if not message:
            yield TaggedOutput(RawSealedMessages.DEAD_LETTER, DeadLetter(
                _digest_id(b""), "message is empty", STAGE_FRAMING, b""))
        else:
            yield message


class ReadSealedRecords(beam.PTransform):
    """Files matching ``file_pattern`` (one base64 envelope per line) -> envelope bytes,
    read in byte ranges of ``range_bytes`` spread over the workers."""

    SEALED = "sealed"
    DEAD_LETTER = "dead_letter"

    def __init__(self, file_pattern: str, *, max_line_bytes: int = MAX_LINE_BYTES,
                 range_bytes: int = DEFAULT_RANGE_BYTES) -> None:
        super().__init__()
        if range_bytes < 1:
            raise TransformConfigError("range_bytes must be at least 1")
        self._file_pattern = file_pattern
        self._max_line_bytes = max_line_bytes
        self._range_bytes = range_bytes

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        return (
            pbegin
            | "Match" >> fileio.MatchFiles(self._file_pattern, empty_match_treatment="DISALLOW")
            | "SplitRanges" >> beam.ParDo(_SplitFileFn(self._range_bytes))
            | "SpreadRanges" >> beam.Reshuffle()
            | "ReadRanges" >> beam.ParDo(_ReadRangeFn(self._max_line_bytes))
            .with_outputs(self.DEAD_LETTER, main=self.SEALED)
        )


class DecodeSealedLines(beam.PTransform):
    """Bytes elements holding one base64 envelope each (e.g. Pub/Sub data) -> envelope bytes."""

    SEALED = "sealed"
    DEAD_LETTER = "dead_letter"

    def expand(self, pcoll: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return pcoll | "Decode" >> beam.ParDo(_DecodeLinesFn()).with_outputs(
            self.DEAD_LETTER, main=self.SEALED)


class ReadSealedFiles(beam.PTransform):
    """``fileio.ReadableFile`` elements (one base64 envelope per line) -> envelope bytes.

    The decoding step of ``ReadSealedRecords`` for files matched by another source, such as
    a file-drop feed, so a streamed file reads exactly as a batch one.
    """

    SEALED = ReadSealedRecords.SEALED
    DEAD_LETTER = ReadSealedRecords.DEAD_LETTER

    def __init__(self, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        super().__init__()
        self._max_line_bytes = max_line_bytes

    def expand(self, files: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return files | "SplitAndDecode" >> beam.ParDo(
            _ReadFramedLinesFn(self._max_line_bytes)).with_outputs(
            self.DEAD_LETTER, main=self.SEALED)


class RawSealedMessages(beam.PTransform):
    """Bytes elements holding one raw (binary) envelope each, e.g. Pub/Sub data -> the same
    bytes, counted in ``records_in``; an empty message is a framing dead letter.

    Size and structure are ``ParseSealed``'s to check, as for every other source.
    """

    SEALED = "sealed"
    DEAD_LETTER = "dead_letter"

    def expand(self, pcoll: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return pcoll | "Accept" >> beam.ParDo(_AcceptRawFn()).with_outputs(
            self.DEAD_LETTER, main=self.SEALED)
