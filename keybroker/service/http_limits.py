"""The HTTP server's bounds: uvicorn options from ``ServiceLimits`` and a header timeout.

uvicorn bounds concurrency (``limit_concurrency``: 503 past it), the size of a request's
line and headers (``h11_max_incomplete_event_size``) and idle keep-alive connections
(``timeout_keep_alive``), but a client that trickles its headers a byte at a time keeps a
connection open for ever: every byte cancels the keep-alive timer. ``header_timeout_protocol``
returns an h11 protocol class that closes a connection whose request headers are not
complete within a fixed time of the connection opening (or of the previous response). The
body's own deadline is in the application (app.BodySizeLimit, 408).

When ``httptools`` is installed (the ``broker`` extra), the same two bounds are applied to
uvicorn's httptools protocol instead (``header_timeout_httptools_protocol``), which parses
requests several times faster than h11: the header timer as above, and a cap on the bytes
of a request's line and headers (uvicorn bounds them only for h11), answered like h11's
refusal: 400 and the connection closed. The header timer is one mixin of both protocols
(``_HeaderTimer``), which also writes each response in one piece (``CoalescedWrites``):
uvicorn writes the headers and the body separately, two send calls and two TCP segments
per reply.

This module configures the server; it does not touch requests once their headers are in.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from keybroker.service_limits import ServiceLimits

try:  # the faster parser, when installed
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - depends on the installation
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

__all__ = ["header_timeout_httptools_protocol", "header_timeout_protocol", "uvicorn_limit_options"]


class _HeaderTimer:
    """The header timer both protocols share (mixed in before uvicorn's protocol class).

    A connection's request headers must be complete within ``header_timeout`` of the
    connection opening or of the previous response, else it is closed. The protocol says
    when headers are awaited (``_await_headers``) and whether they still are
    (``_awaiting_headers``). Replies go out through ``CoalescedWrites``.
    """

    header_timeout: float
    _header_timer: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop
    transport: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self.transport = CoalescedWrites(transport, self.loop)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _await_headers(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _awaiting_headers(self) -> bool:
        raise NotImplementedError

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing() and self._awaiting_headers():
            self.transport.close()


def header_timeout_protocol(timeout_seconds: float) -> type[H11Protocol]:
    """An ``H11Protocol`` that drops connections whose headers take over ``timeout_seconds``."""

    class HeaderTimeoutH11Protocol(_HeaderTimer, H11Protocol):
        header_timeout = timeout_seconds

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self._cancel_header_timer()  # the headers are in (or the connection is done)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._await_headers()

        def _awaiting_headers(self) -> bool:
            return self.conn.their_state is h11.IDLE

    return HeaderTimeoutH11Protocol


def header_timeout_httptools_protocol(
    timeout_seconds: float, max_header_bytes: int
) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the header timeout and a header size cap."""
    if HttpToolsProtocol is None:
        raise RuntimeError("httptools is not installed")

    class HeaderBoundHttpToolsProtocol(_HeaderTimer, HttpToolsProtocol):  # type: ignore[misc,valid-type]
        header_timeout = timeout_seconds
        header_limit = max_header_bytes
        _in_headers = True
        _header_bytes = 0
        _begun = False
        _headers_done = False
        _parsed_bytes = 0

        def data_received(self, data: bytes) -> None:
            # The parser's callbacks count a request's line and headers exactly, but a single
            # header still arriving is buffered inside the parser, uncounted: so also count
            # each chunk that is all header bytes (it neither began a request nor completed
            # one's headers), which bounds that buffer by the cap plus two chunks.
            self._begun = self._headers_done = False
            super().data_received(data)
            if self._in_headers and not (self._begun or self._headers_done):
                self._header_bytes += len(data)
                if self._header_bytes > self.header_limit and not self.transport.is_closing():
                    self.send_400_response("Invalid HTTP request received.")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._begun = True
            self._in_headers = True  # a pipelined request's headers count from here
            self._header_bytes = 0
            self._parsed_bytes = 0

        # Exact count of what the parser hands over (line and headers); raising here makes
        # httptools fail the parse, which uvicorn answers with 400 and a close.
        def on_url(self, url: bytes) -> None:
            self._parsed_bytes += len(url)
            if self._parsed_bytes > self.header_limit:
                raise ValueError("request line too long")
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._parsed_bytes += len(name) + len(value) + 4
            if self._parsed_bytes > self.header_limit:
                raise ValueError("request headers too large")
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._headers_done = True
            self._in_headers = False
            self._cancel_header_timer()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.cycle is not None and (
                self.cycle.response_complete and not self.pipeline
            ):
                self._await_headers()

        def _await_headers(self) -> None:
            self._in_headers = True
            self._header_bytes = 0
            super()._await_headers()

        def _awaiting_headers(self) -> bool:
            return self._in_headers

    return HeaderBoundHttpToolsProtocol


class CoalescedWrites:
    """A transport whose writes within one turn of the event loop go out as one write.

    Why: uvicorn writes a response's status line and headers, then its body, each straight
    to the socket: two send calls and, with TCP_NODELAY, two segments per reply. Held until
    the end of the loop's turn (or a close), they go out in one. Everything else is the
    wrapped transport's.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Write what is held (the end of the turn, or before a close)."""
        if self._held:
            held, self._held = self._held, []
            if not self._transport.is_closing():
                self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def uvicorn_limit_options(limits: ServiceLimits) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` that apply ``limits``."""
    protocol: type[asyncio.Protocol] = (
        header_timeout_httptools_protocol(
            limits.header_timeout_seconds, limits.max_header_bytes
        )
        if HttpToolsProtocol is not None
        else header_timeout_protocol(limits.header_timeout_seconds)
    )
    return {
        "http": protocol,
        "limit_concurrency": limits.max_concurrency,
        "timeout_keep_alive": limits.keep_alive_seconds,
        "h11_max_incomplete_event_size": limits.max_header_bytes,
    }
