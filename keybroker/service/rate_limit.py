"""Per-address token buckets for the broker's unauthenticated routes, as ASGI middleware.

``/v1/challenge``, ``/v1/attest`` and any path the API does not have cost a caller
nothing to send, so each client address gets a bucket of ``burst`` requests refilled at
``rate`` per second; an empty bucket is answered ``429 {"error": "rate_limited"}`` with
``Retry-After`` (whole seconds until a token is back) before the application sees the
request. The table is bounded: past ``max_clients`` addresses the least recently seen is
forgotten (it comes back with a full bucket, which costs it nothing it did not have).
Routes that need a session are not limited here: their anonymous denials are aggregated in
the ledger instead (keybroker/ledger_denials.py), and a worker's key traffic is bursty.

The clock is injectable (monotonic seconds). This module does not authenticate anyone.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["LIMITED_PATHS", "RateLimitMiddleware", "RateLimiter"]

LIMITED_PATHS = frozenset({"/v1/challenge", "/v1/attest"})


class RateLimiter:
    """Token buckets by key; ``take(key)`` is 0.0 when allowed, else seconds to wait."""

    def __init__(
        self,
        rate: float,
        burst: int,
        max_clients: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = float(rate)
        self._burst = float(burst)
        self._max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (self._burst, now))
            tokens = min(self._burst, tokens + (now - at) * self._rate)
            if tokens >= 1.0:
                tokens -= 1.0
                wait = 0.0
            else:
                wait = (1.0 - tokens) / self._rate
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
            return wait

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)


class RateLimitMiddleware:
    """429 with Retry-After for a client over its rate on the limited (or unknown) paths."""

    def __init__(
        self,
        app: ASGIApp,
        limiter: RateLimiter,
        known_paths: Collection[str] | None = None,
        limited_paths: Collection[str] = LIMITED_PATHS,
    ) -> None:
        """``known_paths`` default to the routes of the application serving the request."""
        self._app = app
        self._limiter = limiter
        self._known = None if known_paths is None else frozenset(known_paths)
        self._limited = frozenset(limited_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self._known is None:
            routes = getattr(scope.get("app"), "routes", ())
            self._known = frozenset(getattr(route, "path", "") for route in routes)
        if path in self._limited or path not in self._known:
            client = scope.get("client")
            address = client[0] if client else "unknown"
            wait = self._limiter.take(address)
            if wait > 0:
                await _refuse(send, math.ceil(wait))
                return
        await self._app(scope, receive, send)


async def _refuse(send: Send, retry_after: int) -> None:
    body = json.dumps(
        {"error": "rate_limited", "reason": f"too many requests; retry after {retry_after} s"}
    ).encode("ascii")
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"retry-after", str(retry_after).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
