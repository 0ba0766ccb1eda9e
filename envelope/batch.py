"""Batch envelopes: many bytes (an Arrow IPC stream, to us just bytes) sealed in segments.

``header || frame*`` where each frame is ``u8 final || u32 BE length || ciphertext``
(docs/FORMAT.md section 3.4), a STREAM-style construction: segment ``i`` is sealed with the
nonce ``8 zero bytes || u32 BE i`` and the AAD ``core header || u32 BE i || u8 final``, so
reordering, dropping, truncating or appending segments fails authentication. The header's
own tag covers the key block, which the segment AADs leave out so that a rewrap
(``envelope.rewrap``) replaces the header only.

Sealing never needs two plaintext copies: :class:`BatchSealer` seals memoryview slices of
what it is given and buffers at most one segment; :func:`seal_batch` wraps it. Opening is
segment by segment with :func:`iter_open_batch`; :func:`open_batch` joins the pieces;
:func:`open_batch_into` decrypts every segment straight into one buffer its caller
allocates (e.g. an Arrow buffer from a pool that reuses its pages), which avoids both the
per-segment ``bytes`` and the join: the fastest way to the whole plaintext of a large batch.
No I/O beyond the optional binary file object the caller hands to :class:`BatchSealer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import BinaryIO, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from envelope._keyschedule import segment_aad, segment_nonce
from envelope._sealed_header import authenticate_parsed_header
from envelope._sealing import SealingRequest, start_envelope
from envelope._wire import as_byte_view
from envelope.errors import (
    EnvelopeAuthenticationError,
    EnvelopeError,
    EnvelopeFormatError,
    EnvelopeLimitError,
)
from envelope.framing import MissingFinalSegmentError, iter_batch_frames
from envelope.header import KIND_BATCH, EnvelopeHeader, ParsedEnvelope, view_and_header
from envelope.keys import DataKey, WrappedKey
from envelope.limits import DEFAULT_SEGMENT_SIZE, MAX_SEGMENT_COUNT, TAG_LENGTH

__all__ = ["BatchSealer", "iter_open_batch", "open_batch", "open_batch_into", "seal_batch"]

_Buffer = TypeVar("_Buffer")
_FLAG_MORE = b"\x00"
_FLAG_FINAL = b"\x01"


class BatchSealer:
    """A streaming writer of one batch envelope: ``write(chunk)`` any number of times, then
    ``finish()``.

    Without ``sink`` the envelope is collected in memory and ``finish()`` returns it. With
    ``sink`` (a binary file object) the header and each sealed segment are written to it as
    soon as they exist, and ``finish()`` writes the final segment and returns ``b""``. As a
    context manager it finishes on a clean exit and, after an exception, leaves the output
    without a final segment, which every reader rejects.
    """

    def __init__(
        self,
        *,
        data_key: DataKey,
        wrapped_key: WrappedKey,
        region: str,
        producer_id: str,
        schema_fingerprint: bytes,
        context: Mapping[str, str],
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        sink: BinaryIO | None = None,
    ) -> None:
        self._start(
            SealingRequest(data_key, wrapped_key, region, producer_id, schema_fingerprint, context),
            segment_size=segment_size,
            sink=sink,
        )

    @classmethod
    def _for_request(
        cls,
        request: SealingRequest,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        salt: bytes | None = None,
        envelope_id: bytes | None = None,
    ) -> BatchSealer:
        """A sealer writing to memory; ``salt``/``envelope_id`` only for known-answer vectors."""
        sealer = cls.__new__(cls)
        sealer._start(request, segment_size=segment_size, salt=salt, envelope_id=envelope_id)
        return sealer

    def _start(
        self,
        request: SealingRequest,
        *,
        segment_size: int,
        sink: BinaryIO | None = None,
        salt: bytes | None = None,
        envelope_id: bytes | None = None,
    ) -> None:
        started = start_envelope(
            request, kind=KIND_BATCH, segment_size=segment_size, salt=salt, envelope_id=envelope_id
        )
        self._header = started.header
        self._core_header = started.sealed_header.core
        self._cipher: AESGCM | None = started.keys.cipher
        self._segment_size = segment_size
        self._pending = bytearray()
        self._index = 0
        self._sink = sink
        self._collected: list[bytes] = []
        self._bytes_written = 0
        self._emit(started.sealed_header.wire)

    @property
    def header(self) -> EnvelopeHeader:
        return self._header

    @property
    def bytes_written(self) -> int:
        """Envelope bytes produced so far (header and sealed segments)."""
        return self._bytes_written

    @property
    def finished(self) -> bool:
        return self._cipher is None

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Add plaintext; full segments are sealed straight from ``chunk`` without a copy.

        A segment is sealed only once more data follows it, because only ``finish()`` knows
        which segment is final; so at most one segment of plaintext is ever buffered.
        """
        self._require_open()
        view = as_byte_view(chunk)
        if not view:
            return
        segment_size = self._segment_size
        if self._pending:
            room = segment_size - len(self._pending)
            if len(view) <= room:
                self._pending += view
                return
            self._pending += view[:room]
            view = view[room:]
            self._seal_segment(self._pending, final=False)
            self._pending.clear()
        while len(view) > segment_size:
            self._seal_segment(view[:segment_size], final=False)
            view = view[segment_size:]
        self._pending += view

    def finish(self) -> bytes:
        """Seal the final segment; return the envelope, or ``b""`` when writing to a sink."""
        self._require_open()
        self._seal_segment(self._pending, final=True)
        self._pending.clear()
        self._cipher = None
        if self._sink is not None:
            return b""
        envelope = b"".join(self._collected)
        self._collected.clear()
        return envelope

    def abort(self) -> None:
        """Drop buffered plaintext and the key; the output stays without a final segment."""
        self._pending.clear()
        self._collected.clear()
        self._cipher = None

    def __enter__(self) -> BatchSealer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None and not self.finished:
            self.finish()
        elif exc_type is not None:
            self.abort()

    def _require_open(self) -> None:
        if self._cipher is None:
            raise EnvelopeError("BatchSealer is already finished")

    def _seal_segment(self, plaintext: bytes | bytearray | memoryview, *, final: bool) -> None:
        if self._index >= MAX_SEGMENT_COUNT:
            raise EnvelopeLimitError(f"segment count exceeds {MAX_SEGMENT_COUNT}")
        cipher = self._cipher
        if cipher is None:
            raise EnvelopeError("BatchSealer is already finished")
        index = self._index
        ciphertext = cipher.encrypt(
            segment_nonce(index), plaintext, segment_aad(self._core_header, index, final)
        )
        flag = _FLAG_FINAL if final else _FLAG_MORE
        self._emit(flag + len(ciphertext).to_bytes(4, "big"))
        self._emit(ciphertext)
        self._index = index + 1

    def _emit(self, piece: bytes) -> None:
        if self._sink is not None:
            _write_all(self._sink, piece)
        else:
            self._collected.append(piece)
        self._bytes_written += len(piece)


def _write_all(sink: BinaryIO, piece: bytes) -> None:
    """Write all of ``piece``; raw (unbuffered) file objects may accept only part of it.

    A ``None`` return is taken as "all written", the convention of buffered and many
    third-party writers; a zero-byte write is an error rather than a busy loop.
    """
    view = memoryview(piece)
    while view:
        written = sink.write(view)
        if written is None or written >= len(view):
            return
        if written <= 0:
            raise EnvelopeError("batch sink accepted no bytes")
        view = view[written:]


def seal_batch(
    plaintext: bytes | Iterable[bytes],
    *,
    data_key: DataKey,
    wrapped_key: WrappedKey,
    region: str,
    producer_id: str,
    schema_fingerprint: bytes,
    context: Mapping[str, str],
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> bytes:
    """Seal bytes, or an iterable of byte chunks, as one batch envelope."""
    request = SealingRequest(
        data_key, wrapped_key, region, producer_id, schema_fingerprint, context
    )
    return _feed(BatchSealer._for_request(request, segment_size=segment_size), plaintext)


def _seal_batch_with(
    plaintext: bytes | Iterable[bytes],
    *,
    salt: bytes,
    envelope_id: bytes,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    **arguments: object,
) -> bytes:
    """Deterministic sealing for known-answer vectors only: a reused salt reuses the key."""
    request = SealingRequest(**arguments)  # type: ignore[arg-type]
    sealer = BatchSealer._for_request(
        request, segment_size=segment_size, salt=salt, envelope_id=envelope_id
    )
    return _feed(sealer, plaintext)


def _feed(sealer: BatchSealer, plaintext: bytes | Iterable[bytes]) -> bytes:
    if isinstance(plaintext, (bytes, bytearray, memoryview)):
        sealer.write(plaintext)
    else:
        for chunk in plaintext:
            sealer.write(chunk)
    return sealer.finish()


def iter_open_batch(envelope: bytes | ParsedEnvelope, data_key: DataKey) -> Iterator[bytes]:
    """Yield the plaintext of a batch envelope segment by segment.

    ``envelope`` is the bytes or their :class:`ParsedEnvelope` (then the header is not
    parsed again).

    Before the first segment is yielded the whole structure is walked (no trailing bytes,
    a final segment present) and the key commitment and header tag checked, so structural
    damage, a wrong key and a changed header surface before any plaintext. A segment is
    yielded only after its tag verifies; the first bad one raises the uniform
    :class:`EnvelopeAuthenticationError`.
    """
    view, header, layout = view_and_header(envelope)
    if header.kind != KIND_BATCH:
        raise EnvelopeFormatError(f"kind is {header.kind!r}, expected 'batch'")
    _check_structure(view, layout.end, header.segment_size)
    keys = authenticate_parsed_header(view, header, layout, data_key)
    return _decrypt_segments(
        keys.cipher, view, bytes(view[: layout.core_end]), layout.end, header.segment_size
    )


def _check_structure(view: memoryview, header_length: int, segment_size: int) -> int:
    """Walk every frame (no trailing bytes, a final segment); return the plaintext length."""
    end = header_length
    plaintext_length = 0
    try:
        for frame in iter_batch_frames(view, header_length, segment_size):
            end = frame.end
            plaintext_length += frame.length - TAG_LENGTH
    except MissingFinalSegmentError:
        raise EnvelopeAuthenticationError() from None
    if end != len(view):
        raise EnvelopeFormatError(f"{len(view) - end} trailing bytes after the final segment")
    return plaintext_length


def _decrypt_segments(
    cipher: AESGCM, view: memoryview, core_header: bytes, header_length: int, segment_size: int
) -> Iterator[bytes]:
    for frame in iter_batch_frames(view, header_length, segment_size):
        aad = segment_aad(core_header, frame.index, frame.final)
        try:
            plaintext = cipher.decrypt(
                segment_nonce(frame.index), view[frame.start : frame.end], aad
            )
        except InvalidTag:
            raise EnvelopeAuthenticationError() from None
        yield plaintext


def open_batch(envelope: bytes | ParsedEnvelope, data_key: DataKey) -> bytes:
    """The whole plaintext of a batch envelope (see :func:`iter_open_batch`)."""
    return b"".join(iter_open_batch(envelope, data_key))


def open_batch_into(
    envelope: bytes | ParsedEnvelope,
    data_key: DataKey,
    allocate: Callable[[int], _Buffer] = bytearray,  # type: ignore[assignment]
) -> _Buffer:
    """The whole plaintext of a batch envelope, decrypted in place into ``allocate(n)``.

    ``allocate`` receives the exact plaintext length (known from the frames before any key
    work) and returns a writable, contiguous buffer of at least that many bytes, e.g.
    ``bytearray`` (the default) or ``pyarrow.allocate_buffer``; the buffer is returned.
    Each segment's AES-GCM output goes straight to its offset (``decrypt_into``), so no
    per-segment ``bytes`` and no join are made.

    The checks are those of :func:`iter_open_batch`, in the same order: structure, then key
    commitment and header tag, before anything is allocated. When a segment fails its tag
    the buffer is zeroed up to and including that segment (nothing unauthenticated is left
    in memory the caller owns) and the uniform :class:`EnvelopeAuthenticationError` raised.
    """
    view, header, layout = view_and_header(envelope)
    if header.kind != KIND_BATCH:
        raise EnvelopeFormatError(f"kind is {header.kind!r}, expected 'batch'")
    length = _check_structure(view, layout.end, header.segment_size)
    keys = authenticate_parsed_header(view, header, layout, data_key)
    output = allocate(length)
    target = _writable_bytes(output, length)
    try:
        _decrypt_segments_into(keys.cipher, view, bytes(view[: layout.core_end]), layout.end,
                               header.segment_size, target)
    finally:
        target.release()
    return output


def _writable_bytes(buffer: object, length: int) -> memoryview:
    """``buffer`` as a flat writable byte view of ``length`` bytes, or EnvelopeError."""
    try:
        view = memoryview(buffer)  # type: ignore[arg-type]
    except TypeError:
        raise EnvelopeError("allocate must return a buffer (bytearray, Arrow buffer...)"
                            ) from None
    if view.readonly or not view.c_contiguous or view.nbytes < length:
        view.release()
        raise EnvelopeError(f"allocate must return a writable contiguous buffer of {length} "
                            "bytes")
    flat = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    return flat[:length]


def _decrypt_segments_into(cipher: AESGCM, view: memoryview, core_header: bytes,
                           header_length: int, segment_size: int, target: memoryview) -> None:
    position = 0
    for frame in iter_batch_frames(view, header_length, segment_size):
        end = position + frame.length - TAG_LENGTH
        aad = segment_aad(core_header, frame.index, frame.final)
        try:
            cipher.decrypt_into(segment_nonce(frame.index), view[frame.start : frame.end], aad,
                                target[position:end])
        except InvalidTag:
            target[:end] = bytes(end)
            raise EnvelopeAuthenticationError() from None
        position = end
