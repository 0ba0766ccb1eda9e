"""The broker's transport wrapper: a response's writes in one loop turn leave as one write."""

from __future__ import annotations

import asyncio

from keybroker.service.http_limits import CoalescedWrites


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
