"""The lean client of benchmarks/broker_load.py against a scripted loopback server: its
bounded response reader (odd chunks, ``Connection: close``, oversized headers, no
Content-Length, a truncated body, a non-200 status, a malformed status line, a wrong reply)
and its one-thread loop's closed- and open-loop accounting. Every run has a deadline: a
hang fails the test instead of stalling it."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.benchmarks.support import load_benchmark

KEY_ID = "k" * 64
REQUEST_BODY = json.dumps({"session_id": "s", "region": "eu"}).encode()
REPLY_BODY = json.dumps({"key_id": KEY_ID, "sealed_dek": "c2VhbGVk",
                         "grant": {"payload": "g"}}).encode()
CLOSE = object()  # in a script: close the connection
DEADLINE_SECONDS = 15.0  # no test run takes anywhere near this unless something hangs


@pytest.fixture(scope="module")
def benchmark(repo_root: Path) -> ModuleType:
    return load_benchmark(repo_root, "broker_load.py")


def reply(body: bytes = REPLY_BODY, status: bytes = b"200 OK", headers: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ndate: Tue, 01 Dec 2026 21:00:00 GMT\r\n"
            b"server: uvicorn\r\ncontent-type: application/json\r\n" + headers
            + b"content-length: %d\r\n\r\n" % len(body) + body)


class ScriptedServer:
    """A loopback server: reads each request whole (headers, Content-Length body), then
    plays ``script(n)`` for the n-th request: bytes are sent, a float is a pause, ``CLOSE``
    closes the connection. Every socket has a timeout; ``close`` stops and joins all."""

    def __init__(self, script: Callable[[int], list[object]]) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            with self.lock:
                self.connections += 1
                worker = threading.Thread(target=self._serve, args=(connection,), daemon=True)
                self.threads.append(worker)
            worker.start()

    def _read_request(self, connection: socket.socket, buffer: bytearray) -> bytes | None:
        while b"\r\n\r\n" not in buffer:
            if not self._receive(connection, buffer):
                return None
        end = buffer.index(b"\r\n\r\n") + 4
        length = 0
        for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        while len(buffer) < end + length:
            if not self._receive(connection, buffer):
                return None
        request = bytes(buffer[:end + length])
        del buffer[:end + length]
        return request

    def _receive(self, connection: socket.socket, buffer: bytearray) -> bool:
        while not self.stopping.is_set():
            try:
                data = connection.recv(65536)
            except TimeoutError:
                continue
            buffer += data
            return bool(data)
        return False

    def _serve(self, connection: socket.socket) -> None:
        connection.settimeout(0.1)
        buffer = bytearray()
        with connection:
            try:
                while (request := self._read_request(connection, buffer)) is not None:
                    with self.lock:
                        number = len(self.requests)
                        self.requests.append(request)
                    for step in self.script(number):
                        if step is CLOSE:
                            return
                        if isinstance(step, float):
                            if self.stopping.wait(step):
                                return
                        else:
                            connection.sendall(step)  # type: ignore[arg-type]
            except OSError:
                return  # the client closed first: its reader refused the reply

    def close(self) -> None:
        self.stopping.set()
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(timeout=5)
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[int], list[object]]], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Callable[[int], list[object]]) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def within_deadline(function: Callable[[], object]) -> object:
    """``function()`` in a thread; fails the test if it has not returned by the deadline."""
    outcome: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(function())
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(DEADLINE_SECONDS)
    assert not worker.is_alive(), "the lean client hung"
    if errors:
        raise errors[0]
    return outcome[0]


def lean_client(benchmark: ModuleType, server: ScriptedServer):
    return benchmark.LeanClient(f"http://127.0.0.1:{server.port}", KEY_ID,
                                {"release": REQUEST_BODY, "challenge": b""})


def open_calls(benchmark: ModuleType, server: ScriptedServer, calls: int = 3, *,
               interval: float = 0.05, timeout: float = 2.0, drain: float = 1.0,
               operation: str = "release"):
    """``calls`` open-loop calls of one client; its outcome and the client."""
    client = lean_client(benchmark, server)
    try:
        outcome = within_deadline(lambda: benchmark.run_lean(
            [client], operation, time.perf_counter(), calls * interval, interval=interval,
            offsets=[0.0], timeout=timeout, drain=drain))
    finally:
        client.close()
    return outcome, client


def odd_chunks(data: bytes) -> list[object]:
    """``data`` in pieces of 1, 2, 3, 5, 7, 11, 13, ... bytes with short pauses."""
    sizes, steps, at = [1, 2, 3, 5, 7, 11, 13, 17, 19, 23], [], 0
    while at < len(data):
        size = sizes[len(steps) // 2 % len(sizes)]
        steps += [data[at:at + size], 0.0005]
        at += size
    return steps


def test_a_reply_in_odd_chunks_is_read_whole_on_one_keep_alive_connection(
        benchmark, serve) -> None:
    server = serve(lambda number: odd_chunks(reply()))
    outcome, client = open_calls(benchmark, server)
    assert (len(outcome.latencies), outcome.failures, outcome.dropped) == (3, 0, 0)
    assert outcome.scheduled == 3 and client.last_error is None
    assert server.connections == 1
    request = server.requests[0]
    assert request.startswith(b"POST /v1/keys/release HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in request
    assert b"Content-Type: application/json\r\n" in request
    assert b"Content-Length: %d\r\n\r\n" % len(REQUEST_BODY) in request
    assert request.endswith(b"\r\n\r\n" + REQUEST_BODY)
    assert server.requests == [request] * 3  # built once, sent as is


def test_connection_close_reply_is_answered_then_the_next_call_reconnects(
        benchmark, serve) -> None:
    server = serve(lambda number: [reply(headers=b"Connection: close\r\n"), CLOSE])
    outcome, client = open_calls(benchmark, server)
    assert (len(outcome.latencies), outcome.failures) == (3, 0)
    assert server.connections == 3 and client.last_error is None


@pytest.mark.parametrize(("script", "error"), [
    # headers that never end within the cap (the server then waits)
    (lambda number: [b"HTTP/1.1 200 OK\r\nx-filler: " + b"a" * (17 * 1024), 5.0],
     "HeadTooLargeError"),
    (lambda number: [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n"
                     + REPLY_BODY, 5.0], "MissingLengthError"),
    (lambda number: [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello"
                     b"\r\n0\r\n\r\n", 5.0], "MissingLengthError"),
    (lambda number: [b"HTTP/1.1 200 OK\r\ncontent-length: 2000000\r\n\r\n{", 5.0],
     "BodyTooLargeError"),
    # a truncated body, then the connection ends
    (lambda number: [reply()[:-10], CLOSE], "ShortReadError"),
    (lambda number: [CLOSE], "ShortReadError"),
    (lambda number: [reply(status=b"503 Service Unavailable",
                           body=b'{"error": "busy"}')], "StatusError"),
    (lambda number: [b"HTTP/1.1 2OO OK\r\ncontent-length: 2\r\n\r\n{}"],
     "MalformedResponseError"),
    (lambda number: [b"HTTP/1.1 200 OK\r\n folded: header\r\ncontent-length: 2\r\n\r\n{}"],
     "MalformedResponseError"),
    (lambda number: [reply() + b"HTTP/1.1 200 OK\r\n"], "MalformedResponseError"),
    (lambda number: [reply(body=REPLY_BODY.replace(KEY_ID.encode(), b"x" * 64))],
     "ReplyError"),
    (lambda number: [reply(body=b"not json")], "ReplyError"),
], ids=["oversized-header", "no-length", "chunked", "oversized-body", "truncated-body",
        "closed-at-once", "status-503", "bad-status-line", "folded-header", "trailing-bytes",
        "another-key", "not-json"])
def test_a_bad_reply_is_a_typed_failure_of_that_call_and_never_a_hang(
        benchmark, serve, script, error) -> None:
    server = serve(script)
    outcome, client = open_calls(benchmark, server)
    assert outcome.latencies == [] and outcome.failures == 3 and outcome.dropped == 0
    assert type(client.last_error).__name__ == error
    assert isinstance(client.last_error, benchmark.LeanHttpError)
    assert server.connections == 3  # each failed call's connection was closed
    if error == "StatusError":
        assert client.last_error.status == 503


def test_a_reply_that_stops_halfway_times_out(benchmark, serve) -> None:
    server = serve(lambda number: [reply()[:-10], 30.0])
    outcome, client = open_calls(benchmark, server, calls=2, interval=0.05, timeout=0.3)
    assert outcome.latencies == [] and outcome.failures == 2
    assert isinstance(client.last_error, benchmark.CallTimeoutError)


def test_a_refused_connection_is_a_failed_call(benchmark) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = benchmark.LeanClient(f"http://127.0.0.1:{port}", KEY_ID,
                                  {"release": REQUEST_BODY})
    outcome = within_deadline(lambda: benchmark.run_lean(
        [client], "release", time.perf_counter(), 0.1, interval=0.05, offsets=[0.0]))
    assert outcome.latencies == [] and outcome.failures == 2
    assert isinstance(client.last_error, OSError)


def test_closed_loop_calls_back_to_back_on_one_connection_each(benchmark, serve) -> None:
    server = serve(lambda number: [reply()])
    clients = [lean_client(benchmark, server) for _ in range(3)]
    try:
        outcome = within_deadline(lambda: benchmark.run_lean(
            clients, "release", time.perf_counter(), 0.2))
    finally:
        for client in clients:
            client.close()
    assert outcome.failures == 0 and outcome.scheduled == 0 and outcome.dropped == 0
    assert len(outcome.latencies) == len(server.requests) > 3
    assert server.connections == 3
    assert all(latency > 0 for latency in outcome.latencies)


def test_open_loop_counts_the_wait_behind_a_slow_reply(benchmark, serve) -> None:
    # The first reply takes at least 0.25 s: the calls due at 0.1 and 0.2 leave late and
    # their latency counts from their due time (lower bounds only: no timing is asserted).
    server = serve(lambda number: [0.25, reply()] if number == 0 else [reply()])
    outcome, _ = open_calls(benchmark, server, calls=10, interval=0.1)
    assert outcome.scheduled == 10 and len(outcome.latencies) == 10
    assert outcome.failures == 0 and outcome.dropped == 0
    assert outcome.late >= 2
    assert outcome.latencies[0] >= 0.25
    assert outcome.latencies[1] >= 0.15 and outcome.latencies[2] >= 0.05


def test_open_loop_drops_what_it_cannot_send_before_the_drain_ends(benchmark, serve) -> None:
    server = serve(lambda number: [1.0, reply()])
    outcome, _ = open_calls(benchmark, server, calls=3, interval=0.1, drain=0.2)
    assert outcome.scheduled == 3 and len(outcome.latencies) == 1
    assert outcome.latencies[0] >= 1.0 and outcome.dropped == 2 and outcome.failures == 0


def test_open_loop_offsets_spread_the_clients(benchmark, serve) -> None:
    server = serve(lambda number: [reply()])
    clients = [lean_client(benchmark, server) for _ in range(2)]
    try:
        outcome = within_deadline(lambda: benchmark.run_lean(
            clients, "release", time.perf_counter(), 0.3, interval=0.1,
            offsets=[0.0, 0.05]))
    finally:
        for client in clients:
            client.close()
    assert outcome.scheduled == 6 and len(outcome.latencies) == 6
    assert outcome.failures == 0 and outcome.dropped == 0 and server.connections == 2


@given(cuts=st.lists(st.integers(min_value=1, max_value=len(reply()) - 1), max_size=12,
                     unique=True))
def test_the_reader_gives_the_same_response_however_the_bytes_are_split(
        benchmark, cuts: list[int]) -> None:
    data = reply()
    bounds = [0, *sorted(cuts), len(data)]
    reader = benchmark.ResponseReader()
    results = [reader.feed(data[a:b]) for a, b in itertools.pairwise(bounds)]
    assert all(result is None for result in results[:-1])
    assert results[-1] == benchmark.Response(200, REPLY_BODY, False)
    # ... and the same reader then reads the next response
    assert reader.feed(data) == benchmark.Response(200, REPLY_BODY, False)
    reader.feed(data[:bounds[1]])
    with pytest.raises(benchmark.ShortReadError):
        reader.feed(b"")


def test_the_head_parser_reads_close_and_length(benchmark) -> None:
    parse = benchmark.parse_head
    assert parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3") == (200, 3, False)
    assert parse(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\ncontent-length: 3 "
                 ) == (200, 3, True)
    assert parse(b"HTTP/1.0 200 OK\r\nContent-Length: 3") == (200, 3, True)
    assert parse(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3"
                 ) == (200, 3, False)
    assert parse(b"HTTP/1.1 404\r\nContent-Length: 0") == (404, 0, False)
    for bad in (b"HTTP/2 200 OK\r\nContent-Length: 3", b"HTTP/1.1 20 OK\r\nContent-Length: 3",
                b"HTTP/1.1 200 OK\r\nContent-Length: -3",
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4",
                b"HTTP/1.1 200 OK\r\nbad header\r\nContent-Length: 3"):
        with pytest.raises(benchmark.MalformedResponseError):
            parse(bad)
