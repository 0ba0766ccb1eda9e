"""Frames of a pool request and response (length-prefixed, each sealed by ``channel``).

A request body is ``MAGIC || u32 len || sealed request secret`` followed by frames; a
response body is frames only. A frame on the wire is ``u32 BE len || AES-GCM(frame)``, and a
frame is ``u8 kind || body``:

request:  HEADER (JSON: spec_fingerprint, output_format, envelopes, batch_id (hex), window
          (the window label, "" for none), optional destination: {region, sink, location,
          verified}, optional routes: true), ENVELOPE (the sealed envelope's bytes) x n, or
          with routes ROUTED_ENVELOPE (its route, then its bytes) x n, END (JSON: envelopes)
response: OUTPUT / DEAD_LETTER (``u32 len || JSON meta || sealed bytes``) x n,
          END (JSON: outputs, dead_letters); an OUTPUT's sealed bytes are followed by its
          signed custody statement (``statement_bytes`` long, named in its meta)

The batch id and window label let the pool worker name each output (``output_names``) and
sign its custody statement in the TEE for the file name Beam will write. The destination is
where the batch's outputs go, as the pipeline's preflight found it; it is checked here for
form (``keybroker.destinations``, a region name) and by the worker against the batch's
envelopes (``worker``), then sent with each output key's ``generate`` to the broker's ledger.
The routes are what the Beam side routed each envelope by (data-key id, region, producer,
read from its header without a key; ``routes``): the pool worker hands them to
``BatchProcessor``, which dead-letters an envelope whose authenticated header says otherwise
(stage ``route``), as in-process. A request without ``routes`` (an older client) is read as
before, and its envelopes are processed without that check.

Both sides count: an END whose counts differ from the frames seen, a missing END, or a frame
after END is a ``WireError``, so a cut or spliced stream is never taken for a whole one. The
reader pulls one frame at a time from a ``read(n)`` callable: a request is never held as one
body, only as its envelopes.

What it does not: no sockets, no HTTP, no retries; it never sees plaintext rows (what travels
is sealed envelopes, sealed outputs and sealed dead letters).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from enclave_workers.batch_processor import DeadLetter, SealedOutput
from enclave_workers.output_names import OutputNameError, check_batch_id, check_window_label
from keybroker.destinations import DestinationError, destination_record

from .channel import ChannelError, ChannelKeys, FrameCipher, RequestKeys
from .errors import WireError
from .routes import Route, encode_routes, split_route

__all__ = [
    "MAGIC",
    "MAX_ENVELOPES",
    "MAX_FRAME_BYTES",
    "PoolRequest",
    "PoolResponse",
    "WireError",
    "check_destination",
    "encode_request",
    "encode_response",
    "read_request",
    "read_response",
]

MAGIC = b"SBPOOL1\n"
STATEMENT_ALLOWANCE = 8 << 20     # an output frame also carries its custody statement
MAX_FRAME_BYTES = (64 << 20) + STATEMENT_ALLOWANCE + 4096
MAX_JSON_BYTES = 64 << 10
MAX_SEALED_SECRET = 4096
MAX_ENVELOPES = 100_000

KIND_HEADER, KIND_ENVELOPE, KIND_END, KIND_ROUTED_ENVELOPE = 0x01, 0x02, 0x03, 0x04
KIND_OUTPUT, KIND_DEAD_LETTER, KIND_RESPONSE_END = 0x11, 0x12, 0x13

_U32 = struct.Struct(">I")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
DESTINATION_FIELDS = frozenset({"region", "sink", "location", "verified"})
Reader = Callable[[int], bytes]


@dataclass(frozen=True)
class PoolRequest:
    keys: RequestKeys
    spec_fingerprint: str
    output_format: str
    envelopes: list[bytes]
    batch_id: bytes | None = None   # names the outputs; None: an old client's request
    window: str = ""                 # the window label in the outputs' file names
    destination: Mapping[str, Any] | None = None   # region, sink, location, verified
    routes: list[Route] | None = None   # per envelope, what the Beam side routed it by


def check_destination(destination: object) -> dict[str, Any]:
    """``{"region", "sink", "location", "verified"}`` checked (a region name, then
    ``keybroker.destinations.destination_record``); ``WireError`` naming the field if not."""
    if not isinstance(destination, Mapping) or set(destination) != DESTINATION_FIELDS:
        raise WireError("destination: expected exactly region, sink, location, verified")
    region = destination["region"]
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise WireError("destination.region: expected a region name (a-z, 0-9, -)")
    try:
        record = destination_record(destination["sink"], destination["location"],
                                    destination["verified"])
    except DestinationError as exc:
        raise WireError(str(exc)) from None
    return {"region": region, **record}


@dataclass(frozen=True)
class PoolResponse:
    outputs: list[SealedOutput]
    dead_letters: list[DeadLetter]


# -- framing ----------------------------------------------------------------------------
def _frame(cipher: FrameCipher, index: int, kind: int, body: bytes,
           prefix: bytes = b"") -> bytes:
    sealed = cipher.seal(index, b"".join((bytes([kind]), prefix, body)))
    return _U32.pack(len(sealed)) + sealed


def _read_exact(read: Reader, count: int) -> bytes:
    chunks, remaining = [], count
    while remaining:
        chunk = read(remaining)
        if not chunk:
            raise WireError(f"stream ended {remaining} bytes early")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_length(read: Reader, maximum: int, what: str) -> int:
    (length,) = _U32.unpack(_read_exact(read, 4))
    if not 1 <= length <= maximum:
        raise WireError(f"{what} length {length} is outside 1..{maximum}")
    return length


def _read_plain(read: Reader, cipher: FrameCipher, index: int) -> bytes:
    """Frame ``index`` opened: its kind byte, then its body."""
    sealed = _read_exact(read, _read_length(read, MAX_FRAME_BYTES, "frame"))
    plain = cipher.open(index, sealed)
    if not plain:
        raise WireError("empty frame")
    return plain


def _read_frame(read: Reader, cipher: FrameCipher, index: int) -> tuple[int, bytes]:
    plain = _read_plain(read, cipher, index)
    return plain[0], plain[1:]


def _json(body: bytes, what: str) -> dict[str, Any]:
    if len(body) > MAX_JSON_BYTES:
        raise WireError(f"{what} is over {MAX_JSON_BYTES} bytes")
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError(f"{what} is not JSON") from None
    if not isinstance(document, dict):
        raise WireError(f"{what} is not a JSON object")
    return document


def _dump(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _meta_and_bytes(meta: Mapping[str, Any], payload: bytes) -> bytes:
    encoded = _dump(meta)
    return _U32.pack(len(encoded)) + encoded + payload


def _split_meta(body: bytes, what: str) -> tuple[dict[str, Any], bytes]:
    if len(body) < 4:
        raise WireError(f"{what} frame is too short")
    (length,) = _U32.unpack(body[:4])
    if length > min(MAX_JSON_BYTES, len(body) - 4):
        raise WireError(f"{what} metadata length {length} is out of bounds")
    return _json(body[4:4 + length], f"{what} metadata"), body[4 + length:]


# -- request ----------------------------------------------------------------------------
def encode_request(sealed_secret: bytes, keys: RequestKeys, *, spec_fingerprint: str,
                   output_format: str, envelopes: Sequence[bytes], batch_id: bytes | None = None,
                   window: str = "", destination: Mapping[str, Any] | None = None,
                   routes: Sequence[Route] | None = None) -> tuple[int, Iterator[bytes]]:
    """The request body's length and its chunks (sealed one frame at a time, lazily);
    ``destination`` (region, sink, location, verified) where the batch's outputs go;
    ``routes`` per envelope what it was routed by (data-key id, region, producer)."""
    if not 1 <= len(envelopes) <= MAX_ENVELOPES:
        raise WireError(f"a request holds 1..{MAX_ENVELOPES} envelopes, not {len(envelopes)}")
    if routes is not None and len(routes) != len(envelopes):
        raise WireError(f"{len(routes)} routes for {len(envelopes)} envelopes")
    prefixes = [b""] * len(envelopes) if routes is None else encode_routes(routes)
    kind = KIND_ENVELOPE if routes is None else KIND_ROUTED_ENVELOPE
    fields: dict[str, Any] = {"spec_fingerprint": spec_fingerprint,
                              "output_format": output_format, "envelopes": len(envelopes)}
    try:
        if batch_id is not None:
            fields["batch_id"] = check_batch_id(batch_id).hex()
            fields["window"] = check_window_label(window)
    except OutputNameError as exc:
        raise WireError(str(exc)) from None
    if destination is not None:
        fields["destination"] = check_destination(destination)
    if routes is not None:
        fields["routes"] = True
    header = _dump(fields)
    end = _dump({"envelopes": len(envelopes)})
    bodies = [len(header), *(len(p) + len(e) for p, e in zip(prefixes, envelopes, strict=True)),
              len(end)]
    length = (len(MAGIC) + 4 + len(sealed_secret)
              + sum(4 + FrameCipher.sealed_length(1 + n) for n in bodies))

    def chunks() -> Iterator[bytes]:
        cipher = keys.request
        yield MAGIC + _U32.pack(len(sealed_secret)) + sealed_secret
        yield _frame(cipher, 0, KIND_HEADER, header)
        for index, (prefix, envelope) in enumerate(zip(prefixes, envelopes, strict=True),
                                                   start=1):
            yield _frame(cipher, index, kind, bytes(envelope), prefix)
        yield _frame(cipher, len(envelopes) + 1, KIND_END, end)

    return length, chunks()


def read_request(read: Reader, channel: ChannelKeys) -> PoolRequest:
    """Server side: open and check a request, one frame at a time."""
    if _read_exact(read, len(MAGIC)) != MAGIC:
        raise WireError("not a sealbeam pool request")
    sealed_secret = _read_exact(read, _read_length(read, MAX_SEALED_SECRET, "request secret"))
    keys = channel.open_request(sealed_secret)
    kind, body = _read_frame(read, keys.request, 0)
    if kind != KIND_HEADER:
        raise WireError("the first frame is not a request header")
    header = _json(body, "request header")
    count = header.get("envelopes")
    if not isinstance(count, int) or not 1 <= count <= MAX_ENVELOPES:
        raise WireError(f"request header names {count!r} envelopes, not 1..{MAX_ENVELOPES}")
    routes_field = header.get("routes")
    if routes_field is not None and routes_field is not True:   # not false, not 1
        raise WireError("request header: routes is true or absent")
    routed = routes_field is True
    envelopes, routes = _read_envelopes(read, keys.request, count, routed)
    kind, body = _read_frame(read, keys.request, count + 1)
    if kind != KIND_END or _json(body, "request end").get("envelopes") != count:
        raise WireError("the request does not end where its header says")
    batch_id, window = _naming(header)
    raw_destination = header.get("destination")
    destination = None if raw_destination is None else check_destination(raw_destination)
    return PoolRequest(keys, str(header.get("spec_fingerprint", "")),
                       str(header.get("output_format", "")), envelopes, batch_id, window,
                       destination, routes)


def _read_envelopes(read: Reader, cipher: FrameCipher, count: int, routed: bool
                    ) -> tuple[list[bytes], list[Route] | None]:
    """Frames 1..count: the envelopes, and with ``routed`` the route before each."""
    envelopes: list[bytes] = []
    routes: list[Route] = []
    expected = KIND_ROUTED_ENVELOPE if routed else KIND_ENVELOPE
    for index in range(1, count + 1):
        plain = _read_plain(read, cipher, index)
        if plain[0] != expected:
            raise WireError(f"frame {index} is not {'a routed' if routed else 'an'} envelope")
        if routed:
            route, start = split_route(plain, 1)
            routes.append(route)
        else:
            start = 1
        envelopes.append(plain[start:])
    return envelopes, routes if routed else None


def _naming(header: Mapping[str, Any]) -> tuple[bytes | None, str]:
    """The request header's batch id (None when absent) and window label, checked."""
    raw_id, window = header.get("batch_id"), header.get("window", "")
    if raw_id is None:
        return None, ""
    try:
        if not isinstance(raw_id, str) or not isinstance(window, str):
            raise OutputNameError("batch_id and window are strings")
        return check_batch_id(bytes.fromhex(raw_id)), check_window_label(window)
    except (OutputNameError, ValueError) as exc:
        raise WireError(f"request header: {exc}") from None


# -- response ---------------------------------------------------------------------------
def encode_response(keys: RequestKeys, outputs: Sequence[SealedOutput],
                    dead_letters: Sequence[DeadLetter]) -> Iterator[bytes]:
    """Server side: the response frames, sealed one at a time."""
    cipher, index = keys.response, 0
    for output in outputs:
        meta = {"region": output.region, "producer_id": output.producer_id,
                "row_count": output.row_count, "source_count": output.source_count,
                "output_id": output.output_id.hex(), "output_format": output.output_format,
                "rows_suppressed": output.rows_suppressed,
                "statement_bytes": len(output.statement)}
        yield _frame(cipher, index, KIND_OUTPUT,
                     _meta_and_bytes(meta, output.payload + output.statement))
        index += 1
    for dead in dead_letters:
        meta = {"record_id": dead.record_id, "reason": dead.reason, "stage": dead.stage,
                "records": dead.records, "rows": dead.rows}
        yield _frame(cipher, index, KIND_DEAD_LETTER, _meta_and_bytes(meta, dead.sealed))
        index += 1
    yield _frame(cipher, index, KIND_RESPONSE_END,
                 _dump({"outputs": len(outputs), "dead_letters": len(dead_letters)}))


def _output(meta: dict[str, Any], body: bytes) -> SealedOutput:
    try:
        statement_bytes = int(meta.get("statement_bytes", 0))
        if not 0 <= statement_bytes <= len(body):
            raise ValueError("statement length out of bounds")
        cut = len(body) - statement_bytes
        return SealedOutput(str(meta["region"]), str(meta["producer_id"]), body[:cut],
                            int(meta["row_count"]), int(meta["source_count"]),
                            bytes.fromhex(str(meta["output_id"])), str(meta["output_format"]),
                            int(meta["rows_suppressed"]), statement=body[cut:])
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"output metadata is malformed: {type(exc).__name__}") from None


def _dead_letter(meta: dict[str, Any], sealed: bytes) -> DeadLetter:
    try:
        return DeadLetter(str(meta["record_id"]), str(meta["reason"]), str(meta["stage"]),
                          sealed, int(meta["records"]), int(meta["rows"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"dead-letter metadata is malformed: {type(exc).__name__}") from None


def read_response(read: Reader, keys: RequestKeys) -> PoolResponse:
    """Client side: every frame authenticated, the END counts checked, nothing after END."""
    outputs: list[SealedOutput] = []
    dead_letters: list[DeadLetter] = []
    index = 0
    while True:
        try:
            kind, body = _read_frame(read, keys.response, index)
        except ChannelError:
            raise WireError("a response frame failed authentication") from None
        index += 1
        if kind == KIND_OUTPUT:
            outputs.append(_output(*_split_meta(body, "output")))
        elif kind == KIND_DEAD_LETTER:
            dead_letters.append(_dead_letter(*_split_meta(body, "dead letter")))
        elif kind == KIND_RESPONSE_END:
            end = _json(body, "response end")
            if end.get("outputs") != len(outputs) or end.get("dead_letters") != len(
                    dead_letters):
                raise WireError("the response's END does not count the frames it followed")
            if read(1):
                raise WireError("bytes after the response's END")
            return PoolResponse(outputs, dead_letters)
        else:
            raise WireError(f"unknown response frame kind {kind}")
