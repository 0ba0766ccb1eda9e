"""JWKS key sets for attestation tokens (MAA, Confidential Space).

What it does: `JwksCache` fetches an issuer's signing keys — from a JWKS URL, or through
its OpenID discovery document (``jwks_uri``, with the document's ``issuer`` checked) — with
an injected getter (URL -> bytes), keeps them in memory and optionally in a cache file for
``ttl_seconds``, and on an unknown ``kid`` refetches once, at most every
``min_refresh_seconds`` (so a flood of bogus kids cannot hammer the issuer). Keys are RSA,
from ``n``/``e`` or the first ``x5c`` certificate (both must agree when both are present).
`verify_rs256_token` (in `jwt_tokens`, re-exported here) checks tokens against these keys.

What it does not: map token claims to `Claims` (see `maa`, `confidential_space`), or
validate ``x5c`` chains: trust comes from fetching the issuer's keys over HTTPS.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from keybroker.attestation.errors import EndorsementUnavailableError, EvidenceVerificationError
from keybroker.attestation.jose_encoding import (
    B64URL,
    MAX_DOCUMENT_SIZE,
    MAX_JSON_DEPTH,
    load_json_object,
)
from keybroker.attestation.json_bounded import load_bounded_object
from keybroker.attestation.jwt_tokens import (
    DEFAULT_LEEWAY_SECONDS,
    MAX_KID_LENGTH,
    MAX_TOKEN_SIZE,
    verify_rs256_token,
)
from keybroker.client_tls import is_loopback_host

__all__ = [
    "DEFAULT_LEEWAY_SECONDS",
    "MAX_DOCUMENT_SIZE",
    "MAX_TOKEN_SIZE",
    "Getter",
    "JwksCache",
    "JwksUnavailableError",
    "http_getter",
    "load_json_object",
    "parse_jwks",
    "verify_rs256_token",
]

Getter = Callable[[str], bytes]

MAX_KEYS = 64
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192


class JwksUnavailableError(EndorsementUnavailableError):
    """The issuer's keys could not be fetched or its key document is unusable."""


# --- fetching -------------------------------------------------------------------------
def http_getter(*, timeout_seconds: float = 10.0, max_bytes: int = MAX_DOCUMENT_SIZE,
                allow_loopback_http: bool = False) -> Getter:
    """A getter over httpx: HTTPS only (plain HTTP only to loopback, when allowed), no
    redirects, at most ``max_bytes``; every failure is a `JwksUnavailableError`."""
    import httpx  # the broker's HTTP client; imported here so parsing needs no network stack

    def get(url: str) -> bytes:
        parts = urlsplit(url)
        if parts.scheme != "https" and not (
                allow_loopback_http and parts.scheme == "http"
                and parts.hostname is not None and is_loopback_host(parts.hostname)):
            raise JwksUnavailableError(f"refusing to fetch {url!r}: not an https URL")
        try:
            with httpx.Client(timeout=timeout_seconds, follow_redirects=False) as client, \
                    client.stream("GET", url, headers={"Accept": "application/json"}) as reply:
                if reply.status_code != 200:
                    raise JwksUnavailableError(f"GET {url} answered HTTP {reply.status_code}")
                body = bytearray()
                for chunk in reply.iter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise JwksUnavailableError(f"GET {url}: answer over {max_bytes} bytes")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise JwksUnavailableError(f"GET {url} failed: {type(exc).__name__}") from None

    return get


def _b64url_int(value: object, what: str) -> int:
    if not isinstance(value, str) or not value or len(value) > 2048 or not B64URL.match(value):
        raise JwksUnavailableError(f"{what} is not a base64url string")
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def _checked_rsa(key: object, what: str) -> rsa.RSAPublicKey:
    if not isinstance(key, rsa.RSAPublicKey):
        raise JwksUnavailableError(f"{what} is not an RSA key")
    if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        raise JwksUnavailableError(f"{what} has {key.key_size} bits, outside "
                                   f"{MIN_RSA_BITS}..{MAX_RSA_BITS}")
    return key


def _jwk_key(jwk: Mapping[str, Any], what: str) -> rsa.RSAPublicKey:
    from_numbers = None
    if "n" in jwk or "e" in jwk:
        try:
            from_numbers = rsa.RSAPublicNumbers(_b64url_int(jwk.get("e"), f"{what} e"),
                                                _b64url_int(jwk.get("n"), f"{what} n")).public_key()
        except ValueError:
            raise JwksUnavailableError(f"{what} n/e is not an RSA public key") from None
    from_certificate = None
    chain = jwk.get("x5c")
    if chain is not None:
        if not isinstance(chain, list) or not chain or not isinstance(chain[0], str) \
                or len(chain[0]) > 16384:
            raise JwksUnavailableError(f"{what} x5c is not a list of base64 certificates")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                certificate = x509.load_der_x509_certificate(
                    base64.b64decode(chain[0], validate=True))
        except (binascii.Error, ValueError):
            raise JwksUnavailableError(f"{what} x5c[0] is not a DER certificate") from None
        from_certificate = certificate.public_key()
    if from_numbers is None and from_certificate is None:
        raise JwksUnavailableError(f"{what} has neither n/e nor x5c")
    if from_numbers is not None and from_certificate is not None and (
            not isinstance(from_certificate, rsa.RSAPublicKey)
            or from_certificate.public_numbers() != from_numbers.public_numbers()):
        raise JwksUnavailableError(f"{what} n/e and x5c name different keys")
    return _checked_rsa(from_numbers or from_certificate, what)


def parse_jwks(data: bytes, source: str) -> dict[str, rsa.RSAPublicKey]:
    """kid -> RSA key for the RS256-usable keys of a JWKS document (others are skipped)."""
    document = load_json_object(data, f"JWKS from {source}", JwksUnavailableError)
    keys = document.get("keys")
    if not isinstance(keys, list) or len(keys) > MAX_KEYS:
        raise JwksUnavailableError(f"JWKS from {source}: keys must be a list of at most "
                                   f"{MAX_KEYS}")
    result: dict[str, rsa.RSAPublicKey] = {}
    for index, jwk in enumerate(keys):
        what = f"JWKS from {source} keys[{index}]"
        if not isinstance(jwk, dict):
            raise JwksUnavailableError(f"{what} is not an object")
        if jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig" \
                or jwk.get("alg", "RS256") != "RS256":
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
            raise JwksUnavailableError(f"{what} has no usable kid")
        if kid in result:
            raise JwksUnavailableError(f"JWKS from {source} has kid {kid!r} twice")
        result[kid] = _jwk_key(jwk, what)
    if not result:
        raise JwksUnavailableError(f"JWKS from {source} has no RS256 signing key")
    return result


# --- the cache ------------------------------------------------------------------------
class JwksCache:
    """An issuer's signing keys, fetched lazily, cached, refreshed on rotation.

    Give exactly one of ``jwks_uri`` (MAA: ``{issuer}/certs``) or ``discovery_url`` (OpenID
    ``/.well-known/openid-configuration``; its ``issuer`` must equal ``expected_issuer``).
    """

    def __init__(self, *, getter: Getter, jwks_uri: str | None = None,
                 discovery_url: str | None = None, expected_issuer: str | None = None,
                 cache_file: Path | str | None = None, ttl_seconds: float = 3600.0,
                 min_refresh_seconds: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        if (jwks_uri is None) == (discovery_url is None):
            raise ValueError("give exactly one of jwks_uri or discovery_url")
        if discovery_url is not None and expected_issuer is None:
            raise ValueError("discovery_url needs expected_issuer")
        if ttl_seconds <= 0 or min_refresh_seconds < 0:
            raise ValueError("ttl_seconds must be positive and min_refresh_seconds >= 0")
        self._getter = getter
        self._jwks_uri = jwks_uri
        self._discovery_url = discovery_url
        self._expected_issuer = expected_issuer
        self._cache_file = Path(cache_file) if cache_file is not None else None
        self._ttl = ttl_seconds
        self._min_refresh = min_refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None

    @property
    def source(self) -> str:
        return self._jwks_uri or self._discovery_url or ""

    def key_for(self, kid: str) -> rsa.RSAPublicKey:
        """The key for ``kid``; an unknown kid triggers one (rate-limited) refetch."""
        with self._lock:
            now = self._clock()
            if not self._is_fresh(now) and not self._load_cache_file(now):
                self._fetch(now)
            if kid in self._keys:
                return self._keys[kid]
            if self._last_attempt is None or now - self._last_attempt >= self._min_refresh:
                self._fetch(now)
                if kid in self._keys:
                    return self._keys[kid]
        raise EvidenceVerificationError(
            f"token key id {kid!r} is not among the signing keys of {self.source}")

    def refresh(self) -> None:
        """Fetch the keys now (e.g. at start-up), regardless of the cache."""
        with self._lock:
            self._fetch(self._clock())

    def _is_fresh(self, now: float) -> bool:
        return self._fetched_at is not None and 0 <= now - self._fetched_at < self._ttl

    def _fetch(self, now: float) -> None:
        self._last_attempt = now
        jwks_uri = self._jwks_uri or self._discover()
        body = self._getter(jwks_uri)
        if not isinstance(body, bytes | bytearray) or len(body) > MAX_DOCUMENT_SIZE:
            raise JwksUnavailableError(f"JWKS from {jwks_uri} is missing or too large")
        self._keys = parse_jwks(bytes(body), jwks_uri)
        self._fetched_at = now
        self._store_cache_file(bytes(body), now)

    def _discover(self) -> str:
        assert self._discovery_url is not None
        body = self._getter(self._discovery_url)
        document = load_json_object(bytes(body), f"OpenID configuration {self._discovery_url}",
                                    JwksUnavailableError)
        if document.get("issuer") != self._expected_issuer:
            raise JwksUnavailableError(
                f"OpenID configuration {self._discovery_url} names issuer "
                f"{document.get('issuer')!r}, not {self._expected_issuer!r}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or len(jwks_uri) > 2048 or \
                urlsplit(jwks_uri).scheme not in ("https", "http"):
            raise JwksUnavailableError(
                f"OpenID configuration {self._discovery_url} has no usable jwks_uri")
        return jwks_uri

    # --- the cache file: {"source", "fetched_at", "jwks"}; a bad file is ignored ---------
    def _load_cache_file(self, now: float) -> bool:
        path = self._cache_file
        if path is None or not path.is_file() or path.stat().st_size > 2 * MAX_DOCUMENT_SIZE:
            return False
        try:
            entry = load_bounded_object(
                path.read_bytes(), what="JWKS cache file", max_bytes=2 * MAX_DOCUMENT_SIZE,
                max_depth=MAX_JSON_DEPTH)
            fetched_at = float(entry["fetched_at"])
            if entry["source"] != self.source or not 0 <= now - fetched_at < self._ttl:
                return False
            keys = parse_jwks(entry["jwks"].encode("utf-8"), f"cache file {path}")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, JwksUnavailableError):
            return False
        self._keys = keys
        self._fetched_at = fetched_at
        return True

    def _store_cache_file(self, body: bytes, now: float) -> None:
        path = self._cache_file
        if path is None:
            return
        entry = json.dumps({"source": self.source, "fetched_at": now,
                            "jwks": body.decode("utf-8")})
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".jwks-")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(entry)
            os.chmod(temporary, 0o600)
            os.replace(temporary, path)
        except OSError:
            Path(temporary).unlink(missing_ok=True)
            raise
