"""``sealbeam worker serve``: a pool worker over HTTP, on the standard library only.

Routes (docs/PROTOCOL.md, "Attested worker pool"):

- ``GET /v1/pool/health``: status, the spec fingerprint and output format it runs, counts.
- ``POST /v1/pool/attest``: ``{"nonce": b64}`` -> fresh evidence binding the nonce and the
  worker's channel key, the channel key, the spec fingerprint and output format.
- ``POST /v1/pool/process``: a sealed request (``wire``), answered with sealed frames.

Why ``http.server`` and not a framework: what runs in the TEE stays small (no FastAPI,
Starlette or Beam in its import closure). Bounded concurrency: at most ``max_inflight``
requests are handled at once; one more is answered ``429`` with ``Retry-After`` at once,
before its body is read, so a busy worker pushes back instead of queueing. Bodies need a
``Content-Length`` no larger than ``max_request_bytes`` (``413`` otherwise) and are read one
frame at a time. Errors are JSON ``{"error", "message"}`` with statuses mapped in one place
(``_status_of``); transient broker failures are ``503`` with ``Retry-After``.

What it does not: no TLS of its own (the channel is sealed end to end by ``channel``; put
TLS in front where the network demands it), no plaintext in any response or log line.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from keybroker.client import BrokerError, BrokerUnavailableError

from .channel import ChannelError
from .wire import WireError, encode_response, read_request
from .worker import PoolMismatchError, PoolRequestError, PoolWorker

__all__ = ["DEFAULT_MAX_INFLIGHT", "DEFAULT_MAX_REQUEST_BYTES", "PoolServer"]

LOG = logging.getLogger(__name__)
DEFAULT_MAX_INFLIGHT = 4
DEFAULT_MAX_REQUEST_BYTES = 256 << 20
MAX_ATTEST_BODY = 4096
RETRY_AFTER_S = 1
MAX_DRAINED_BODY = 1 << 20   # a refused body up to this size is read before the answer


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error = status, error


def _status_of(exc: Exception) -> tuple[HTTPStatus, str]:
    """The one place errors become HTTP statuses."""
    if isinstance(exc, _HttpError):
        return exc.status, exc.error
    if isinstance(exc, (WireError, ChannelError, PoolRequestError)):
        return HTTPStatus.BAD_REQUEST, "bad_request"
    if isinstance(exc, PoolMismatchError):
        return HTTPStatus.CONFLICT, "mismatch"
    if isinstance(exc, BrokerUnavailableError):
        return HTTPStatus.SERVICE_UNAVAILABLE, "broker_unavailable"
    if isinstance(exc, BrokerError):
        return HTTPStatus.SERVICE_UNAVAILABLE, "broker_refused"
    return HTTPStatus.INTERNAL_SERVER_ERROR, "internal"


class _BoundedReader:
    """Reads at most ``limit`` bytes of a request body."""

    def __init__(self, raw: Any, limit: int) -> None:
        self._raw, self._left = raw, limit

    def read(self, count: int) -> bytes:
        count = min(count, self._left)
        if count <= 0:
            return b""
        data = self._raw.read(count)
        self._left -= len(data)
        return data


class PoolServer(ThreadingHTTPServer):
    """The HTTP server of one pool worker; ``url`` once bound; stop with ``shutdown``."""

    daemon_threads = True

    def __init__(self, worker: PoolWorker, host: str = "127.0.0.1", port: int = 0, *,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        if max_inflight < 1 or max_request_bytes < 1:
            raise ValueError("max_inflight and max_request_bytes must be at least 1")
        self.worker = worker
        self.max_request_bytes = max_request_bytes
        self.slots = threading.BoundedSemaphore(max_inflight)
        self.counts_lock = threading.Lock()
        self.counts = {"attested": 0, "batches": 0, "envelopes": 0, "refused_busy": 0}
        super().__init__((host, port), _PoolHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def count(self, name: str, amount: int = 1) -> None:
        with self.counts_lock:
            self.counts[name] += amount


class _PoolHandler(BaseHTTPRequestHandler):
    server: PoolServer
    protocol_version = "HTTP/1.0"
    timeout = 120   # seconds a socket may stay silent (a slow or stalled client is dropped)
    _streaming = False

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("pool %s %s", self.address_string(), format % args)

    # -- replies ----------------------------------------------------------------------------
    def _send_json(self, status: HTTPStatus, document: dict[str, Any],
                   retry_after: bool = False) -> None:
        body = json.dumps(document, sort_keys=True).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if retry_after:
            self.send_header("Retry-After", str(RETRY_AFTER_S))
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, exc: Exception) -> None:
        status, error = _status_of(exc)
        if status == HTTPStatus.INTERNAL_SERVER_ERROR:
            LOG.error("pool request failed: %s", type(exc).__name__)
            message = "internal error"
        else:
            message = str(exc).splitlines()[0] if str(exc) else error
        self._send_json(status, {"error": error, "message": message},
                        retry_after=status in (HTTPStatus.SERVICE_UNAVAILABLE,
                                               HTTPStatus.TOO_MANY_REQUESTS))

    def _body_length(self, maximum: int) -> int:
        header = self.headers.get("Content-Length")
        if header is None or not header.isdigit():
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "length_required",
                             "a Content-Length is required")
        length = int(header)
        if length > maximum:
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large",
                             f"request body of {length} bytes is over {maximum}")
        return length

    # -- routes -----------------------------------------------------------------------------
    def do_GET(self) -> None:
        if self.path != "/v1/pool/health":
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "not_found", "message": self.path})
            return
        worker = self.server.worker
        with self.server.counts_lock:
            counts = dict(self.server.counts)
        self._send_json(HTTPStatus.OK, {"status": "ok", "counts": counts,
                                        "spec_fingerprint": worker.spec_fingerprint,
                                        "output_format": worker.output_format})

    def do_POST(self) -> None:
        routes: dict[str, Callable[[], None]] = {"/v1/pool/attest": self._attest,
                                                 "/v1/pool/process": self._process}
        route = routes.get(self.path)
        if route is None:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "not_found", "message": self.path})
            return
        if not self.server.slots.acquire(blocking=False):
            self.server.count("refused_busy")
            self.close_connection = True
            self._drain_small_body()
            self._send_error(_HttpError(HTTPStatus.TOO_MANY_REQUESTS, "busy",
                                        "pool worker is at its concurrency limit"))
            return
        self._streaming = False
        try:
            route()
        except Exception as exc:
            if self._streaming:   # the status is sent: the client sees a response without END
                LOG.warning("pool response cut: %s", type(exc).__name__)
                self.close_connection = True
            else:
                self._send_error(exc)
        finally:
            self.server.slots.release()

    def _drain_small_body(self) -> None:
        """Read a small unread body, so the client sees the answer rather than a reset."""
        header = self.headers.get("Content-Length", "")
        if header.isdigit() and int(header) <= MAX_DRAINED_BODY:
            self.rfile.read(int(header))

    def _attest(self) -> None:
        body = self.rfile.read(self._body_length(MAX_ATTEST_BODY))
        try:
            nonce = base64.b64decode(json.loads(body)["nonce"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise _HttpError(HTTPStatus.BAD_REQUEST, "bad_request",
                             'attest needs {"nonce": base64}') from None
        answer = self.server.worker.evidence_for(nonce)
        self.server.count("attested")
        encoded = {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v
                   for k, v in answer.items()}
        encoded["endorsements"] = {k: base64.b64encode(v).decode()
                                   for k, v in answer["endorsements"].items()}
        self._send_json(HTTPStatus.OK, encoded)

    def _process(self) -> None:
        length = self._body_length(self.server.max_request_bytes)
        reader = _BoundedReader(self.rfile, length)
        request = read_request(reader.read, self.server.worker.channel)
        result = self.server.worker.process(request)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self._streaming = True
        for frame in encode_response(request.keys, result.outputs, result.dead_letters):
            self.wfile.write(frame)
        self.server.count("batches")
        self.server.count("envelopes", len(request.envelopes))
