"""The broker's HTTP surface: ``create_app(settings)`` builds the FastAPI application.

Routes are thin: parse the body (schemas), call ``KeyBrokerService`` (blocking work, so
the routes are plain ``def`` and FastAPI runs them in its thread pool, off the event
loop), return its model. Errors become ``{"error", "reason"}`` bodies with the status from
``errors.error_status``; request bodies over ``settings.max_request_bytes`` are refused
with 413 before they are read in full. OpenAPI is served at ``/openapi.json``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keybroker.attestation.verifier import Verifier
from keybroker.config import BrokerSettings
from keybroker.kms.base import KeyManagementService
from keybroker.service.errors import HANDLED_ERROR_TYPES, error_body
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
        400: "malformed field",
        401: "bad nonce, session or evidence",
        403: "denied by the release policy",
        404: "unknown key",
        413: "request too large",
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

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="sealbeam key broker",
        version=API_VERSION,
        description="Attestation-gated key release (docs/PROTOCOL.md).",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)
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
    def challenge() -> ChallengeResponse:
        return service.challenge()

    @app.post("/v1/attest", response_model=AttestResponse, responses=_ERROR_RESPONSES)
    def attest(request: AttestRequest) -> AttestResponse:
        return service.attest(request)

    @app.post("/v1/keys/release", response_model=ReleaseResponse, responses=_ERROR_RESPONSES)
    def release(request: ReleaseRequest) -> ReleaseResponse:
        return service.release(request)

    @app.post("/v1/keys/generate", response_model=GenerateResponse, responses=_ERROR_RESPONSES)
    def generate(request: GenerateRequest) -> GenerateResponse:
        return service.generate(request)

    @app.post(
        "/v1/keys/release-named", response_model=ReleaseNamedResponse, responses=_ERROR_RESPONSES
    )
    def release_named(request: ReleaseNamedRequest) -> ReleaseNamedResponse:
        return service.release_named(request)

    return app


async def _broker_error(_request: Request, error: Exception) -> JSONResponse:
    status, body = error_body(error)
    return JSONResponse(status_code=status, content=body)


async def _validation_error(_request: Request, error: Exception) -> JSONResponse:
    """422 naming the fields; never echoes the submitted values."""
    problems = []
    if isinstance(error, RequestValidationError):
        for problem in error.errors()[:8]:
            location = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
            problems.append(f"{location or 'body'}: {problem.get('msg', 'invalid')}")
    reason = "; ".join(problems) or "invalid request"
    return JSONResponse(status_code=422, content={"error": "invalid_request", "reason": reason})


class BodySizeLimit:
    """ASGI middleware: 413 for a body over ``max_bytes`` (declared or streamed).

    Bodies are small JSON documents, so the body is read here (up to the limit) and
    replayed to the application.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self._app = app
        self._max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self._max_bytes):
            await self._refuse(send)
            return
        body = bytearray()
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away; nothing to answer
            body.extend(message.get("body", b""))
            if len(body) > self._max_bytes:
                await self._refuse(send)
                return
            more_body = bool(message.get("more_body", False))
        replayed = False

        async def replay_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self._app(scope, replay_receive, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {"error": "request_too_large", "reason": f"request body over {self._max_bytes} bytes"}
        ).encode("ascii")
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode("ascii")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
