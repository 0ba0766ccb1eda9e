"""One pool endpoint as a Beam worker sees it: attest it, then send it sealed batches.

What it does: ``PoolEndpoint.process`` first makes sure the endpoint is an attested pool
worker (``pool_trust``: a fresh nonce per handshake, evidence verified here, the verdict
cached for ``handshake_ttl_s``), and only then seals a request to the channel key that the
evidence binds and streams it (``enclave_workers.pool.wire``: one frame per envelope, sealed
lazily as the socket takes them). The response is read frame by frame and every frame must
open under the request's response key: a reply not written by that attested worker is
refused. The request carries the batch id and window label, so the worker names each output
as the in-process step would and signs its custody statement in its TEE; an output that
comes back under another name, or without a statement, is refused. It may carry the batch's
destination (its region's sink and where preflight found it), which the worker sends with
each output key's ``generate`` to the broker's ledger.
Typed errors say what to do next: ``PoolBusyError`` (429, with its Retry-After),
``PoolUnavailableError`` (connection, timeout, 5xx, a cut or forged response: try another
endpoint), ``PoolAttestationError`` (never send this endpoint data), ``PoolRejectedError``
(the endpoint runs another spec or output format).

What it does not: choose endpoints or retry (``remote``); it never holds a data key and
never sees plaintext: what it sends and receives is sealed.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

from enclave_workers.output_names import output_name_id
from enclave_workers.pool.channel import seal_request_secret
from enclave_workers.pool.wire import PoolResponse, WireError, encode_request, read_response

from .errors import TransformError
from .pool_trust import PoolAttestationError, PoolVerifier, VerifiedPool

__all__ = ["PoolBusyError", "PoolEndpoint", "PoolError", "PoolRejectedError",
           "PoolUnavailableError"]

NONCE_BYTES = 32
MAX_ATTEST_ANSWER = 256 << 10


class PoolError(TransformError):
    """Base of the remote mode's endpoint errors."""


class PoolUnavailableError(PoolError):
    """The endpoint did not answer, answered 5xx, or its response was cut or not its own."""


class PoolBusyError(PoolUnavailableError):
    """The endpoint is at its concurrency limit (429); ``retry_after_s`` is its hint."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PoolRejectedError(PoolError):
    """The endpoint runs another feature spec or output format than this pipeline."""


def _retry_after(response: http.client.HTTPResponse) -> float:
    try:
        return max(0.0, float(response.getheader("Retry-After") or 1))
    except ValueError:
        return 1.0


class PoolEndpoint:
    """An attested pool worker at ``url`` (``http://host:port``); thread-safe."""

    def __init__(self, url: str, verifier: PoolVerifier, *, spec_fingerprint: str,
                 output_format: str, timeout_s: float = 120.0, handshake_ttl_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise PoolError(f"pool endpoint {url!r} is not http://host:port")
        self.url = url
        self._host, self._port = parts.hostname, parts.port or 80
        self._verifier = verifier
        self._fingerprint = spec_fingerprint
        self._output_format = output_format
        self._timeout_s = timeout_s
        self._ttl_s = handshake_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._verified: tuple[VerifiedPool, float] | None = None
        self.bytes_sent = 0
        self.bytes_received = 0

    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)

    def forget(self) -> None:
        """Drop the cached verdict: the next request attests the endpoint again."""
        with self._lock:
            self._verified = None

    # -- attestation ------------------------------------------------------------------------
    def attest(self) -> VerifiedPool:
        """The endpoint's verified attestation (cached for ``handshake_ttl_s``)."""
        with self._lock:
            if self._verified is not None and self._clock() < self._verified[1]:
                return self._verified[0]
        nonce = os.urandom(NONCE_BYTES)
        body = json.dumps({"nonce": base64.b64encode(nonce).decode()}).encode()
        connection = self._connection()
        try:
            connection.request("POST", "/v1/pool/attest", body=body,
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            answer_bytes = response.read(MAX_ATTEST_ANSWER + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise PoolUnavailableError(f"{self.url}: attest failed: {type(exc).__name__}"
                                       ) from None
        finally:
            connection.close()
        self._count(len(body), len(answer_bytes))
        if response.status == 429:
            raise PoolBusyError(f"{self.url} is busy", _retry_after(response))
        if response.status != 200 or len(answer_bytes) > MAX_ATTEST_ANSWER:
            raise PoolUnavailableError(f"{self.url}: attest answered {response.status}")
        try:
            answer = json.loads(answer_bytes)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise PoolAttestationError(f"{self.url}: attestation answer is not JSON") from None
        if not isinstance(answer, dict):
            raise PoolAttestationError(f"{self.url}: attestation answer is not an object")
        verified = self._verifier.verify(answer, nonce)
        if (verified.spec_fingerprint, verified.output_format) != (self._fingerprint,
                                                                   self._output_format):
            raise PoolRejectedError(f"{self.url} runs spec {verified.spec_fingerprint[:16]}... "
                                    f"/ {verified.output_format}, not this pipeline's")
        with self._lock:
            self._verified = (verified, self._clock() + self._ttl_s)
        return verified

    def _count(self, sent: int, received: int) -> None:
        with self._lock:
            self.bytes_sent += sent
            self.bytes_received += received

    # -- processing -------------------------------------------------------------------------
    def process(self, envelopes: Sequence[bytes], *, batch_id: bytes,
                window: str = "", destination: Mapping[str, object] | None = None,
                routes: Sequence[tuple[str, str, str]] | None = None) -> PoolResponse:
        """Sealed envelopes in, sealed outputs (named by ``batch_id`` and ``window``, each
        with its custody statement) and dead letters out (attests first). ``destination``
        (region, sink, location, verified) travels with the batch: the worker checks it
        against the batch and sends it with each output key's ``generate``. ``routes``
        (per envelope: data-key id, region, producer, as the Beam side routed it) travel
        too: the worker dead-letters an envelope whose header says otherwise."""
        verified = self.attest()
        sealed_secret, keys = seal_request_secret(verified.channel_public_key)
        try:
            length, chunks = encode_request(
                sealed_secret, keys, spec_fingerprint=self._fingerprint,
                output_format=self._output_format, envelopes=envelopes, batch_id=batch_id,
                window=window, destination=destination, routes=routes)
        except WireError as exc:
            raise PoolError(f"cannot send this batch: {exc}") from None
        connection = self._connection()
        counted = _CountingReader()
        try:
            # A worker may answer (429, 413) before it has read the body: read that answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                connection.request("POST", "/v1/pool/process", body=chunks, headers={
                    "Content-Type": "application/octet-stream", "Content-Length": str(length)})
            response = connection.getresponse()
            if response.status != 200:
                detail = response.read(4096)
                self._count(length, len(detail))
                self._raise_for(response, detail)
            counted.source = response.read
            try:
                return _named_and_signed(read_response(counted.read, keys), batch_id)
            except WireError as exc:
                self.forget()
                raise PoolUnavailableError(f"{self.url}: bad response: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise PoolUnavailableError(f"{self.url}: {type(exc).__name__}") from None
        finally:
            connection.close()
            if counted.source is not None:
                self._count(length, counted.total)

    def _raise_for(self, response: http.client.HTTPResponse, detail: bytes) -> None:
        try:
            message = str(json.loads(detail).get("message", ""))
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            message = ""
        if response.status == 429:
            raise PoolBusyError(f"{self.url} is busy", _retry_after(response))
        if response.status == 409:
            raise PoolRejectedError(f"{self.url}: {message}")
        if response.status == 400:
            self.forget()   # e.g. a restarted worker with a new channel key
        raise PoolUnavailableError(f"{self.url}: process answered {response.status} {message}")


def _named_and_signed(response: PoolResponse, batch_id: bytes) -> PoolResponse:
    """``response`` if every output is named by ``batch_id`` and has its statement."""
    for output in response.outputs:
        if output.output_id != output_name_id(batch_id, output):
            raise WireError("an output is not named by its batch")
        if not output.statement:
            raise WireError("an output has no custody statement")
    return response


class _CountingReader:
    def __init__(self) -> None:
        self.source: Callable[[int], bytes] | None = None
        self.total = 0

    def read(self, count: int) -> bytes:
        assert self.source is not None
        data = self.source(count)
        self.total += len(data)
        return data
