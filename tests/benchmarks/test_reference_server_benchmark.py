"""``benchmarks/reference_server.py``: its bounded request reader, and a short run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.benchmarks.support import load_benchmark, run_benchmark


@pytest.fixture(scope="module")
def reference(repo_root: Path) -> ModuleType:
    return load_benchmark(repo_root, "reference_server.py")


def _request(body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST /v1/challenge HTTP/1.1\r\nHost: x\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def test_a_whole_request_is_measured_and_a_part_waits(reference: ModuleType) -> None:
    request = _request(b'{"a": 1}')
    assert reference.split_request(bytearray(request + b"GET")) == len(request)
    for cut in range(len(request)):
        assert reference.split_request(bytearray(request[:cut])) == 0


@pytest.mark.parametrize("bad", [
    b"POST / HTTP/1.1\r\nHost: x\r\n\r\n",  # no Content-Length
    b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"POST / HTTP/1.1\r\nContent-Length: 70000\r\n\r\n",  # over MAX_BODY_BYTES
    b"POST / HTTP/1.1\r\nno colon here\r\nContent-Length: 0\r\n\r\n",
    b"HELLO\r\nContent-Length: 0\r\n\r\n",
])
def test_requests_it_does_not_take_are_refused(reference: ModuleType, bad: bytes) -> None:
    with pytest.raises(reference.RequestError):
        reference.split_request(bytearray(bad))


def test_a_head_that_never_ends_is_refused_at_the_limit(reference: ModuleType) -> None:
    head = bytearray(b"POST / HTTP/1.1\r\n" + b"X: y\r\n" * 3000)
    assert len(head) > reference.MAX_HEAD_BYTES
    with pytest.raises(reference.RequestError):
        reference.split_request(head)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_length_none_or_a_typed_error(reference: ModuleType,
                                                       data: bytes) -> None:
    try:
        length = reference.split_request(bytearray(data))
    except reference.RequestError:
        return
    assert 0 <= length <= len(data)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=5))
def test_requests_back_to_back_are_split_exactly(reference: ModuleType,
                                                 bodies: list[bytes]) -> None:
    stream = bytearray(b"".join(_request(body) for body in bodies))
    for body in bodies:
        length = reference.split_request(stream)
        assert length == len(_request(body))
        del stream[:length]
    assert not stream


def test_the_server_answers_each_request_and_closes_on_a_bad_one(
        reference: ModuleType) -> None:
    class FakeTransport(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.written = bytearray()
            self.closed = False

        def write(self, data: bytes) -> None:
            self.written += data

        def close(self) -> None:
            self.closed = True

        def get_extra_info(self, name: str, default: object = None) -> object:
            return default

    protocol = reference.BurningProtocol(1)
    transport = FakeTransport()
    protocol.connection_made(transport)
    two = _request(b"") + _request(b"{}")
    protocol.data_received(two[:10])
    assert not transport.written
    protocol.data_received(two[10:])
    assert transport.written.count(b"HTTP/1.1 200 OK") == 2 and not transport.closed
    protocol.data_received(b"POST / HTTP/1.1\r\n\r\n")
    assert transport.written.endswith(reference._BAD_REQUEST) and transport.closed


def test_a_short_run_answers_every_call(repo_root: Path, tmp_path: Path) -> None:
    stdout, numbers = run_benchmark(
        repo_root, "reference_server.py",
        ["--cpu-us", "0", "200", "--rate", "100", "--clients", "4", "--processes", "2",
         "--workers", "2", "--seconds", "0.5"], tmp_path / "reference.json")
    assert "server CPU ms/call" in stdout
    rows = numbers["rows"]
    assert [row["cpu_us_per_call"] for row in rows] == [0, 200]
    for row in rows:
        # every call due in the phase (4 clients, one each 40 ms, for 0.5 s) answered
        assert row["scheduled"] == 4 * 13 and row["calls"] == row["scheduled"]
        assert row["failures"] == 0 and row["dropped"] == 0
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["server_cpu_ms_per_call"] > 0
    assert rows[0]["burn_units"] == 0 and rows[1]["burn_units"] > 0
