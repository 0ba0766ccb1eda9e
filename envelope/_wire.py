"""Bounded big-endian reading and canonical writing of the envelope's primitive fields.

A :class:`BoundedReader` walks a memoryview; every read names its field, checks a claimed
length against its bound before slicing, and raises :class:`EnvelopeFormatError` /
:class:`EnvelopeLimitError` instead of ``struct.error`` or ``IndexError``. The ``encode_*``
helpers apply the same rules when writing, so a sealer cannot produce what a parser would
reject. This module knows nothing of the envelope layout itself.
"""

from __future__ import annotations

import re

from envelope.errors import EnvelopeFormatError, EnvelopeLimitError

# C0 and C1 control characters (and DEL) are refused in every text field.
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


def check_length(field: str, length: int, *, minimum: int, maximum: int) -> None:
    """Raise the typed error for a length outside [minimum, maximum]; the bound comes first."""
    if length > maximum:
        raise EnvelopeLimitError(f"{field} length {length} exceeds {maximum}")
    if length < minimum:
        if minimum == 1:
            raise EnvelopeFormatError(f"{field} is empty")
        raise EnvelopeFormatError(f"{field} length {length} is below {minimum}")


def text_to_bytes(field: str, value: object, *, minimum: int, maximum: int) -> bytes:
    """Validate a text field for writing and return its UTF-8 bytes."""
    if not isinstance(value, str):
        raise EnvelopeFormatError(f"{field} must be str, not {type(value).__name__}")
    if len(value) > maximum:  # each character is at least one UTF-8 byte
        raise EnvelopeLimitError(f"{field} length {len(value)} exceeds {maximum}")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise EnvelopeFormatError(f"{field} is not encodable as UTF-8") from None
    check_length(field, len(encoded), minimum=minimum, maximum=maximum)
    if _CONTROL_CHARACTERS.search(value):
        raise EnvelopeFormatError(f"{field} contains a control character")
    return encoded


def bytes_to_text(field: str, raw: bytes | memoryview) -> str:
    """Decode a text field read from the wire (strict UTF-8, no control characters)."""
    try:
        value = str(raw, "utf-8")  # decodes a memoryview in place, without a copy
    except UnicodeDecodeError:
        raise EnvelopeFormatError(f"{field} is not valid UTF-8") from None
    # Control characters are never printable, so a printable value needs no search.
    if not value.isprintable() and _CONTROL_CHARACTERS.search(value):
        raise EnvelopeFormatError(f"{field} contains a control character")
    return value


def exact_bytes(field: str, value: object, length: int) -> bytes:
    """Validate a fixed-size byte field for writing."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise EnvelopeFormatError(f"{field} must be bytes, not {type(value).__name__}")
    raw = bytes(value)
    if len(raw) != length:
        raise EnvelopeFormatError(f"{field} length {len(raw)}, expected {length}")
    return raw


def u16_prefixed(raw: bytes) -> bytes:
    """``u16 BE length || raw``; callers have already bounded ``raw`` below 65536."""
    return len(raw).to_bytes(2, "big") + raw


class BoundedReader:
    """A cursor over a memoryview that never reads past the end or over a bound."""

    __slots__ = ("_position", "_view")

    def __init__(self, data: bytes | bytearray | memoryview, position: int = 0) -> None:
        self._view = as_byte_view(data)
        self._position = position

    @property
    def view(self) -> memoryview:
        return self._view

    @property
    def position(self) -> int:
        return self._position

    @property
    def remaining(self) -> int:
        return len(self._view) - self._position

    def take(self, length: int, field: str) -> memoryview:
        """The next ``length`` bytes, or a format error naming ``field`` if they are not there."""
        if length > self.remaining:
            raise EnvelopeFormatError(
                f"{field} truncated: needs {length} bytes, {self.remaining} remain"
            )
        start = self._position
        self._position = start + length
        return self._view[start : self._position]

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "big")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "big")

    def prefixed(self, field: str, *, minimum: int, maximum: int) -> memoryview:
        """A ``u16 BE length || bytes`` field; the length is bounded before the bytes are read."""
        length = self.u16(f"{field} length")
        check_length(field, length, minimum=minimum, maximum=maximum)
        return self.take(length, field)

    def prefixed_text(self, field: str, *, minimum: int, maximum: int) -> str:
        return bytes_to_text(field, self.prefixed(field, minimum=minimum, maximum=maximum))


def as_byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    """A flat unsigned-byte memoryview over ``data`` (no copy)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected a bytes-like object, not {type(data).__name__}")
    view = memoryview(data)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    if view.format == "B" and view.ndim == 1:
        return view
    return view.cast("B")
