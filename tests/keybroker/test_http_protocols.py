"""The broker's HTTP protocols: the header timer of both (h11 and httptools) and the
transport wrapper whose writes in one loop turn leave as one write."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from keybroker.service.http_limits import (
    CoalescedWrites,
    header_timeout_httptools_protocol,
    header_timeout_protocol,
)

HEADER_TIMEOUT = 0.4
BODY = b'{"ok": true}'


async def _answer(scope: dict, receive: object, send: object) -> None:
    """A minimal ASGI app: 200 and a small JSON body for every request."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})  # type: ignore[operator]


def _protocols() -> list[object]:
    return [pytest.param(lambda: header_timeout_protocol(HEADER_TIMEOUT), id="h11"),
            pytest.param(lambda: header_timeout_httptools_protocol(HEADER_TIMEOUT, 8192),
                         id="httptools")]


@pytest.fixture(params=_protocols())
def server_address(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """uvicorn on a free loopback port with one of the broker's protocol classes."""
    try:
        protocol = request.param()
    except RuntimeError:
        pytest.skip("httptools is not installed")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    config = uvicorn.Config(_answer, http=protocol, log_level="warning", access_log=False,
                            lifespan="off", timeout_keep_alive=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _read_reply(connection: socket.socket) -> bytes:
    reply = b""
    while not reply.endswith(BODY):
        chunk = connection.recv(4096)
        assert chunk, reply
        reply += chunk
    return reply


def test_headers_not_in_on_time_close_the_connection_after_a_reply_too(
    server_address: tuple[str, int],
) -> None:
    with socket.create_connection(server_address, timeout=5) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = _read_reply(connection)
        assert reply.startswith(b"HTTP/1.1 200") and reply.count(BODY) == 1
        connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the next one never ends
        started = time.monotonic()
        for _ in range(10):  # a byte now and then does not keep it open
            time.sleep(HEADER_TIMEOUT / 4)
            try:
                connection.sendall(b"X")
            except OSError:
                break
        assert connection.recv(1024) == b""  # closed, nothing answered
        assert time.monotonic() - started < 5


def test_a_connection_that_never_sends_headers_is_closed(
    server_address: tuple[str, int],
) -> None:
    with socket.create_connection(server_address, timeout=5) as connection:
        connection.sendall(b"GET / HT")
        assert connection.recv(1024) == b""


def test_requests_in_time_are_answered_on_one_connection(
    server_address: tuple[str, int],
) -> None:
    with socket.create_connection(server_address, timeout=5) as connection:
        for _ in range(3):
            time.sleep(HEADER_TIMEOUT / 2)  # idle, under the timeout each time
            connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_reply(connection).startswith(b"HTTP/1.1 200")


class RecordingTransport:
    """Stands in for the socket transport: records writes and closes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"extra {name}"


def test_writes_in_one_turn_leave_as_one_write_in_order() -> None:
    loop = asyncio.new_event_loop()
    try:
        inner = RecordingTransport()
        transport = CoalescedWrites(inner, loop)  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(bytearray(b"{}"))
        assert inner.writes == []  # held until the loop's turn ends
        loop.run_until_complete(asyncio.sleep(0))
        assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        transport.writelines([b"a", b"b"])
        loop.run_until_complete(asyncio.sleep(0))
        assert inner.writes[1:] == [b"ab"]
        assert transport.get_extra_info("peername") == "extra peername"  # the rest delegated
    finally:
        loop.close()


def test_close_writes_what_is_held_first_and_nothing_after() -> None:
    loop = asyncio.new_event_loop()
    try:
        inner = RecordingTransport()
        transport = CoalescedWrites(inner, loop)  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        transport.close()
        assert inner.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and inner.closed
        transport.write(b"late")
        loop.run_until_complete(asyncio.sleep(0))
        assert transport.is_closing() and inner.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"]
    finally:
        loop.close()
