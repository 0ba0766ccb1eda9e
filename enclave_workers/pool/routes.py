"""One envelope's routing facts on the pool wire (a ``ROUTED_ENVELOPE`` frame's prefix).

The Beam side routes each envelope by what its header says, read without a key (data-key
id, region, producer: ``transforms.parse.read_sealed``). In-process, those facts reach the
``BatchProcessor`` beside the bytes, which dead-letters an envelope whose authenticated
header says otherwise (stage ``route``). In remote mode they travel the same way, one route
before each envelope's bytes, so the pool worker runs the same check:

    route = key_id (32 bytes: the wrapped key's SHA-256 id) || u16 BE len || region
            || u16 BE len || producer_id || envelope bytes

``region`` (1..64 bytes) and ``producer_id`` (1..256 bytes) are strict UTF-8 without control
characters: the bounds and rules of the envelope header they were read from
(``envelope.limits``), so a route no header could have given is refused on both sides
(``WireError``), never passed on. The TEE relies on none of these facts; it only compares.

What it does not: no framing, no sealing (``wire``), no comparison (``BatchProcessor``).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence

from enclave_workers.batch_processor import Route
from envelope.limits import MAX_PRODUCER_ID, MAX_REGION

from .errors import WireError

__all__ = ["KEY_ID_BYTES", "MAX_ROUTE_BYTES", "encode_route", "encode_routes", "split_route"]

KEY_ID_BYTES = 32
MAX_ROUTE_BYTES = KEY_ID_BYTES + 2 + MAX_REGION + 2 + MAX_PRODUCER_ID
_U16 = struct.Struct(">H")
_KEY_ID = re.compile(r"[0-9a-f]{64}")
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")   # as envelope headers refuse


def _text_bytes(field: str, value: object, maximum: int) -> bytes:
    if not isinstance(value, str):
        raise WireError(f"route {field}: expected text, not {type(value).__name__}")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise WireError(f"route {field} is not encodable as UTF-8") from None
    if not 1 <= len(encoded) <= maximum:
        raise WireError(f"route {field} is {len(encoded)} bytes, not 1..{maximum}")
    if _CONTROL_CHARACTERS.search(value):
        raise WireError(f"route {field} contains a control character")
    return encoded


def encode_route(route: Route) -> bytes:
    """``route`` (data-key id as 64 lowercase hex digits, region, producer) as its wire
    prefix; ``WireError`` for a route no envelope header could have given."""
    if not isinstance(route, tuple) or len(route) != 3:
        raise WireError("a route is (data-key id, region, producer)")
    key_id, region, producer_id = route
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise WireError("route data-key id: expected 64 lowercase hex digits")
    region_bytes = _text_bytes("region", region, MAX_REGION)
    producer_bytes = _text_bytes("producer", producer_id, MAX_PRODUCER_ID)
    return b"".join((bytes.fromhex(key_id), _U16.pack(len(region_bytes)), region_bytes,
                     _U16.pack(len(producer_bytes)), producer_bytes))


def encode_routes(routes: Sequence[Route]) -> list[bytes]:
    """``encode_route`` of each route; a batch's routes are mostly one (a batch is one data
    key's), so each distinct route is checked and encoded once."""
    encoded: dict[Route, bytes] = {}
    prefixes = []
    for route in routes:
        try:
            prefix = encoded.get(route)
        except TypeError:          # unhashable: not a route (encode_route says why)
            prefix = None
        if prefix is None:
            prefix = encoded[route] = encode_route(route)
        prefixes.append(prefix)
    return prefixes


def _text_at(body: bytes, position: int, field: str, maximum: int) -> tuple[str, int]:
    if len(body) < position + 2:
        raise WireError(f"route {field} length is cut")
    (length,) = _U16.unpack_from(body, position)
    position += 2
    if not 1 <= length <= maximum or len(body) < position + length:
        raise WireError(f"route {field} length {length} is out of bounds (1..{maximum}, "
                        "within the frame)")
    try:
        value = str(body[position:position + length], "utf-8")
    except UnicodeDecodeError:
        raise WireError(f"route {field} is not valid UTF-8") from None
    if _CONTROL_CHARACTERS.search(value):
        raise WireError(f"route {field} contains a control character")
    return value, position + length


def split_route(body: bytes, start: int = 0) -> tuple[Route, int]:
    """The route at ``body[start:]`` and where the envelope's bytes begin; ``WireError``
    if it is cut, over a bound, or not text where text belongs."""
    if len(body) < start + KEY_ID_BYTES:
        raise WireError("route data-key id is cut")
    key_id = body[start:start + KEY_ID_BYTES].hex()
    region, position = _text_at(body, start + KEY_ID_BYTES, "region", MAX_REGION)
    producer_id, position = _text_at(body, position, "producer", MAX_PRODUCER_ID)
    return (key_id, region, producer_id), position
