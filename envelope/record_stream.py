"""Record profile 2: many small records in one envelope under one per-stream key.

A v1 record envelope pays for its own salt, HKDF, key commitment, AES key setup and header
tag, and carries a ~300-byte header, per record. A **record stream** (kind ``03``,
docs/FORMAT.md section 13) pays for them once per stream: the same v1 header (the
``segment_size`` slot holds the committed record count), the same HKDF, commitment and
header tag, then one frame per record::

    u32 ciphertext_length || record_id (16) || u64 event_time_ms (0 = none) || ciphertext||tag

Record ``i`` is AES-256-GCM under the stream key with ``nonce_i = 8 zero bytes || u32 i``
and ``aad_i = stream_digest || record_id || u64 event_time_ms || u32 i``, where
``stream_digest = SHA-256("sealbeam/record-stream/v1" 00 || core header)``. So a frame
cannot move to another stream or another index, and its id and event time cannot change,
unnoticed; the key block is outside every AAD, so rewrap works as for v1.

Errors: structure first, for the whole stream (header, total length, each frame in order,
the committed count, no trailing bytes, no duplicate record id) as
:class:`EnvelopeFormatError` / :class:`EnvelopeLimitError`; then commitment and header tag
(:class:`EnvelopeAuthenticationError`, the whole stream); then each record's GCM tag, whose
failure is reported in that record's place (:class:`StreamRecordFailure`) while its
siblings open.

Final API (stable; additive changes only)::

    KIND_RECORD_STREAM = "record-stream"
    seal_record_stream(plaintexts, *, data_key, wrapped_key, region, producer_id,
                       schema_fingerprint, context, event_times_ms=None) -> bytes
    open_record_stream(envelope, data_key, *, indices=None) -> OpenedRecordStream
                                      # raises stream-level; indices: only those records
    OpenedRecordStream(header, records: list[StreamRecord], failures: list[StreamRecordFailure])
    StreamRecord(index, record_id: bytes, event_time_ms: int | None, plaintext: bytes)
    StreamRecordFailure(index, record_id: bytes, error: EnvelopeError)
    read_record_stream(envelope) -> RecordStreamLayout                   # structure, no key
    RecordStreamLayout(header, header_length, record_ids, event_times_ms, frame_offsets,
                       core_end, length)
    extract_stream_record(envelope, index) -> bytes      # a sealed one-record excerpt (SBRX)
    extract_stream_records(envelope, indices, *, layout=None) -> list[bytes]  # one walk
    read_stream_record(excerpt) -> StreamRecordExcerpt   # its structure, no key
    open_stream_record(excerpt, data_key) -> StreamRecord  # raises
    extract_stream_piece(envelope, indices, *, layout=None) -> bytes  # SBRX v2, no key
    read_stream_piece(piece) -> StreamPiece              # SBRX v1 or v2 structure, no key
    open_stream_piece(piece, data_key) -> OpenedRecordStream            # raises stream-level
    piece_records(piece, indices) -> list[bytes]         # one-record excerpts of a piece
    is_stream_excerpt(data) -> bool                      # starts with "SBRX"
    STREAM_RECORD_MARK = "#"; index_ranges(indices) -> str  # "<stream id>#0-2,5" names
    parse_index_ranges(text) -> set[int] | None          # the canonical text only

``envelope`` may be bytes, a memoryview or a :class:`ParsedEnvelope`. An excerpt is how a
dead letter keeps one record of a stream sealed without the key: ``"SBRX" || 01 || u32
index || the stream's header || the record's frame``; only the DEK holder can open it. A
**piece** (multi-record excerpt, ``"SBRX" || 02 || u32 n || n x u32 index (strictly
increasing) || the stream's header || those n frames``) is how the streaming pipeline
splits a stream whose records fall into several event-time windows, outside the TEE and
without a key; the TEE authenticates the header once and opens just those records, each
under its own stream index (nonce and AAD as in the stream), so a piece can neither gain a
record nor move one to another index unnoticed.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from envelope._sealed_header import authenticate_parsed_header
from envelope._sealing import SealingRequest, start_envelope
from envelope._wire import as_byte_view
from envelope.errors import (
    EnvelopeAuthenticationError,
    EnvelopeError,
    EnvelopeFormatError,
    EnvelopeLimitError,
    RecordIndexError,
)
from envelope.header import (
    KIND_RECORD_STREAM,
    EnvelopeHeader,
    HeaderLayout,
    ParsedEnvelope,
    parse_header,
    view_and_header,
)
from envelope.keys import DataKey, WrappedKey
from envelope.limits import (
    MAX_EVENT_TIME_MS,
    MAX_STREAM_LENGTH,
    MAX_STREAM_RECORD_PLAINTEXT,
    MAX_STREAM_RECORDS,
    TAG_LENGTH,
)

__all__ = [
    "EXCERPT_MAGIC",
    "KIND_RECORD_STREAM",
    "OpenedRecordStream",
    "RecordIndexError",
    "RecordStreamLayout",
    "StreamPiece",
    "StreamRecord",
    "StreamRecordExcerpt",
    "StreamRecordFailure",
    "extract_stream_piece",
    "extract_stream_record",
    "extract_stream_records",
    "is_stream_excerpt",
    "open_record_stream",
    "open_stream_piece",
    "open_stream_record",
    "piece_records",
    "read_record_stream",
    "read_stream_piece",
    "read_stream_record",
    "seal_record_stream",
    "stream_digest",
]

STREAM_DIGEST_LABEL = b"sealbeam/record-stream/v1\x00"
RECORD_ID_LENGTH = 16
FRAME_HEAD = struct.Struct(">I16sQ")  # ciphertext length, record id, event time: 28 bytes
FRAME_HEAD_LENGTH = FRAME_HEAD.size
FRAME_OVERHEAD = FRAME_HEAD_LENGTH + TAG_LENGTH  # 44 bytes a record besides its plaintext
MAX_STREAM_CIPHERTEXT = MAX_STREAM_RECORD_PLAINTEXT + TAG_LENGTH
EXCERPT_MAGIC = b"SBRX"
EXCERPT_VERSION = 1
PIECE_VERSION = 2
_EXCERPT_PREFIX = struct.Struct(">4sBI")  # magic, version, index (v1) or count (v2): 9 bytes
_NONCE_PREFIX = bytes(8)


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One opened record: its index in the stream, id, event time (None if 0) and plaintext."""

    index: int
    record_id: bytes
    event_time_ms: int | None
    plaintext: bytes


# The slot descriptors of StreamRecord, for building one in the opener's loop (see there).
_RECORD_SETTERS = tuple(
    getattr(StreamRecord, name).__set__
    for name in ("index", "record_id", "event_time_ms", "plaintext"))


@dataclass(frozen=True, slots=True)
class StreamRecordFailure:
    """A record whose frame is well formed but did not authenticate (its GCM tag failed)."""

    index: int
    record_id: bytes
    error: EnvelopeError


@dataclass(frozen=True, slots=True)
class OpenedRecordStream:
    """Every record of an authenticated stream: opened ones and, in index order, failures."""

    header: EnvelopeHeader
    records: list[StreamRecord]
    failures: list[StreamRecordFailure]


@dataclass(frozen=True, slots=True)
class RecordStreamLayout:
    """A stream's structure, read without a key: what a pipeline sees outside the TEE.

    Frame ``i`` is ``envelope[frame_offsets[i] : frame_offsets[i + 1]]`` (the last one ends
    at ``length``); its ciphertext starts ``FRAME_HEAD_LENGTH`` (28) bytes in. The core
    header (what the stream digest covers) is ``envelope[:core_end]``.
    """

    header: EnvelopeHeader
    header_length: int
    record_ids: tuple[bytes, ...]
    event_times_ms: tuple[int | None, ...]
    frame_offsets: tuple[int, ...]
    core_end: int
    length: int

    @property
    def record_count(self) -> int:
        return len(self.record_ids)

    def frame_end(self, index: int) -> int:
        offsets = self.frame_offsets
        return offsets[index + 1] if index + 1 < len(offsets) else self.length


@dataclass(frozen=True, slots=True)
class StreamRecordExcerpt:
    """The structure of a one-record excerpt (``SBRX``), read without a key."""

    header: EnvelopeHeader
    index: int
    record_id: bytes
    event_time_ms: int | None


def stream_digest(core_header: bytes | memoryview) -> bytes:
    """``SHA-256("sealbeam/record-stream/v1" 00 || core header)``: every record's AAD binds it."""
    return hashlib.sha256(STREAM_DIGEST_LABEL + bytes(core_header)).digest()


# -- structure -----------------------------------------------------------------------------


def _walk_frames(
    view: memoryview, start: int, count: int
) -> tuple[tuple[bytes, ...], tuple[int | None, ...], tuple[int, ...], int]:
    """Record ids, event times and frame offsets of ``count`` frames from ``start``, checked
    in order (frame head, ciphertext length bound, ciphertext present, event time bound,
    record id not seen before); and where the last frame ends."""
    size = len(view)
    unpack = FRAME_HEAD.unpack_from
    ids: list[bytes] = []
    times: list[int | None] = []
    offsets: list[int] = []
    seen: set[bytes] = set()
    position = start
    for index in range(count):
        if size - position < FRAME_HEAD_LENGTH:
            if position == size:
                raise EnvelopeFormatError(
                    f"record stream truncated: {count} records committed, {index} present")
            raise EnvelopeFormatError(
                f"record {index} frame head truncated: needs {FRAME_HEAD_LENGTH} bytes, "
                f"{size - position} remain")
        length, record_id, event_time = unpack(view, position)
        if length > MAX_STREAM_CIPHERTEXT:
            raise EnvelopeLimitError(
                f"record {index} length {length} exceeds {MAX_STREAM_CIPHERTEXT}")
        if length < TAG_LENGTH:
            raise EnvelopeFormatError(f"record {index} length {length} is below {TAG_LENGTH}")
        end = position + FRAME_HEAD_LENGTH + length
        if end > MAX_STREAM_LENGTH:  # inside a larger buffer (envelope_length): stop here
            raise EnvelopeLimitError(
                f"record stream length {end} exceeds {MAX_STREAM_LENGTH} at record {index}")
        if end > size:
            raise EnvelopeFormatError(
                f"record {index} ciphertext truncated: needs {length} bytes, "
                f"{size - position - FRAME_HEAD_LENGTH} remain")
        if event_time > MAX_EVENT_TIME_MS:
            raise EnvelopeFormatError(
                f"record {index} event time {event_time} exceeds {MAX_EVENT_TIME_MS}")
        if record_id in seen:
            raise EnvelopeFormatError(f"record {index} repeats record id {record_id.hex()}")
        seen.add(record_id)
        ids.append(record_id)
        times.append(event_time or None)
        offsets.append(position)
        position = end
    return tuple(ids), tuple(times), tuple(offsets), position


def _stream_layout(view: memoryview, header: EnvelopeHeader, layout: HeaderLayout,
                   *, whole: bool) -> RecordStreamLayout:
    if header.kind != KIND_RECORD_STREAM:
        raise EnvelopeFormatError(f"kind is {header.kind!r}, expected 'record-stream'")
    if whole and len(view) > MAX_STREAM_LENGTH:
        raise EnvelopeLimitError(
            f"record stream length {len(view)} exceeds {MAX_STREAM_LENGTH}")
    ids, times, offsets, end = _walk_frames(view, layout.end, header.segment_size)
    if whole and end != len(view):
        raise EnvelopeFormatError(f"{len(view) - end} trailing bytes after the record stream")
    return RecordStreamLayout(header=header, header_length=layout.end, record_ids=ids,
                              event_times_ms=times, frame_offsets=offsets,
                              core_end=layout.core_end, length=end)


def read_record_stream(envelope: bytes | memoryview | ParsedEnvelope) -> RecordStreamLayout:
    """The structure of a whole record stream (no key): header, ids, event times, offsets.

    Raises :class:`EnvelopeFormatError` / :class:`EnvelopeLimitError` for anything that
    :func:`open_record_stream` would reject before it needs the key.
    """
    view, header, layout = view_and_header(envelope)
    return _stream_layout(view, header, layout, whole=True)


def record_stream_end(view: memoryview, header: EnvelopeHeader, layout: HeaderLayout) -> int:
    """Where the stream that starts ``view`` ends (bytes after it are not judged)."""
    return _stream_layout(view, header, layout, whole=False).length


# -- opening -------------------------------------------------------------------------------


def checked_indices(indices: Sequence[int], count: int) -> list[int]:
    """``indices`` sorted, after checking that they are distinct ints in ``0..count-1``.

    Raises :class:`RecordIndexError` (a typed :class:`EnvelopeFormatError`) otherwise.
    """
    checked = []
    for index in indices:
        if not isinstance(index, int) or isinstance(index, bool):
            raise RecordIndexError(f"a record index must be int, not {type(index).__name__}")
        if not 0 <= index < count:
            raise RecordIndexError(f"record index {index} out of range for {count} records")
        checked.append(index)
    checked.sort()
    for previous, current in itertools.pairwise(checked):
        if previous == current:
            raise RecordIndexError(f"record index {current} is asked for twice")
    return checked


def open_record_stream(envelope: bytes | memoryview | ParsedEnvelope,
                       data_key: DataKey, *,
                       indices: Sequence[int] | None = None) -> OpenedRecordStream:
    """Every record of a stream (or only those at ``indices``), each opened or failed;
    stream-level failures raise.

    Raises :class:`EnvelopeFormatError` for any structural fault (the whole stream is
    checked even when ``indices`` asks for a few records), :class:`RecordIndexError` for
    indices that are not distinct indices of the stream, then the uniform
    :class:`EnvelopeAuthenticationError` for a wrong DEK or a changed header. A record whose
    GCM tag fails is a :class:`StreamRecordFailure` in ``failures``. Records and failures
    come in index order.
    """
    view, header, layout = view_and_header(envelope)
    shape = _stream_layout(view, header, layout, whole=True)
    selected = None if indices is None else checked_indices(indices, shape.record_count)
    keys = authenticate_parsed_header(view, header, layout, data_key)
    offsets = shape.frame_offsets
    ends = (*offsets[1:], shape.length)
    if selected is None:
        positions: Sequence[int] = range(len(offsets))
        stream_indices: Sequence[int] = positions
    else:
        positions = stream_indices = selected
    return _open_frames(view, header, keys.cipher.decrypt,
                        stream_digest(view[: layout.core_end]), shape.record_ids,
                        shape.event_times_ms, offsets, ends, positions, stream_indices)


def _open_frames(view: memoryview, header: EnvelopeHeader, decrypt, digest: bytes,
                 ids: Sequence[bytes], times: Sequence[int | None], offsets: Sequence[int],
                 ends: Sequence[int], positions: Sequence[int],
                 stream_indices: Sequence[int]) -> OpenedRecordStream:
    """Open the frames at ``positions`` (of ``offsets``/``ends``), frame ``positions[k]``
    being record ``stream_indices[k]`` of its stream (its nonce and AAD)."""
    records: list[StreamRecord] = []
    failures: list[StreamRecordFailure] = []
    nonce_prefix = _NONCE_PREFIX
    append = records.append
    new = object.__new__
    set_index, set_id, set_time, set_plaintext = _RECORD_SETTERS
    for position, index in zip(positions, stream_indices, strict=False):
        start = offsets[position]
        counter = index.to_bytes(4, "big")
        head_end = start + FRAME_HEAD_LENGTH
        try:
            plaintext = decrypt(nonce_prefix + counter, view[head_end : ends[position]],
                                digest + view[start + 4 : head_end] + counter)
        except InvalidTag:
            failures.append(StreamRecordFailure(index, ids[position],
                                                EnvelopeAuthenticationError()))
            continue
        # StreamRecord(index, ...) without the frozen __init__'s four object.__setattr__
        # calls: the slots' own descriptors, half the cost of a record's Python overhead.
        record = new(StreamRecord)
        set_index(record, index)
        set_id(record, ids[position])
        set_time(record, times[position])
        set_plaintext(record, plaintext)
        append(record)
    return OpenedRecordStream(header=header, records=records, failures=failures)


# -- sealing -------------------------------------------------------------------------------


def seal_record_stream(
    plaintexts: Sequence[bytes | bytearray | memoryview],
    *,
    data_key: DataKey,
    wrapped_key: WrappedKey,
    region: str,
    producer_id: str,
    schema_fingerprint: bytes,
    context: Mapping[str, str],
    event_times_ms: Sequence[int | None] | None = None,
) -> bytes:
    """One record-stream envelope holding ``plaintexts`` in order (1..65,536 of them).

    ``event_times_ms`` (optional, same length) gives each record's event time in
    milliseconds since the epoch, 1..MAX_EVENT_TIME_MS; ``0`` or ``None`` means none. A
    fresh random salt, envelope id and record ids; raises before sealing anything if a
    count, length or time is out of bounds.
    """
    request = SealingRequest(data_key, wrapped_key, region, producer_id, schema_fingerprint,
                             context)
    return _seal_stream(plaintexts, event_times_ms, request)


def _seal_record_stream_with(
    plaintexts: Sequence[bytes], *, salt: bytes, envelope_id: bytes,
    record_ids: Sequence[bytes], event_times_ms: Sequence[int | None] | None = None,
    **arguments: object,
) -> bytes:
    """Deterministic sealing for known-answer vectors only: a reused salt reuses the key."""
    request = SealingRequest(**arguments)  # type: ignore[arg-type]
    return _seal_stream(plaintexts, event_times_ms, request, salt=salt,
                        envelope_id=envelope_id, record_ids=record_ids)


def _checked_times(event_times_ms: Sequence[int | None] | None, count: int) -> list[int]:
    if event_times_ms is None:
        return [0] * count
    if len(event_times_ms) != count:
        raise EnvelopeFormatError(
            f"{len(event_times_ms)} event times for {count} records")
    times = []
    for index, value in enumerate(event_times_ms):
        if value is None:
            value = 0
        if not isinstance(value, int) or isinstance(value, bool):
            raise EnvelopeFormatError(
                f"record {index} event time must be int, not {type(value).__name__}")
        if value < 0:
            raise EnvelopeFormatError(f"record {index} event time {value} is negative")
        if value > MAX_EVENT_TIME_MS:
            raise EnvelopeFormatError(
                f"record {index} event time {value} exceeds {MAX_EVENT_TIME_MS}")
        times.append(value)
    return times


def _fresh_record_ids(count: int) -> list[bytes]:
    """``count`` distinct random 16-byte ids (a repeat is drawn again; it never happens)."""
    while True:
        pool = os.urandom(RECORD_ID_LENGTH * count)
        ids = [pool[i : i + RECORD_ID_LENGTH] for i in range(0, len(pool), RECORD_ID_LENGTH)]
        if len(set(ids)) == count:
            return ids


def _seal_stream(
    plaintexts: Sequence[bytes | bytearray | memoryview],
    event_times_ms: Sequence[int | None] | None,
    request: SealingRequest,
    *,
    salt: bytes | None = None,
    envelope_id: bytes | None = None,
    record_ids: Sequence[bytes] | None = None,
) -> bytes:
    count = len(plaintexts)
    if count > MAX_STREAM_RECORDS:
        raise EnvelopeLimitError(f"record count {count} exceeds {MAX_STREAM_RECORDS}")
    if count < 1:
        raise EnvelopeFormatError("a record stream holds at least one record")
    bodies = [as_byte_view(plaintext) for plaintext in plaintexts]
    body_bytes = 0
    for index, body in enumerate(bodies):
        if len(body) > MAX_STREAM_RECORD_PLAINTEXT:
            raise EnvelopeLimitError(f"record {index} plaintext length {len(body)} exceeds "
                                     f"{MAX_STREAM_RECORD_PLAINTEXT}")
        body_bytes += len(body) + FRAME_OVERHEAD
    times = _checked_times(event_times_ms, count)
    if record_ids is None:
        ids = _fresh_record_ids(count)
    else:
        ids = [bytes(record_id) for record_id in record_ids]
        if len(ids) != count or any(len(i) != RECORD_ID_LENGTH for i in ids):
            raise EnvelopeFormatError(f"record ids must be {count} x {RECORD_ID_LENGTH} bytes")
        if len(set(ids)) != count:
            raise EnvelopeFormatError("record ids repeat")
    started = start_envelope(request, kind=KIND_RECORD_STREAM, segment_size=count, salt=salt,
                             envelope_id=envelope_id)
    wire = started.sealed_header.wire
    total = len(wire) + body_bytes
    if total > MAX_STREAM_LENGTH:
        raise EnvelopeLimitError(f"record stream length {total} exceeds {MAX_STREAM_LENGTH}")
    encrypt = started.keys.cipher.encrypt
    digest = stream_digest(started.sealed_header.core)
    parts = [wire]
    append = parts.append
    for index, body in enumerate(bodies):
        counter = index.to_bytes(4, "big")
        id_and_time = ids[index] + times[index].to_bytes(8, "big")
        ciphertext = encrypt(_NONCE_PREFIX + counter, body, digest + id_and_time + counter)
        append(len(ciphertext).to_bytes(4, "big"))
        append(id_and_time)
        append(ciphertext)
    return b"".join(parts)


# -- one record on its own: the dead-letter excerpt ------------------------------------------


def extract_stream_record(envelope: bytes | memoryview | ParsedEnvelope, index: int) -> bytes:
    """Record ``index`` of a stream as a self-contained, still sealed excerpt (no key needed).

    ``"SBRX" || 01 || u32 index || the stream's header || frame index``: the header keeps
    its tag and the frame its GCM tag, so :func:`open_stream_record` authenticates it with
    the DEK exactly as :func:`open_record_stream` would that record. The whole stream is
    checked structurally first.
    """
    view, header, layout = view_and_header(envelope)
    shape = _stream_layout(view, header, layout, whole=True)
    if not isinstance(index, int) or not 0 <= index < shape.record_count:
        raise RecordIndexError(
            f"record index {index} out of range for {shape.record_count} records")
    frame = view[shape.frame_offsets[index] : shape.frame_end(index)]
    return b"".join((_EXCERPT_PREFIX.pack(EXCERPT_MAGIC, EXCERPT_VERSION, index),
                     view[: layout.end], frame))


def _shape_of(envelope: bytes | memoryview | ParsedEnvelope,
              layout: RecordStreamLayout | None) -> tuple[memoryview, RecordStreamLayout]:
    """The stream's bytes and structure: ``layout`` when the caller has read it already
    (:func:`read_record_stream` of these very bytes), else one walk here."""
    if layout is not None:
        view = envelope.view if type(envelope) is ParsedEnvelope else as_byte_view(envelope)
        if len(view) != layout.length:
            raise EnvelopeFormatError(
                f"the layout is of {layout.length} bytes, the stream has {len(view)}")
        return view, layout
    view, header, header_layout = view_and_header(envelope)
    return view, _stream_layout(view, header, header_layout, whole=True)


def extract_stream_records(envelope: bytes | memoryview | ParsedEnvelope,
                           indices: Sequence[int], *,
                           layout: RecordStreamLayout | None = None) -> list[bytes]:
    """One-record excerpts (as :func:`extract_stream_record`) of the records at
    ``indices``, in that order, from one structural walk of the stream (or none, given the
    ``layout`` :func:`read_record_stream` returned for these bytes): what a stream's dead
    letters carry. Raises :class:`RecordIndexError` for indices that are not distinct
    indices of the stream."""
    view, shape = _shape_of(envelope, layout)
    checked_indices(indices, shape.record_count)
    stream_header = bytes(view[: shape.header_length])
    offsets, pack = shape.frame_offsets, _EXCERPT_PREFIX.pack
    return [b"".join((pack(EXCERPT_MAGIC, EXCERPT_VERSION, index), stream_header,
                      view[offsets[index] : shape.frame_end(index)])) for index in indices]


def extract_stream_piece(envelope: bytes | memoryview | ParsedEnvelope | StreamPiece,
                         indices: Sequence[int], *,
                         layout: RecordStreamLayout | None = None) -> bytes:
    """The records at ``indices`` (any order; written in index order) as one still sealed
    piece (``SBRX`` version 2, module docstring), without a key. ``layout``: as for
    :func:`extract_stream_records`. ``envelope`` may also be a :class:`StreamPiece`, and
    ``indices`` then some of its records' stream indices (a piece of a piece). Raises
    :class:`RecordIndexError` for an empty set or indices that are not distinct indices of
    the stream (or not in the piece)."""
    if isinstance(envelope, StreamPiece):
        return _subpiece(envelope, indices)
    view, shape = _shape_of(envelope, layout)
    selected = checked_indices(indices, shape.record_count)
    if not selected:
        raise RecordIndexError("a stream piece holds at least one record")
    offsets = shape.frame_offsets
    parts = [_EXCERPT_PREFIX.pack(EXCERPT_MAGIC, PIECE_VERSION, len(selected)),
             struct.pack(f">{len(selected)}I", *selected), view[: shape.header_length]]
    parts.extend(view[offsets[index] : shape.frame_end(index)] for index in selected)
    return b"".join(parts)


def _subpiece(piece: StreamPiece, indices: Sequence[int]) -> bytes:
    position = {index: k for k, index in enumerate(piece.indices)}
    selected = checked_indices(indices, piece.indices[-1] + 1)
    if not selected or any(index not in position for index in selected):
        raise RecordIndexError("a piece of a piece holds at least one of its records")
    view = memoryview(piece.data)
    parts = [_EXCERPT_PREFIX.pack(EXCERPT_MAGIC, PIECE_VERSION, len(selected)),
             struct.pack(f">{len(selected)}I", *selected),
             view[piece.stream_start : piece.header_end]]
    parts.extend(view[piece.frame_offsets[position[index]] : piece.frame_ends[position[index]]]
                 for index in selected)
    return b"".join(parts)


def is_stream_excerpt(data: bytes | memoryview) -> bool:
    """Whether ``data`` starts as an excerpt or a piece (``SBRX``), not as an envelope."""
    return bytes(data[:4]) == EXCERPT_MAGIC


@dataclass(frozen=True, slots=True)
class StreamPiece:
    """The structure of an excerpt (``SBRX`` v1, one record) or piece (v2), read without a
    key, with its bytes: ``header`` is its stream's, ``indices`` its records' indices in
    that stream (increasing), frame ``k`` is ``data[frame_offsets[k] : frame_ends[k]]``."""

    data: bytes
    header: EnvelopeHeader
    indices: tuple[int, ...]
    record_ids: tuple[bytes, ...]
    event_times_ms: tuple[int | None, ...]
    stream_start: int
    header_end: int
    core_end: int
    frame_offsets: tuple[int, ...]
    frame_ends: tuple[int, ...]
    layout: HeaderLayout
    """The header's layout within the stream part (``data[stream_start:]``), kept so that
    opening does not parse the header a second time."""

    @property
    def record_count(self) -> int:
        return len(self.indices)

    @property
    def envelope_id(self) -> bytes:
        return self.header.envelope_id


def read_stream_piece(data: bytes | memoryview) -> StreamPiece:
    """The structure of an excerpt or piece (no key): prefix, indices (strictly increasing,
    each below the count the stream header commits to), the stream header, then exactly
    that many frames, each checked as in a stream, and nothing after them.

    Raises :class:`EnvelopeFormatError` / :class:`EnvelopeLimitError`.
    """
    raw = bytes(data)
    view = memoryview(raw)
    prefix = _EXCERPT_PREFIX.size
    if len(view) < prefix:
        raise EnvelopeFormatError(
            f"record excerpt truncated: needs {prefix} bytes, {len(view)} remain")
    magic, version, field = _EXCERPT_PREFIX.unpack_from(view)
    if magic != EXCERPT_MAGIC:
        raise EnvelopeFormatError(f"bad magic {magic.hex()}, expected {EXCERPT_MAGIC.hex()}")
    if version == EXCERPT_VERSION:
        indices: tuple[int, ...] = (field,)
        start = prefix
    elif version == PIECE_VERSION:
        if not 1 <= field <= MAX_STREAM_RECORDS:
            raise EnvelopeLimitError(
                f"a stream piece holds 1..{MAX_STREAM_RECORDS} records, not {field}")
        start = prefix + 4 * field
        if len(view) < start:
            raise EnvelopeFormatError(
                f"stream piece indices truncated: needs {4 * field} bytes, "
                f"{len(view) - prefix} remain")
        indices = struct.unpack_from(f">{field}I", view, prefix)
        for previous, current in itertools.pairwise(indices):
            if current <= previous:
                raise EnvelopeFormatError("stream piece indices must be strictly increasing")
    else:
        raise EnvelopeFormatError(
            f"unsupported excerpt version {version}, expected {EXCERPT_VERSION} or "
            f"{PIECE_VERSION}")
    if len(view) - start > MAX_STREAM_LENGTH:
        raise EnvelopeLimitError(
            f"stream piece length {len(view) - start} exceeds {MAX_STREAM_LENGTH}")
    stream = view[start:]
    header, layout = parse_header(stream)
    if header.kind != KIND_RECORD_STREAM:
        raise EnvelopeFormatError(f"kind is {header.kind!r}, expected 'record-stream'")
    if indices[-1] >= header.segment_size:
        raise EnvelopeFormatError(
            f"record index {indices[-1]} out of range for {header.segment_size} records")
    ids, times, offsets, end = _walk_frames(stream, layout.end, len(indices))
    if end != len(stream):
        raise EnvelopeFormatError(f"{len(stream) - end} trailing bytes after the records")
    absolute = tuple(start + offset for offset in offsets)
    return StreamPiece(raw, header, tuple(indices), ids, times, start, start + layout.end,
                       start + layout.core_end, absolute, (*absolute[1:], start + end), layout)


def open_stream_piece(piece: bytes | memoryview | StreamPiece,
                      data_key: DataKey) -> OpenedRecordStream:
    """Every record of an excerpt or piece, each opened (under its stream index) or failed.

    Raises :class:`EnvelopeFormatError` for its structure, then the uniform
    :class:`EnvelopeAuthenticationError` for a wrong DEK or a changed header; a record
    whose GCM tag fails is a :class:`StreamRecordFailure`.
    """
    shape = piece if isinstance(piece, StreamPiece) else read_stream_piece(piece)
    view = memoryview(shape.data)
    stream = view[shape.stream_start :]
    header = shape.header
    keys = authenticate_parsed_header(stream, header, shape.layout, data_key)
    return _open_frames(view, header, keys.cipher.decrypt,
                        stream_digest(view[shape.stream_start : shape.core_end]),
                        shape.record_ids, shape.event_times_ms, shape.frame_offsets,
                        shape.frame_ends, range(shape.record_count), shape.indices)


def piece_records(piece: bytes | memoryview | StreamPiece,
                  indices: Sequence[int]) -> list[bytes]:
    """One-record excerpts (``SBRX`` v1) of the records of ``piece`` whose stream indices
    are ``indices``, in that order: a piece's dead letters, one per record. Raises
    :class:`RecordIndexError` for an index the piece does not hold, or one asked twice."""
    shape = piece if isinstance(piece, StreamPiece) else read_stream_piece(piece)
    position = {index: k for k, index in enumerate(shape.indices)}
    if len(set(indices)) != len(indices):
        raise RecordIndexError("a record index is asked for twice")
    view = memoryview(shape.data)
    stream_header = view[shape.stream_start : shape.header_end]
    excerpts = []
    for index in indices:
        k = (position.get(index) if isinstance(index, int) and not isinstance(index, bool)
             else None)
        if k is None:
            raise RecordIndexError(f"record index {index} is not in this stream piece")
        excerpts.append(b"".join((
            _EXCERPT_PREFIX.pack(EXCERPT_MAGIC, EXCERPT_VERSION, index), stream_header,
            view[shape.frame_offsets[k] : shape.frame_ends[k]])))
    return excerpts


def _read_excerpt(data: bytes | memoryview) -> StreamPiece:
    """A one-record excerpt (``SBRX`` version 1), read by the piece reader: the same
    checks of the prefix, the stream header and the one frame."""
    view = as_byte_view(data)
    if len(view) > 4 and view[4] != EXCERPT_VERSION and bytes(view[:4]) == EXCERPT_MAGIC:
        raise EnvelopeFormatError(
            f"unsupported excerpt version {view[4]}, expected {EXCERPT_VERSION}")
    return read_stream_piece(view)


def read_stream_record(excerpt: bytes | memoryview) -> StreamRecordExcerpt:
    """The structure of an excerpt (header, index, record id, event time), no key."""
    shape = _read_excerpt(excerpt)
    return StreamRecordExcerpt(shape.header, shape.indices[0], shape.record_ids[0],
                               shape.event_times_ms[0])


def open_stream_record(excerpt: bytes | memoryview, data_key: DataKey) -> StreamRecord:
    """The record inside an excerpt; structure, then commitment and header tag, then GCM.

    Raises :class:`EnvelopeFormatError` or the uniform :class:`EnvelopeAuthenticationError`.
    """
    opened = open_stream_piece(_read_excerpt(excerpt), data_key)
    if opened.failures:
        raise EnvelopeAuthenticationError()
    return opened.records[0]


STREAM_RECORD_MARK = "#"


def index_ranges(indices: Sequence[int]) -> str:
    """Increasing record indices as ``a-b`` runs joined by commas (``0-2,5,7-9``).

    Why here: a stream's records outside the stream are named ``<stream id hex>`` ``#``
    ``index_ranges(...)`` (a piece's dead letter, a late excerpt's Pub/Sub id), by every
    room that handles pieces, so the name is part of the format's vocabulary.
    """
    if not indices:
        raise ValueError("index_ranges needs at least one index")
    runs: list[str] = []
    start = previous = indices[0]
    for index in [*indices[1:], None]:
        if index is not None and index == previous + 1:
            previous = index
            continue
        runs.append(str(start) if start == previous else f"{start}-{previous}")
        if index is not None:
            start = previous = index
    return ",".join(runs)


def parse_index_ranges(ranges: str) -> set[int] | None:
    """``index_ranges``' text back to its indices; ``None`` for any other text.

    Only the one text ``index_ranges`` gives for a set is accepted (maximal runs, increasing,
    ASCII decimal without leading zeros): a set has one name. An index no record stream can
    hold (``MAX_STREAM_RECORDS`` or more) is refused before any set is built.
    """
    if len(ranges) > _MAX_RANGES_TEXT:
        return None
    indices: set[int] = set()
    for run in ranges.split(","):
        first, dash, last = run.partition("-")
        if not _decimal(first) or (dash and not _decimal(last)):
            return None
        start, end = int(first), int(last) if dash else int(first)
        if end < start or end >= MAX_STREAM_RECORDS:
            return None
        indices.update(range(start, end + 1))
    return indices if index_ranges(sorted(indices)) == ranges else None


# The longest name index_ranges gives: every other index of a full stream.
_MAX_RANGES_TEXT = (MAX_STREAM_RECORDS // 2) * (len(str(MAX_STREAM_RECORDS)) + 1)


def _decimal(text: str) -> bool:
    return text.isascii() and text.isdigit()
