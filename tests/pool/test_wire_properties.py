"""Properties of the pool's wire format: any list of envelopes round-trips; any other bytes
fail with a typed error (WireError or ChannelError), never another exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_workers.batch_processor import DeadLetter, SealedOutput
from enclave_workers.pool.channel import ChannelError, ChannelKeys, seal_request_secret
from enclave_workers.pool.wire import (
    MAGIC,
    WireError,
    encode_request,
    encode_response,
    read_request,
    read_response,
)
from tests.pool.conftest import byte_reader

CHANNEL = ChannelKeys()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=12))
def test_any_envelopes_round_trip_and_the_declared_length_is_exact(envelopes) -> None:
    sealed, keys = seal_request_secret(CHANNEL.public_bytes())
    length, chunks = encode_request(sealed, keys, spec_fingerprint="ab" * 32,
                                    output_format="sealed-arrow", envelopes=envelopes)
    body = b"".join(chunks)
    assert len(body) == length
    request = read_request(byte_reader(body), CHANNEL)
    assert request.envelopes == envelopes and request.spec_fingerprint == "ab" * 32


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=4),
       st.binary(min_size=1, max_size=64), st.from_regex(r"[0-9A-Za-z.:_-]{0,96}",
                                                         fullmatch=True))
def test_the_batch_id_and_window_label_round_trip(envelopes, batch_id, window) -> None:
    sealed, keys = seal_request_secret(CHANNEL.public_bytes())
    _, chunks = encode_request(sealed, keys, spec_fingerprint="f", output_format="sealed-arrow",
                               envelopes=envelopes, batch_id=batch_id, window=window)
    request = read_request(byte_reader(b"".join(chunks)), CHANNEL)
    assert (request.batch_id, request.window) == (batch_id, window)


def test_a_window_label_unfit_for_a_file_name_is_not_sent() -> None:
    sealed, keys = seal_request_secret(CHANNEL.public_bytes())
    for batch_id, window in ((b"\x01", "../eu"), (b"", ""), (b"\x01" * 65, "")):
        try:
            encode_request(sealed, keys, spec_fingerprint="f", output_format="sealed-arrow",
                           envelopes=[b"e"], batch_id=batch_id, window=window)
        except WireError:
            continue
        raise AssertionError(f"{batch_id!r} / {window!r} was encoded")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=200),
                          st.binary(max_size=100)), max_size=6),
       st.lists(st.tuples(st.text(max_size=40), st.binary(max_size=200)), max_size=6))
def test_any_response_round_trips(outputs, dead) -> None:
    sealed, keys = seal_request_secret(CHANNEL.public_bytes())
    opened = CHANNEL.open_request(sealed)
    sealed_outputs = [SealedOutput("eu", producer or "p", payload, 1, 1, b"\x01" * 16,
                                   statement=statement)
                      for producer, payload, statement in outputs]
    letters = [DeadLetter("id", reason, "open", payload) for reason, payload in dead]
    body = b"".join(encode_response(opened, sealed_outputs, letters))
    response = read_response(byte_reader(body), keys)
    assert response.outputs == sealed_outputs and response.dead_letters == letters


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000))
def test_other_bytes_fail_with_a_typed_error(noise: bytes) -> None:
    for body in (noise, MAGIC + noise):
        try:
            read_request(byte_reader(body), CHANNEL)
        except (WireError, ChannelError):
            continue
        raise AssertionError("noise was read as a request")
    _, keys = seal_request_secret(CHANNEL.public_bytes())
    try:
        read_response(byte_reader(noise), keys)
    except WireError:
        return
    raise AssertionError("noise was read as a response")
