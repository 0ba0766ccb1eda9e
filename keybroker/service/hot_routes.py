"""The broker's hot routes answered without the framework's router: less work per request.

Why: a release costs the broker ~2 ms of CPU, and most of it was the HTTP stack; FastAPI's
router, dependency solving, response validation and thread hand-off were a third of it.
What it does: ``HotRoutes`` is ASGI middleware, innermost of the broker's (inside the rate
limit, the body limit and the access log), that answers ``POST`` on ``/v1/challenge``,
``/v1/attest``, ``/v1/keys/release``, ``/v1/keys/generate`` and ``/v1/keys/release-named``
with an ``application/json`` body that parses and validates: the request model is the
route's own (schemas.py), the service runs on a thread of its own pool (the challenge on
the event loop: microseconds, nothing blocks; a release first tries
``KeyBrokerService.release_on_loop``, which decides a release whose DEK is cached on the
loop and awaits its ledger commit, and falls back to the thread for the rest), and the
reply is the response model's JSON
with fixed headers, or the ``{error, reason}`` body of ``errors.error_body``. Anything else
(another method or path, another content type, a body that does not parse or validate) goes
to the FastAPI application unchanged, so its answers (422 and 400 shapes, 404/405, OpenAPI)
are the framework's, one code path for every refusal.

What it does not: it checks no limits of its own (the middleware around it does) and
changes nothing of what the service decides or records.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keybroker.service.errors import error_body
from keybroker.service.schemas import (
    AttestRequest,
    GenerateRequest,
    ReleaseNamedRequest,
    ReleaseRequest,
)

__all__ = ["HOT_PATHS", "HotRoutes"]

_JSON_HEADER = (b"content-type", b"application/json")


@dataclass(frozen=True)
class _Route:
    model: type[BaseModel] | None  # None: no body (the challenge)
    call: Callable[..., BaseModel]
    blocking: bool
    on_loop: Callable[[Any], Awaitable[BaseModel | None]] | None = None


HOT_PATHS = ("/v1/challenge", "/v1/attest", "/v1/keys/release", "/v1/keys/generate",
             "/v1/keys/release-named")


class HotRoutes:
    """ASGI middleware answering the hot routes straight from the service (see module doc)."""

    def __init__(self, app: ASGIApp, service: Any, threads: int = 40) -> None:
        self._app = app
        self._routes: dict[str, _Route] = {
            "/v1/challenge": _Route(None, lambda _request, _source: service.challenge(), False),
            "/v1/attest": _Route(AttestRequest, _with_source(service.attest), True),
            "/v1/keys/release": _Route(ReleaseRequest, _with_source(service.release), True,
                                       on_loop=service.release_on_loop),
            "/v1/keys/generate": _Route(GenerateRequest, _with_source(service.generate), True),
            "/v1/keys/release-named": _Route(
                ReleaseNamedRequest, _with_source(service.release_named), True),
        }
        self._executor = ThreadPoolExecutor(max_workers=threads,
                                            thread_name_prefix="keybroker-route")
        self._templates: dict[str, object] = {}

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None or scope.get("method") != "POST" or not _json_body(scope):
            await self._app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client went away
        request: BaseModel | None = None
        if route.model is not None:
            try:
                document = json.loads(body)
                if not isinstance(document, dict):
                    raise ValueError("not an object")
                request = route.model.model_validate(document)
            except (ValueError, RecursionError, ValidationError):
                # The framework answers every refusal of a body, in its one way.
                await self._app(scope, _replay(body, receive), send)
                return
        scope["route"] = self._template(scope)  # the access log's and metrics' route label
        client = scope.get("client")
        source = client[0] if client else "unknown"
        try:
            reply = None if route.on_loop is None else await route.on_loop(request)
            if reply is None:
                reply = await self._call(route, request, source)
            status, content = 200, reply.model_dump_json(by_alias=True).encode("utf-8")
        except Exception as error:  # every error the service raises has its status
            status, payload = error_body(error)
            content = json.dumps(payload).encode("utf-8")
        await send({"type": "http.response.start", "status": status,
                    "headers": [_JSON_HEADER,
                                (b"content-length", str(len(content)).encode("ascii"))]})
        await send({"type": "http.response.body", "body": content})

    async def _call(self, route: _Route, request: BaseModel | None, source: str) -> BaseModel:
        if not route.blocking:
            return route.call(request, source)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, route.call, request, source)

    def _template(self, scope: Scope) -> object:
        """The application's route object for the path (found once), for the access log."""
        path = scope["path"]
        found = self._templates.get(path)
        if found is None:
            routes = getattr(scope.get("app"), "routes", ())
            found = next((route for route in routes if getattr(route, "path", None) == path),
                         None)
            if found is not None:
                self._templates[path] = found
        return found


def _with_source(method: Callable[..., BaseModel]) -> Callable[[Any, str], BaseModel]:
    def call(request: Any, source: str) -> BaseModel:
        return method(request, source=source)

    return call


def _json_body(scope: Scope) -> bool:
    """Whether the body is declared JSON, as the framework would read it."""
    for name, value in scope.get("headers") or ():
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
