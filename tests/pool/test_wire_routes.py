"""The routing facts on the pool wire (``enclave_workers/pool/routes.py``, ``wire.py``).

Any route an envelope header could give round-trips, in a ``ROUTED_ENVELOPE`` frame and
alone; a route no header could give is not sent (``WireError``); any bytes where a route
belongs either read as a route that re-encodes to exactly those bytes or fail with
``WireError``, never another exception; a request whose header and frames disagree about
routes is refused; a request without routes (an older client) reads as before.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_workers.pool import wire
from enclave_workers.pool.channel import ChannelError, ChannelKeys, seal_request_secret
from enclave_workers.pool.routes import KEY_ID_BYTES, MAX_ROUTE_BYTES, encode_route, split_route
from enclave_workers.pool.wire import WireError, encode_request, read_request
from envelope.limits import MAX_PRODUCER_ID, MAX_REGION
from tests.pool.conftest import byte_reader

CHANNEL = ChannelKeys()

# Text as an envelope header holds it: printable UTF-8, bounded in bytes, not in characters.
_TEXT = st.characters(blacklist_categories=("Cs", "Cc"),
                      blacklist_characters="".join(map(chr, range(0x7F, 0xA0))))
_KEY_IDS = st.binary(min_size=KEY_ID_BYTES, max_size=KEY_ID_BYTES).map(bytes.hex)
_REGIONS = st.text(_TEXT, min_size=1, max_size=MAX_REGION).filter(
    lambda t: len(t.encode()) <= MAX_REGION)
_PRODUCERS = st.text(_TEXT, min_size=1, max_size=80).filter(
    lambda t: len(t.encode()) <= MAX_PRODUCER_ID)
ROUTES = st.tuples(_KEY_IDS, _REGIONS, _PRODUCERS)


@settings(max_examples=80, deadline=None)
@given(ROUTES, st.binary(max_size=64))
def test_any_header_route_round_trips_before_the_envelope_bytes(route, envelope) -> None:
    prefix = encode_route(route)
    assert len(prefix) <= MAX_ROUTE_BYTES
    body = b"\x04" + prefix + envelope
    parsed, start = split_route(body, 1)
    assert parsed == route and body[start:] == envelope


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(ROUTES, st.binary(max_size=200)), min_size=1, max_size=8))
def test_a_routed_request_round_trips_and_its_declared_length_is_exact(pairs) -> None:
    routes = [route for route, _ in pairs]
    envelopes = [envelope for _, envelope in pairs]
    sealed, keys = seal_request_secret(CHANNEL.public_bytes())
    length, chunks = encode_request(sealed, keys, spec_fingerprint="ab" * 32,
                                    output_format="sealed-arrow", envelopes=envelopes,
                                    batch_id=b"\x01" * 16, routes=routes)
    body = b"".join(chunks)
    assert len(body) == length
    request = read_request(byte_reader(body), CHANNEL)
    assert request.envelopes == envelopes and request.routes == routes


def test_a_request_without_routes_reads_as_an_older_clients() -> None:
    sealed, keys = seal_request_secret(CHANNEL.public_bytes())
    _, chunks = encode_request(sealed, keys, spec_fingerprint="f", output_format="sealed-arrow",
                               envelopes=[b"a", b"b"], batch_id=b"\x01")
    request = read_request(byte_reader(b"".join(chunks)), CHANNEL)
    assert request.routes is None and request.envelopes == [b"a", b"b"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=MAX_ROUTE_BYTES + 40))
def test_any_bytes_are_a_canonical_route_or_a_wire_error(noise: bytes) -> None:
    try:
        route, start = split_route(noise)
    except WireError:
        return
    assert encode_route(route) == noise[:start]       # one encoding per route


@settings(max_examples=200, deadline=None)
@given(ROUTES, st.integers(0, MAX_ROUTE_BYTES), st.integers(1, 255))
def test_a_route_with_a_changed_byte_is_a_canonical_route_or_a_wire_error(
        route, where: int, flip: int) -> None:
    changed = bytearray(encode_route(route) + b"envelope")
    changed[where % len(changed)] ^= flip
    try:
        parsed, start = split_route(bytes(changed))
    except WireError:
        return
    assert encode_route(parsed) == bytes(changed[:start])


@settings(max_examples=60, deadline=None)
@given(ROUTES, st.data())
def test_a_cut_route_is_a_wire_error(route, data) -> None:
    prefix = encode_route(route)
    cut = data.draw(st.integers(0, len(prefix) - 1))
    with pytest.raises(WireError, match="route"):
        split_route(prefix[:cut])


GOOD = ("ab" * 32, "eu", "acme")


@pytest.mark.parametrize(("route", "why"), [
    (("AB" * 32, "eu", "acme"), "data-key id"),
    (("ab" * 31, "eu", "acme"), "data-key id"),
    ((b"\xab" * 32, "eu", "acme"), "data-key id"),
    (("ab" * 32, "", "acme"), "region is 0 bytes"),
    (("ab" * 32, "e" * (MAX_REGION + 1), "acme"), "region is 65 bytes"),
    (("ab" * 32, "é" * 33, "acme"), "region is 66 bytes"),
    (("ab" * 32, "eu", "p" * (MAX_PRODUCER_ID + 1)), "producer is 257 bytes"),
    (("ab" * 32, "eu\n", "acme"), "region contains a control character"),
    (("ab" * 32, "eu", "ac\x9bme"), "producer contains a control character"),
    (("ab" * 32, "eu", "\udc80"), "producer is not encodable"),
    (("ab" * 32, 7, "acme"), "region: expected text"),
    (("ab" * 32, "eu"), "a route is"),
    (["ab" * 32, "eu", "acme"], "a route is"),
])
def test_a_route_no_header_could_give_is_not_sent(route, why: str) -> None:
    with pytest.raises(WireError, match=why):
        encode_route(route)
    sealed, keys = seal_request_secret(CHANNEL.public_bytes())
    with pytest.raises(WireError, match=why):
        encode_request(sealed, keys, spec_fingerprint="f", output_format="sealed-arrow",
                       envelopes=[b"e", b"e"], batch_id=b"\x01", routes=[GOOD, route])


def _region_bytes(length_field: bytes, region: bytes) -> bytes:
    return bytes.fromhex(GOOD[0]) + length_field + region + b"\x00\x04acme"


@pytest.mark.parametrize(("body", "why"), [
    (_region_bytes(b"\x00\x00", b""), "region length 0 is out of bounds"),
    (_region_bytes(b"\x00\x41", b"e" * 65), "region length 65 is out of bounds"),
    (_region_bytes(b"\xff\xff", b"eu"), "region length 65535 is out of bounds"),
    (_region_bytes(b"\x00\x02", b"\xc3\x28"), "region is not valid UTF-8"),
    (_region_bytes(b"\x00\x02", b"e\x00"), "region contains a control character"),
    (bytes.fromhex(GOOD[0]) + b"\x00\x02eu\x01\x01" + b"p" * 257,
     "producer length 257 is out of bounds"),
    (bytes.fromhex(GOOD[0])[:31], "data-key id is cut"),
])
def test_a_route_over_a_bound_or_not_text_is_a_wire_error(body: bytes, why: str) -> None:
    with pytest.raises(WireError, match=why):
        split_route(body)


def test_routes_must_match_the_envelopes_one_to_one() -> None:
    sealed, keys = seal_request_secret(CHANNEL.public_bytes())
    with pytest.raises(WireError, match="1 routes for 2 envelopes"):
        encode_request(sealed, keys, spec_fingerprint="f", output_format="sealed-arrow",
                       envelopes=[b"a", b"b"], batch_id=b"\x01", routes=[GOOD])


def _hand_made(header: dict, frames: list[tuple[int, bytes]]) -> bytes:
    """A request whose frames are sealed as a client would, but chosen by the test."""
    sealed, keys = seal_request_secret(CHANNEL.public_bytes())
    parts = [wire.MAGIC + wire._U32.pack(len(sealed)) + sealed,
             wire._frame(keys.request, 0, wire.KIND_HEADER, wire._dump(header))]
    parts += [wire._frame(keys.request, i, kind, body)
              for i, (kind, body) in enumerate(frames, start=1)]
    parts.append(wire._frame(keys.request, len(frames) + 1, wire.KIND_END,
                             wire._dump({"envelopes": len(frames)})))
    return b"".join(parts)


HEADER = {"spec_fingerprint": "f", "output_format": "sealed-arrow", "envelopes": 2,
          "batch_id": "01", "window": ""}
ROUTED = encode_route(GOOD) + b"envelope"


@pytest.mark.parametrize(("header", "frames", "why"), [
    ({**HEADER, "routes": True}, [(wire.KIND_ROUTED_ENVELOPE, ROUTED),
                                  (wire.KIND_ENVELOPE, b"envelope")],
     "frame 2 is not a routed envelope"),
    (HEADER, [(wire.KIND_ENVELOPE, b"envelope"), (wire.KIND_ROUTED_ENVELOPE, ROUTED)],
     "frame 2 is not an envelope"),
    ({**HEADER, "routes": "yes"}, [(wire.KIND_ROUTED_ENVELOPE, ROUTED)] * 2,
     "routes is true or absent"),
    ({**HEADER, "routes": 1}, [(wire.KIND_ROUTED_ENVELOPE, ROUTED)] * 2,
     "routes is true or absent"),
    ({**HEADER, "routes": False}, [(wire.KIND_ENVELOPE, b"envelope")] * 2,
     "routes is true or absent"),
    ({**HEADER, "routes": True}, [(wire.KIND_ROUTED_ENVELOPE, ROUTED),
                                  (wire.KIND_ROUTED_ENVELOPE, ROUTED[:40])],
     "route producer length 4 is out of bounds"),
])
def test_a_request_whose_header_and_frames_disagree_about_routes_is_refused(
        header: dict, frames: list, why: str) -> None:
    with pytest.raises(WireError, match=why):
        read_request(byte_reader(_hand_made(header, frames)), CHANNEL)


def test_a_hand_made_routed_request_reads_as_encoded() -> None:
    request = read_request(byte_reader(_hand_made(
        {**HEADER, "routes": True}, [(wire.KIND_ROUTED_ENVELOPE, ROUTED)] * 2)), CHANNEL)
    assert request.routes == [GOOD, GOOD] and request.envelopes == [b"envelope"] * 2


@settings(max_examples=60, deadline=None)
@given(st.lists(ROUTES, min_size=1, max_size=3), st.integers(0, 10_000))
def test_a_routed_request_cut_anywhere_is_a_typed_error(routes, where: int) -> None:
    sealed, keys = seal_request_secret(CHANNEL.public_bytes())
    _, chunks = encode_request(sealed, keys, spec_fingerprint="f", output_format="sealed-arrow",
                               envelopes=[b"x" * 10] * len(routes), batch_id=b"\x01",
                               routes=routes)
    body = b"".join(chunks)
    with pytest.raises((WireError, ChannelError)):
        read_request(byte_reader(body[:where % len(body)]), CHANNEL)
