"""The HTTP server's bounds: uvicorn options from ``ServiceLimits`` and a header timeout.

uvicorn bounds concurrency (``limit_concurrency``: 503 past it), the size of a request's
line and headers (``h11_max_incomplete_event_size``) and idle keep-alive connections
(``timeout_keep_alive``), but a client that trickles its headers a byte at a time keeps a
connection open for ever: every byte cancels the keep-alive timer. ``header_timeout_protocol``
returns an h11 protocol class that closes a connection whose request headers are not
complete within a fixed time of the connection opening (or of the previous response). The
body's own deadline is in the application (app.BodySizeLimit, 408).

This module configures the server; it does not touch requests once their headers are in.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from keybroker.service_limits import ServiceLimits

__all__ = ["header_timeout_protocol", "uvicorn_limit_options"]


def header_timeout_protocol(timeout_seconds: float) -> type[H11Protocol]:
    """An ``H11Protocol`` that drops connections whose headers take over ``timeout_seconds``."""

    class HeaderTimeoutH11Protocol(H11Protocol):
        header_timeout = timeout_seconds
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self._cancel_header_timer()  # the headers are in (or the connection is done)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self.transport.close()

    return HeaderTimeoutH11Protocol


def uvicorn_limit_options(limits: ServiceLimits) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` that apply ``limits``."""
    return {
        "http": header_timeout_protocol(limits.header_timeout_seconds),
        "limit_concurrency": limits.max_concurrency,
        "timeout_keep_alive": limits.keep_alive_seconds,
        "h11_max_incomplete_event_size": limits.max_header_bytes,
    }
