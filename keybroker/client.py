"""The broker's HTTP client, used by the enclave side: challenge, attest, release, generate.

It speaks the JSON protocol of docs/PROTOCOL.md over httpx, with timeouts, a bound on
response size, and typed errors by status (403 denied, 401 auth, 404 not found, network or
5xx unavailable). Calls that are safe to repeat (challenge, release, release-named,
health) are retried once on a connection error; attest and generate are not (a retry
would burn the nonce or mint a second key). Sealed keys come back as bytes still sealed to
the TEE key: this module never opens them and never sees a key in the clear.

With the broker's public key pinned (``broker_identity``), every grant is checked before
its key is handed on: the reply must carry the broker's signature over this operation, this
exact request, this reply and this session, signed within ``max_clock_skew`` of now; the
attest reply must also carry a signed attestation result naming the TEE key that was sent.
Anything else raises ``BrokerReplyNotAuthenticError`` (docs/PROTOCOL.md, "Authenticated
grants"), so a man in the middle cannot hand a worker keys of its own choosing. TLS: a CA
bundle, a pinned server certificate and a client certificate are options; plain ``http://``
is refused for any host but loopback unless ``allow_insecure_http``.

It also fixes the HPKE ``info`` purposes of each route, shared with the service.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from envelope.errors import EnvelopeError
from envelope.keys import KeyReference, WrappedKey
from keybroker.attestation.json_bounded import JsonBoundsError, load_bounded_json
from keybroker.checkpoints import Checkpoint, CheckpointError, verify_checkpoint
from keybroker.client_tls import (
    ClientTlsError,
    certificate_fingerprint,
    is_loopback_host,
    is_tls_failure,
    tls_context,
)
from keybroker.destinations import DestinationError, destination_record
from keybroker.grants import (
    DEFAULT_MAX_CLOCK_SKEW_SECONDS,
    GrantError,
    session_handle,
    verify_attest_reply,
    verify_grant,
)
from keybroker.identity import BrokerPublicKey, canonical_json

__all__ = [
    "GENERATE_PURPOSE",
    "NAMED_PURPOSE",
    "RELEASE_PURPOSE",
    "BrokerAuthError",
    "BrokerClient",
    "BrokerDeniedError",
    "BrokerError",
    "BrokerNotFoundError",
    "BrokerProtocolError",
    "BrokerReplyNotAuthenticError",
    "BrokerRequestError",
    "BrokerSession",
    "BrokerTransportSecurityError",
    "BrokerUnavailableError",
    "is_loopback_host",
]

# HPKE info purposes: release_info(<purpose>, key_id or name) for each route's sealed key.
RELEASE_PURPOSE = "release"
GENERATE_PURPOSE = "generate"
NAMED_PURPOSE = "named"

DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_RESPONSE_BYTES = 1 << 20
MAX_SEALED_KEY_BYTES = 8192
SPEC_FINGERPRINT_BYTES = 32
_SPEC_FINGERPRINT_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_KEY_PURPOSE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")


class BrokerError(Exception):
    """Base of the client's errors; ``status`` and ``error`` come from the broker's reply."""

    def __init__(self, reason: str, *, status: int | None = None, error: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.error = error


class BrokerDeniedError(BrokerError):
    """403: the release policy denied the request."""


class BrokerAuthError(BrokerError):
    """401: the nonce, session or evidence was not accepted (re-attest)."""


class BrokerNotFoundError(BrokerError):
    """404: the broker does not know the key or KEK."""


class BrokerUnavailableError(BrokerError):
    """The broker could not be reached, or answered 5xx: try again later."""


class BrokerProtocolError(BrokerError):
    """The broker's reply did not have the documented shape."""


class BrokerRequestError(BrokerError):
    """A request could not be built: an argument is malformed (nothing was sent)."""


class BrokerReplyNotAuthenticError(BrokerError):
    """A reply is not the pinned broker's grant for this request and session: refuse it.

    Not a subclass of ``BrokerAuthError``: re-attesting would not help against a man in
    the middle, and a key from such a reply must never be used.
    """


class BrokerTransportSecurityError(BrokerRequestError):
    """The URL or TLS settings are not acceptable (e.g. plain http:// to a remote host)."""


@dataclass(frozen=True)
class BrokerSession:
    """An attested session: its bearer id, expiry (Unix seconds) and verified claims.

    ``attestation_result`` is the broker's signed attestation result (a DSSE envelope),
    checked against the pinned key when the client has one; provenance statements embed it.
    """

    id: str = field(repr=False)
    expires_at: float
    simulated: bool
    claims: Mapping[str, Any]
    attestation_result: Mapping[str, Any] | None = field(default=None, repr=False)


def _b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def _session_id(session: BrokerSession | str) -> str:
    return session if isinstance(session, str) else session.id


@functools.cache
def _default_verify_context() -> ssl.SSLContext:
    """httpx's default context (its CA bundle, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` as set
    when first asked), built once per process and shared: httpx builds it for every client,
    even for an ``http://`` URL, and loading the bundle costs tens of milliseconds a client
    (a worker's key session, each run's ledger-head fetch)."""
    return httpx.create_ssl_context()


class BrokerClient:
    """A client for one broker. Thread-safe (one httpx.Client underneath).

    ``broker_identity`` is the broker's pinned public key: with it every grant is verified
    (workers must pass it; without it replies are taken on trust, which only diagnostics
    such as ``health`` should do). ``ca_bundle`` / ``pinned_certificate`` (a PEM path or its
    bytes) and ``client_certificate`` configure TLS for ``https://`` URLs.
    """

    def __init__(
        self,
        base_url: str,
        *,
        broker_identity: BrokerPublicKey | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
        ca_bundle: Path | bytes | None = None,
        pinned_certificate: Path | bytes | None = None,
        client_certificate: tuple[Path, Path] | None = None,
        allow_insecure_http: bool = False,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        parts = urlsplit(self._base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BrokerTransportSecurityError("broker URL: expected http(s)://host[:port]")
        if parts.scheme == "http" and not allow_insecure_http and not is_loopback_host(
            parts.hostname
        ):
            raise BrokerTransportSecurityError(
                f"broker URL: plain http:// to {parts.hostname} is refused (session ids are "
                "bearer tokens); use https:// or pass allow_insecure_http"
            )
        if broker_identity is not None and not isinstance(broker_identity, BrokerPublicKey):
            raise BrokerRequestError("broker_identity: expected a BrokerPublicKey")
        self._identity = broker_identity
        self._max_clock_skew = float(max_clock_skew)
        self._clock = clock
        verify: ssl.SSLContext | None = None
        try:
            self._pinned_fingerprint = (
                certificate_fingerprint(pinned_certificate)
                if pinned_certificate is not None
                else None
            )
            if parts.scheme == "https":
                verify = tls_context(
                    ca_bundle=ca_bundle,
                    pinned_certificate=pinned_certificate,
                    client_certificate=client_certificate,
                )
        except ClientTlsError as error:
            raise BrokerTransportSecurityError(str(error)) from None
        self._http = httpx.Client(
            base_url=self._base_url,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            verify=(verify if verify is not None
                    else True if transport is not None else _default_verify_context()),
        )

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def broker_identity(self) -> BrokerPublicKey | None:
        """The pinned broker key, or None when replies are not authenticated."""
        return self._identity

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the protocol ------------------------------------------------------------------------

    def health(self) -> Mapping[str, Any]:
        return self._call("GET", "/v1/health", None, idempotent=True)

    def challenge(self) -> bytes:
        """A fresh single-use nonce (32 bytes) to bind into the evidence's report_data."""
        body = self._call("POST", "/v1/challenge", None, idempotent=True)
        return _decode(body, "nonce", maximum=64)

    def attest(
        self,
        nonce: bytes,
        tee: str,
        evidence: bytes,
        endorsements: Mapping[str, bytes],
        tee_public_key: bytes,
        bound_keys: Mapping[str, bytes] | None = None,
    ) -> BrokerSession:
        """Present evidence bound to (nonce, TEE key[, bound keys]); returns the session.

        ``bound_keys`` are further public keys the evidence binds (``report_data_binding``'s
        ``bound_keys``, e.g. ``{"provenance": Ed25519 key}``); the broker lists them in its
        signed attestation result, and the pinned client checks they are there.
        """
        request: dict[str, Any] = {
            "nonce": _b64(nonce),
            "tee": tee,
            "evidence": _b64(evidence),
            "endorsements": {name: _b64(value) for name, value in endorsements.items()},
            "tee_public_key": _b64(tee_public_key),
        }
        if bound_keys:
            request["bound_keys"] = {label: _b64(key) for label, key in bound_keys.items()}
        body = self._call("POST", "/v1/attest", request, idempotent=False)
        session_id = _field(body, "session_id", str)
        expires_at = _field(body, "expires_at", (int, float))
        simulated = _field(body, "simulated", bool)
        claims = _field(body, "claims", dict)
        result = body.get("attestation_result")
        if self._identity is not None:
            try:
                handle = session_handle(session_id)
            except UnicodeEncodeError:
                raise BrokerProtocolError("attest: session id is not ASCII") from None
            self._verify("attest", request, body, handle)
            self._check_attestation_result(result, handle, bytes(tee_public_key), nonce, body,
                                           bound_keys or {})
        return BrokerSession(
            session_id,
            float(expires_at),
            simulated,
            claims,
            attestation_result=result if isinstance(result, dict) else None,
        )

    def release(
        self, session: BrokerSession | str, wrapped_key: WrappedKey, region: str, producer_id: str
    ) -> bytes:
        """The DEK behind ``wrapped_key``, HPKE-sealed to the session's TEE key."""
        request = {
            "session_id": _session_id(session),
            "kek_uri": wrapped_key.kek.uri,
            "kek_version": wrapped_key.kek.version,
            "wrapped_dek": _b64(wrapped_key.ciphertext),
            "region": region,
            "producer_id": producer_id,
        }
        body = self._call("POST", "/v1/keys/release", request, idempotent=True)
        self._verify_session_grant("release", request, body)
        key_id = _field(body, "key_id", str)
        if key_id != wrapped_key.key_id:
            raise BrokerProtocolError("the broker released a key for another key_id")
        return _decode(body, "sealed_dek", maximum=MAX_SEALED_KEY_BYTES)

    def generate(
        self,
        session: BrokerSession | str,
        region: str,
        producer_id: str,
        *,
        spec_fingerprint: bytes | str | None = None,
        purpose: str | None = None,
        destination: Mapping[str, object] | None = None,
    ) -> tuple[bytes, WrappedKey]:
        """A fresh DEK for ``region``: sealed to the TEE, and wrapped under the region's KEK.

        ``spec_fingerprint`` (32 bytes, or their 64 hex digits) and ``purpose`` say what the
        key is for; ``destination`` (``sink``, ``location``, ``verified``: the region's sink
        and where preflight found it) where its outputs go. The broker records them in its
        audit ledger. Omitted, the request is the one older brokers know.
        """
        payload: dict[str, Any] = {
            "session_id": _session_id(session),
            "region": region,
            "producer_id": producer_id,
        }
        if spec_fingerprint is not None:
            payload["spec_fingerprint"] = _spec_fingerprint_hex(spec_fingerprint)
        if purpose is not None:
            if not isinstance(purpose, str) or not _KEY_PURPOSE.match(purpose):
                raise BrokerRequestError(
                    "purpose: expected 1-64 characters of letters, digits and ._:/- "
                    "starting with a letter or digit"
                )
            payload["purpose"] = purpose
        if destination is not None:
            try:
                payload["destination"] = destination_record(
                    destination.get("sink"), destination.get("location"),
                    destination.get("verified"))
            except DestinationError as error:
                raise BrokerRequestError(str(error)) from None
        body = self._call("POST", "/v1/keys/generate", payload, idempotent=False)
        self._verify_session_grant("generate", payload, body)
        sealed = _decode(body, "sealed_dek", maximum=MAX_SEALED_KEY_BYTES)
        try:
            wrapped = WrappedKey(
                KeyReference(_field(body, "kek_uri", str), _field(body, "kek_version", str)),
                _decode(body, "wrapped_dek", maximum=MAX_SEALED_KEY_BYTES),
            )
        except EnvelopeError as error:
            raise BrokerProtocolError(f"generate: bad wrapped key ({error})") from None
        if _field(body, "key_id", str) != wrapped.key_id:
            raise BrokerProtocolError("generate: key_id does not match the wrapped key")
        return sealed, wrapped

    def release_named(self, session: BrokerSession | str, name: str) -> bytes:
        """The named key ``name`` (e.g. ``pseudonym/acme``), HPKE-sealed to the TEE key."""
        request = {"session_id": _session_id(session), "name": name}
        body = self._call("POST", "/v1/keys/release-named", request, idempotent=True)
        self._verify_session_grant("release-named", request, body)
        if _field(body, "name", str) != name:
            raise BrokerProtocolError("release-named: the broker released another name")
        return _decode(body, "sealed_key", maximum=MAX_SEALED_KEY_BYTES)

    def ledger_head(self) -> Checkpoint:
        """The broker's signed checkpoint of its ledger head, verified with the pinned key.

        The run summary and output manifests carry it, so ``sealbeam audit verify --anchor``
        can later catch a truncated or rewritten ledger.
        """
        if self._identity is None:
            raise BrokerRequestError("ledger_head: needs the pinned broker identity")
        body = self._call("GET", "/v1/ledger/head", None, idempotent=True)
        try:
            return verify_checkpoint(self._identity, body)
        except CheckpointError as error:
            raise BrokerReplyNotAuthenticError(f"ledger head: {error}") from None

    # -- authentication ----------------------------------------------------------------------

    def _verify(
        self, operation: str, request: Mapping[str, Any], body: Mapping[str, Any], handle: str
    ) -> None:
        assert self._identity is not None
        try:
            verify_grant(
                self._identity,
                operation,
                request,
                body,
                handle,
                self._clock(),
                self._max_clock_skew,
            )
        except GrantError as error:
            raise BrokerReplyNotAuthenticError(str(error)) from None

    def _verify_session_grant(
        self, operation: str, request: Mapping[str, Any], body: Mapping[str, Any]
    ) -> None:
        if self._identity is None:
            return
        self._verify(operation, request, body, session_handle(str(request["session_id"])))

    def _check_attestation_result(
        self,
        envelope: object,
        handle: str,
        tee_public_key: bytes,
        nonce: bytes,
        body: Mapping[str, Any],
        bound_keys: Mapping[str, bytes],
    ) -> None:
        assert self._identity is not None
        try:
            verify_attest_reply(
                self._identity,
                envelope,
                session=handle,
                tee_public_key=tee_public_key,
                nonce=nonce,
                claims=body["claims"],
                simulated=body["simulated"],
                bound_keys=bound_keys,
            )
        except GrantError as error:
            raise BrokerReplyNotAuthenticError(str(error)) from None

    # -- transport ---------------------------------------------------------------------------

    def _call(
        self, method: str, path: str, payload: Mapping[str, Any] | None, *, idempotent: bool
    ) -> dict[str, Any]:
        attempts = 2 if idempotent else 1
        for attempt in range(attempts):
            try:
                status, content = self._send(method, path, payload)
                break
            except httpx.TransportError as error:
                if is_tls_failure(error):
                    raise BrokerTransportSecurityError(
                        f"{method} {path}: TLS handshake with the broker failed "
                        "(certificate not trusted, not the pinned one, or a client "
                        "certificate is required)"
                    ) from None
                if attempt + 1 == attempts:
                    raise BrokerUnavailableError(
                        f"{method} {path}: broker unreachable ({type(error).__name__})"
                    ) from None
        return _interpret(method, path, status, content)

    def _send(self, method: str, path: str, payload: Mapping[str, Any] | None) -> tuple[int, bytes]:
        content = canonical_json(dict(payload)) if payload is not None else None
        headers = {"content-type": "application/json"} if content is not None else None
        with self._http.stream(method, path, content=content, headers=headers) as response:
            self._check_pinned_certificate(response)
            chunks = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise BrokerProtocolError(
                        f"{method} {path}: response over {MAX_RESPONSE_BYTES} bytes"
                    )
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)


    def _check_pinned_certificate(self, response: httpx.Response) -> None:
        if self._pinned_fingerprint is None:
            return
        stream = response.extensions.get("network_stream")
        ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
        peer = ssl_object.getpeercert(True) if ssl_object is not None else None
        if peer is None or not hmac.compare_digest(
            hashlib.sha256(peer).digest(), self._pinned_fingerprint
        ):
            raise BrokerTransportSecurityError("the broker's TLS certificate is not the pinned one")


_ERRORS_BY_STATUS: dict[int, type[BrokerError]] = {
    401: BrokerAuthError,
    403: BrokerDeniedError,
    404: BrokerNotFoundError,
}


def _interpret(method: str, path: str, status: int, content: bytes) -> dict[str, Any]:
    try:
        # Replies are untrusted until their grant verifies: bounded in size and depth.
        body = load_bounded_json(content, what=f"{method} {path} reply",
                                 max_bytes=MAX_RESPONSE_BYTES) if content else {}
    except (UnicodeDecodeError, JsonBoundsError):
        body = None
    if 200 <= status < 300:
        if not isinstance(body, dict):
            raise BrokerProtocolError(f"{method} {path}: reply is not a JSON object")
        return body
    error = body.get("error") if isinstance(body, dict) else None
    reason = body.get("reason") if isinstance(body, dict) else None
    text = f"{method} {path}: {status} {reason if isinstance(reason, str) else 'no reason given'}"
    error_code = error if isinstance(error, str) else None
    if status >= 500:
        raise BrokerUnavailableError(text, status=status, error=error_code)
    raise _ERRORS_BY_STATUS.get(status, BrokerError)(text, status=status, error=error_code)


def _spec_fingerprint_hex(value: bytes | str) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if len(raw) != SPEC_FINGERPRINT_BYTES:
            raise BrokerRequestError(
                f"spec_fingerprint: expected {SPEC_FINGERPRINT_BYTES} bytes, got {len(raw)}"
            )
        return raw.hex()
    if isinstance(value, str) and _SPEC_FINGERPRINT_HEX.match(value):
        return value.lower()
    raise BrokerRequestError(
        f"spec_fingerprint: expected {SPEC_FINGERPRINT_BYTES} bytes or "
        f"{2 * SPEC_FINGERPRINT_BYTES} hex digits"
    )


def _field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise BrokerProtocolError(f"reply field {name!r} missing or of the wrong type")
    return value


def _decode(body: Mapping[str, Any], name: str, *, maximum: int) -> bytes:
    value = _field(body, name, str)
    if len(value) > 4 * ((maximum + 2) // 3):
        raise BrokerProtocolError(f"reply field {name!r} over {maximum} bytes")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise BrokerProtocolError(f"reply field {name!r} is not valid base64") from None
