"""The broker's HTTP surface: ``create_app(settings)`` builds the FastAPI application.

Routes are thin: parse the body (schemas), call ``KeyBrokerService`` (blocking work, so
the routes are plain ``def`` and FastAPI runs them in its thread pool, off the event
loop), return its model. The hot routes' well-formed requests are answered by
``hot_routes.HotRoutes`` from the same models and service without FastAPI's router (the
OpenAPI document still describes them: the routes below stay declared). Errors become
``{"error", "reason"}`` bodies with the status from ``errors.error_status``; request
bodies over ``settings.max_request_bytes`` are refused with 413 before they are read in
full, and bodies slower than the body timeout with 408. FastAPI's own errors (validation,
unknown path, wrong method) use the same shape, never ``{"detail": ...}``; a field over
its length bound is 400 ``bad_request``, as the bounds the service checks itself are,
other invalid bodies 422. The unauthenticated routes are rate limited per client address
(rate_limit.py). OpenAPI is served at ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keybroker.attestation.verifier import Verifier
from keybroker.config import BrokerSettings
from keybroker.kms.base import KeyManagementService
from keybroker.service.errors import HANDLED_ERROR_TYPES, error_body, http_error_body
from keybroker.service.hot_routes import HotRoutes
from keybroker.service.observability import ObservedRequests, install_observability
from keybroker.service.rate_limit import RateLimiter, RateLimitMiddleware
from keybroker.service.schemas import (
    AttestRequest,
    AttestResponse,
    ChallengeResponse,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    ReleaseNamedRequest,
    ReleaseNamedResponse,
    ReleaseRequest,
    ReleaseResponse,
    SignedEnvelope,
)
from keybroker.service.service import KeyBrokerService

__all__ = ["API_VERSION", "create_app"]

API_VERSION = "1"
_ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "malformed field, or a field over its length bound",
        401: "bad nonce, session or evidence",
        403: "denied by the release policy",
        404: "unknown key",
        408: "request body too slow",
        413: "request too large",
        422: "invalid request body (missing or unknown field, wrong type or form)",
        429: "rate limited (Retry-After says when to come back)",
        503: "KMS, ledger or endorsement temporarily unavailable",
    }.items()
}


def create_app(
    settings: BrokerSettings,
    *,
    clock: Callable[[], float] = time.time,
    verifiers: Mapping[str, Verifier] | None = None,
    kms_backends: Mapping[str, KeyManagementService] | None = None,
) -> FastAPI:
    """The broker application; loads policy, keys and ledger now, so bad settings fail here.

    ``kms_backends`` injects KMS backend instances by scheme (tests); otherwise each
    configured backend is opened on first use.
    """
    service = KeyBrokerService.from_settings(
        settings, clock=clock, verifiers=verifiers, kms_backends=kms_backends
    )

    hot_routes: list[HotRoutes] = []

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for layer in hot_routes:
                layer.close()
            service.close()

    app = BrokerApp(
        title="sealbeam key broker",
        version=API_VERSION,
        description="Attestation-gated key release (docs/PROTOCOL.md).",
        lifespan=lifespan,
    )
    app.state.service = service
    limits = settings.limits
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for error_type in HANDLED_ERROR_TYPES:
        app.add_exception_handler(error_type, _broker_error)
    app.add_exception_handler(Exception, _broker_error)  # unknown: 500, fixed reason

    @app.get("/v1/health", response_model=HealthResponse)
    def health() -> HealthResponse:
        return service.health()

    @app.get("/v1/ledger/head", response_model=SignedEnvelope)
    def ledger_head() -> dict[str, object]:
        """The ledger head as a checkpoint signed by the broker's identity key."""
        return service.ledger_head()

    @app.post("/v1/challenge", response_model=ChallengeResponse, responses=_ERROR_RESPONSES)
    async def challenge() -> ChallengeResponse:
        # Stateless and microseconds of work: answered on the event loop, no worker thread.
        return service.challenge()

    @app.post("/v1/attest", response_model=AttestResponse, responses=_ERROR_RESPONSES)
    def attest(request: AttestRequest, http: Request) -> AttestResponse:
        return service.attest(request, source=_source(http))

    @app.post("/v1/keys/release", response_model=ReleaseResponse, responses=_ERROR_RESPONSES)
    def release(request: ReleaseRequest, http: Request) -> ReleaseResponse:
        return service.release(request, source=_source(http))

    @app.post("/v1/keys/generate", response_model=GenerateResponse, responses=_ERROR_RESPONSES)
    def generate(request: GenerateRequest, http: Request) -> GenerateResponse:
        return service.generate(request, source=_source(http))

    @app.post(
        "/v1/keys/release-named", response_model=ReleaseNamedResponse, responses=_ERROR_RESPONSES
    )
    def release_named(request: ReleaseNamedRequest, http: Request) -> ReleaseNamedResponse:
        return service.release_named(request, source=_source(http))

    metrics = install_observability(app, service)  # /metrics, packaged /docs
    hot_routes.append(HotRoutes(app.framework, service))
    app.front = ObservedRequests(  # outermost: every request is logged and timed
        RateLimitMiddleware(  # refuse before reading a body
            BodySizeLimit(
                hot_routes[0],  # innermost: inside the limits and the access log
                max_bytes=settings.max_request_bytes,
                timeout_seconds=limits.body_timeout_seconds,
            ),
            limiter=RateLimiter(limits.rate_per_second, limits.rate_burst,
                                limits.rate_max_clients),
        ),
        metrics,
    )
    return app


class BrokerApp(FastAPI):
    """The FastAPI application with the broker's own layers in front of it.

    Why: as FastAPI middleware, the access log, rate limit, body limit and hot routes ran
    inside five of the framework's layers (error, telemetry and body-limit middleware,
    Starlette's app), a sixth of a release's CPU. In front of it, a hot route's request
    passes through ours only; anything the hot routes do not answer reaches the framework
    (``framework``) with the same limits already applied, as before. ``front`` is the chain,
    set by ``create_app``; lifespan and other non-HTTP scopes go to the framework directly.
    """

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self  # what the layers read the routes from, as Starlette sets it
        await self.front(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The FastAPI application itself, behind the broker's layers."""
        await super().__call__(scope, receive, send)


def _source(http: Request) -> str:
    """The caller's address as the server saw it (for the ledger; no proxy headers trusted)."""
    return http.client.host if http.client is not None else "unknown"


async def _http_error(_request: Request, error: Exception) -> JSONResponse:
    """Starlette's own errors (404 unknown path, 405 wrong method) in the broker's shape."""
    status, body, headers = http_error_body(error)
    return JSONResponse(status_code=status, content=body, headers=headers)


async def _broker_error(_request: Request, error: Exception) -> JSONResponse:
    status, body = error_body(error)
    return JSONResponse(status_code=status, content=body)


_TOO_LONG = frozenset({"string_too_long", "too_long", "bytes_too_long"})


async def _validation_error(_request: Request, error: Exception) -> JSONResponse:
    """400 for a field over its length bound, 422 for any other invalid body; the reason
    names the fields and never echoes the submitted values."""
    problems = []
    status = 422
    code = "invalid_request"
    if isinstance(error, RequestValidationError):
        errors = error.errors()
        if any(problem.get("type") in _TOO_LONG for problem in errors):
            status, code = 400, "bad_request"  # like every other bound the service checks
            errors = [problem for problem in errors if problem.get("type") in _TOO_LONG]
        for problem in errors[:8]:
            location = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
            problems.append(f"{location or 'body'}: {problem.get('msg', 'invalid')}")
    reason = "; ".join(problems) or "invalid request"
    return JSONResponse(status_code=status, content={"error": code, "reason": reason})


class BodySizeLimit:
    """ASGI middleware: 413 for a body over ``max_bytes`` (declared or streamed), 408 for a
    body not complete within ``timeout_seconds`` of the headers.

    Bodies are small JSON documents, so the body is read here (up to the limit) and
    replayed to the application.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_seconds: float = 30.0) -> None:
        self._app = app
        self._max_bytes = max_bytes
        self._timeout = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self._max_bytes):
            await self._refuse(send)
            return
        body = bytearray()
        # One deadline for the whole body (asyncio.timeout: no task per receive, as
        # asyncio.wait_for would create).
        try:
            async with asyncio.timeout(self._timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client went away; nothing to answer
                    body.extend(message.get("body", b""))
                    if len(body) > self._max_bytes:
                        await self._refuse(send)
                        return
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await _send_error(
                send, 408, "request_timeout", f"request body not received in {self._timeout} s"
            )
            return
        replayed = False

        async def replay_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self._app(scope, replay_receive, send)

    async def _refuse(self, send: Send) -> None:
        await _send_error(
            send, 413, "request_too_large", f"request body over {self._max_bytes} bytes"
        )


async def _send_error(send: Send, status: int, error: str, reason: str) -> None:
    """A ``{error, reason}`` response written straight to ASGI (from middleware)."""
    body = json.dumps({"error": error, "reason": reason}).encode("ascii")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
