"""`JwksCache` and `verify_rs256_token`: fetching, caching, rotation, rate limits, refusals."""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from keybroker.attestation.errors import (
    EndorsementUnavailableError,
    EvidenceFormatError,
    EvidenceVerificationError,
)
from keybroker.attestation.jwks import (
    JwksCache,
    JwksUnavailableError,
    http_getter,
    parse_jwks,
    verify_rs256_token,
)
from tests.attestation_cloud.support import (
    DocumentServer,
    ManualClock,
    jwks_document,
    mint_token,
    new_rsa_key,
    rsa_jwk,
)

ISSUER = "https://issuer.example"
KEY_1 = new_rsa_key()
KEY_2 = new_rsa_key()


class CountingGetter:
    def __init__(self, documents: dict[str, bytes]) -> None:
        self.documents = documents
        self.calls: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.calls.append(url)
        if url not in self.documents:
            raise JwksUnavailableError(f"GET {url} answered HTTP 404")
        return self.documents[url]


def _payload(clock: ManualClock, **extra: object) -> dict:
    return {"iss": ISSUER, "aud": "broker", "iat": clock.now - 10, "nbf": clock.now - 10,
            "exp": clock.now + 600, **extra}


def test_keys_are_fetched_once_and_cached_in_memory() -> None:
    getter = CountingGetter({"https://issuer.example/certs": jwks_document({"key-1": KEY_1})})
    clock = ManualClock()
    cache = JwksCache(jwks_uri="https://issuer.example/certs", getter=getter, clock=clock)
    for _ in range(3):
        assert cache.key_for("key-1").public_numbers() == KEY_1.public_key().public_numbers()
    assert len(getter.calls) == 1
    clock.now += 3601  # past the TTL
    cache.key_for("key-1")
    assert len(getter.calls) == 2


def test_unknown_kid_refetches_once_then_rate_limits() -> None:
    url = "https://issuer.example/certs"
    getter = CountingGetter({url: jwks_document({"key-1": KEY_1})})
    clock = ManualClock()
    cache = JwksCache(jwks_uri=url, getter=getter, clock=clock, min_refresh_seconds=60)
    cache.key_for("key-1")
    clock.now += 61
    getter.documents[url] = jwks_document({"key-1": KEY_1, "key-2": KEY_2})  # rotation
    assert cache.key_for("key-2").key_size == 2048
    assert len(getter.calls) == 2
    for _ in range(5):  # a flood of unknown kids inside the window: no more fetches
        with pytest.raises(EvidenceVerificationError, match="'bogus' is not among"):
            cache.key_for("bogus")
    assert len(getter.calls) == 2
    clock.now += 61
    with pytest.raises(EvidenceVerificationError):
        cache.key_for("bogus")
    assert len(getter.calls) == 3


def test_discovery_checks_the_issuer_and_follows_jwks_uri() -> None:
    discovery = f"{ISSUER}/.well-known/openid-configuration"
    getter = CountingGetter({
        discovery: json.dumps({"issuer": ISSUER, "jwks_uri": f"{ISSUER}/keys"}).encode(),
        f"{ISSUER}/keys": jwks_document({"key-1": KEY_1}),
    })
    cache = JwksCache(discovery_url=discovery, expected_issuer=ISSUER, getter=getter)
    cache.key_for("key-1")
    assert getter.calls == [discovery, f"{ISSUER}/keys"]
    getter.documents[discovery] = json.dumps({"issuer": "https://evil.example",
                                              "jwks_uri": f"{ISSUER}/keys"}).encode()
    other = JwksCache(discovery_url=discovery, expected_issuer=ISSUER, getter=getter)
    with pytest.raises(JwksUnavailableError, match="names issuer"):
        other.key_for("key-1")


def test_cache_file_survives_a_restart_and_expires(tmp_path: Path) -> None:
    url = "https://issuer.example/certs"
    getter = CountingGetter({url: jwks_document({"key-1": KEY_1})})
    clock = ManualClock()
    path = tmp_path / "jwks" / "maa.json"
    JwksCache(jwks_uri=url, getter=getter, clock=clock, cache_file=path).key_for("key-1")
    assert (path.stat().st_mode & 0o777) == 0o600
    JwksCache(jwks_uri=url, getter=getter, clock=clock, cache_file=path).key_for("key-1")
    assert len(getter.calls) == 1  # the second instance read the file
    clock.now += 4000
    JwksCache(jwks_uri=url, getter=getter, clock=clock, cache_file=path).key_for("key-1")
    assert len(getter.calls) == 2
    path.write_text("garbage")  # a damaged cache file is ignored, not trusted
    JwksCache(jwks_uri=url, getter=getter, clock=clock, cache_file=path).key_for("key-1")
    assert len(getter.calls) == 3


def test_fetch_failures_are_endorsement_unavailable() -> None:
    cache = JwksCache(jwks_uri="https://issuer.example/certs", getter=CountingGetter({}))
    with pytest.raises(EndorsementUnavailableError, match="404"):
        cache.key_for("key-1")


def _self_signed(key) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "maa signing")])
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=365))
            .sign(key, hashes.SHA256()))


def test_jwks_parsing_x5c_and_refusals() -> None:
    der = _self_signed(KEY_1).public_bytes(serialization.Encoding.DER)
    x5c = {"kid": "maa", "kty": "RSA", "x5c": [base64.b64encode(der).decode()]}
    keys = parse_jwks(json.dumps({"keys": [x5c, {"kty": "EC", "kid": "ec"}]}).encode(), "t")
    assert set(keys) == {"maa"}  # the EC key is skipped, not an error
    mismatch = {**rsa_jwk(KEY_2.public_key(), "maa"), "x5c": x5c["x5c"]}
    for document, message in [
        ({"keys": [mismatch]}, "different keys"),
        ({"keys": [rsa_jwk(KEY_1.public_key(), "a"), rsa_jwk(KEY_1.public_key(), "a")]}, "twice"),
        ({"keys": []}, "no RS256 signing key"),
        ({"keys": "nope"}, "keys must be a list"),
        ({"keys": [{"kid": "x", "kty": "RSA"}]}, "neither n/e nor x5c"),
    ]:
        with pytest.raises(JwksUnavailableError, match=message):
            parse_jwks(json.dumps(document).encode(), "t")


def test_http_getter_against_a_local_server() -> None:
    with DocumentServer() as server:
        server.documents["/certs"] = jwks_document({"key-1": KEY_1})
        getter = http_getter(allow_loopback_http=True)
        assert json.loads(getter(f"{server.url}/certs"))["keys"][0]["kid"] == "key-1"
        with pytest.raises(JwksUnavailableError, match="404"):
            getter(f"{server.url}/missing")
        with pytest.raises(JwksUnavailableError, match="not an https URL"):
            http_getter()(f"{server.url}/certs")  # plain HTTP refused by default
        with pytest.raises(JwksUnavailableError, match="over 10 bytes"):
            http_getter(allow_loopback_http=True, max_bytes=10)(f"{server.url}/certs")


# --- tokens -------------------------------------------------------------------------
@pytest.fixture
def keys() -> JwksCache:
    return JwksCache(jwks_uri="https://issuer.example/certs", getter=CountingGetter(
        {"https://issuer.example/certs": jwks_document({"key-1": KEY_1})}))


def test_token_checks(keys: JwksCache) -> None:
    clock = ManualClock()

    def verify(token: bytes, audience: str | None = "broker") -> dict:
        return verify_rs256_token(token, keys, issuer=ISSUER, audience=audience, now=clock.now,
                                  leeway_seconds=30)

    assert verify(mint_token(KEY_1, _payload(clock)))["aud"] == "broker"
    assert verify(mint_token(KEY_1, _payload(clock, aud=["x", "broker"])))
    cases = [
        (mint_token(KEY_1, _payload(clock, exp=clock.now - 31)), "expired"),
        (mint_token(KEY_1, _payload(clock, nbf=clock.now + 31)), "not valid yet"),
        (mint_token(KEY_1, _payload(clock, iat=clock.now + 31)), "issued in the future"),
        (mint_token(KEY_1, {k: v for k, v in _payload(clock).items() if k != "exp"}),
         "no 'exp'"),
        (mint_token(KEY_1, _payload(clock, iss="https://other")), "issuer"),
        (mint_token(KEY_1, _payload(clock, aud="someone-else")), "audience"),
        (mint_token(KEY_2, _payload(clock)), "signature does not verify"),
        (mint_token(None, _payload(clock), alg="none"), "alg 'none'"),
        (mint_token(b"secret", _payload(clock), alg="HS256"), "alg 'HS256'"),
        (mint_token(KEY_1, _payload(clock), alg="RS512"), "alg 'RS512'"),
        (mint_token(KEY_1, _payload(clock), kid=None), "no usable kid"),
        (mint_token(KEY_1, _payload(clock), header_extra={"crit": ["b64"]}), "crit"),
    ]
    for token, message in cases:
        with pytest.raises(EvidenceVerificationError, match=message):
            verify(token)
    # inside the leeway a just-expired token still passes
    assert verify(mint_token(KEY_1, _payload(clock, exp=clock.now - 29)))
    for token, message in [(b"a.b", "3"), (b"a.b.c.d", "4 parts"), (b"\xff.a.b", "ASCII"),
                           (b"*.a.b", "base64url"), (b"x" * 70000, "over")]:
        with pytest.raises(EvidenceFormatError, match=message):
            verify(token)
