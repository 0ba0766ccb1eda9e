"""The broker's HTTP client, used by the enclave side: challenge, attest, release, generate.

It speaks the JSON protocol of docs/PROTOCOL.md over httpx, with timeouts, a bound on
response size, and typed errors by status (403 denied, 401 auth, 404 not found, network or
5xx unavailable). Calls that are safe to repeat (challenge, release, release-named,
health) are retried once on a connection error; attest and generate are not (a retry
would burn the nonce or mint a second key). Sealed keys come back as bytes still sealed to
the TEE key: this module never opens them and never sees a key in the clear.

It also fixes the HPKE ``info`` purposes of each route, shared with the service.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from envelope.errors import EnvelopeError
from envelope.keys import KeyReference, WrappedKey

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
    "BrokerRequestError",
    "BrokerSession",
    "BrokerUnavailableError",
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


@dataclass(frozen=True)
class BrokerSession:
    """An attested session: its bearer id, expiry (Unix seconds) and verified claims."""

    id: str = field(repr=False)
    expires_at: float
    simulated: bool
    claims: Mapping[str, Any]


def _b64(data: bytes) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def _session_id(session: BrokerSession | str) -> str:
    return session if isinstance(session, str) else session.id


class BrokerClient:
    """A client for one broker. Thread-safe (one httpx.Client underneath)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self._base_url, timeout=httpx.Timeout(timeout), transport=transport
        )

    @property
    def base_url(self) -> str:
        return self._base_url

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
    ) -> BrokerSession:
        """Present evidence bound to (nonce, TEE key); returns the session it opens."""
        body = self._call(
            "POST",
            "/v1/attest",
            {
                "nonce": _b64(nonce),
                "tee": tee,
                "evidence": _b64(evidence),
                "endorsements": {name: _b64(value) for name, value in endorsements.items()},
                "tee_public_key": _b64(tee_public_key),
            },
            idempotent=False,
        )
        session_id = _field(body, "session_id", str)
        expires_at = _field(body, "expires_at", (int, float))
        simulated = _field(body, "simulated", bool)
        claims = _field(body, "claims", dict)
        return BrokerSession(session_id, float(expires_at), simulated, claims)

    def release(
        self, session: BrokerSession | str, wrapped_key: WrappedKey, region: str, producer_id: str
    ) -> bytes:
        """The DEK behind ``wrapped_key``, HPKE-sealed to the session's TEE key."""
        body = self._call(
            "POST",
            "/v1/keys/release",
            {
                "session_id": _session_id(session),
                "kek_uri": wrapped_key.kek.uri,
                "kek_version": wrapped_key.kek.version,
                "wrapped_dek": _b64(wrapped_key.ciphertext),
                "region": region,
                "producer_id": producer_id,
            },
            idempotent=True,
        )
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
    ) -> tuple[bytes, WrappedKey]:
        """A fresh DEK for ``region``: sealed to the TEE, and wrapped under the region's KEK.

        ``spec_fingerprint`` (32 bytes, or their 64 hex digits) and ``purpose`` say what the
        key is for; the broker records both in its audit ledger. Omitted, the request is
        the one older brokers know.
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
        body = self._call("POST", "/v1/keys/generate", payload, idempotent=False)
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
        body = self._call(
            "POST",
            "/v1/keys/release-named",
            {"session_id": _session_id(session), "name": name},
            idempotent=True,
        )
        return _decode(body, "sealed_key", maximum=MAX_SEALED_KEY_BYTES)

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
                if attempt + 1 == attempts:
                    raise BrokerUnavailableError(
                        f"{method} {path}: broker unreachable ({type(error).__name__})"
                    ) from None
        return _interpret(method, path, status, content)

    def _send(self, method: str, path: str, payload: Mapping[str, Any] | None) -> tuple[int, bytes]:
        with self._http.stream(method, path, json=payload) as response:
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


_ERRORS_BY_STATUS: dict[int, type[BrokerError]] = {
    401: BrokerAuthError,
    403: BrokerDeniedError,
    404: BrokerNotFoundError,
}


def _interpret(method: str, path: str, status: int, content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content) if content else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
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
