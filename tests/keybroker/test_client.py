"""BrokerClient against scripted transports: typed errors, retries, reply validation."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import httpx
import pytest

from envelope.keys import KeyReference, WrappedKey
from keybroker.client import (
    BrokerAuthError,
    BrokerClient,
    BrokerDeniedError,
    BrokerError,
    BrokerNotFoundError,
    BrokerProtocolError,
    BrokerRequestError,
    BrokerSession,
    BrokerUnavailableError,
)

WRAPPED = WrappedKey(KeyReference("local://keyring/eu/kek-1", "1"), b"\x01" * 65)
SESSION = BrokerSession("session-id", 2e9, True, {})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> BrokerClient:
    return BrokerClient("http://127.0.0.1:9", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (401, BrokerAuthError),
        (403, BrokerDeniedError),
        (404, BrokerNotFoundError),
        (400, BrokerError),
        (422, BrokerError),
        (500, BrokerUnavailableError),
        (503, BrokerUnavailableError),
    ],
)
def test_statuses_become_typed_errors(status: int, error_type: type[BrokerError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": "code", "reason": "because"})

    with client_for(handler) as client, pytest.raises(error_type) as caught:
        client.release(SESSION, WRAPPED, "eu", "acme")
    assert type(caught.value) is error_type
    assert caught.value.status == status and caught.value.error == "code"
    assert "because" in str(caught.value)


def test_release_sends_the_documented_body_and_checks_the_key_id() -> None:
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(
            200, json={"sealed_dek": b64(b"sealed"), "key_id": WRAPPED.key_id, "simulated": True}
        )

    with client_for(handler) as client:
        assert client.release(SESSION, WRAPPED, "eu", "acme") == b"sealed"
    assert seen == [
        {
            "session_id": "session-id",
            "kek_uri": "local://keyring/eu/kek-1",
            "kek_version": "1",
            "wrapped_dek": b64(WRAPPED.ciphertext),
            "region": "eu",
            "producer_id": "acme",
        }
    ]

    def wrong_key(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"sealed_dek": b64(b"s"), "key_id": "00", "simulated": 1})

    with client_for(wrong_key) as client, pytest.raises(BrokerProtocolError, match="key_id"):
        client.release(SESSION, WRAPPED, "eu", "acme")


def test_generate_returns_sealed_key_and_wrapped_key() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "sealed_dek": b64(b"sealed"),
                "kek_uri": WRAPPED.kek.uri,
                "kek_version": "1",
                "wrapped_dek": b64(WRAPPED.ciphertext),
                "key_id": WRAPPED.key_id,
                "simulated": False,
            },
        )

    with client_for(handler) as client:
        assert client.generate(SESSION, "eu", "acme") == (b"sealed", WRAPPED)


def _generate_reply(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={"sealed_dek": b64(b"sealed"), "kek_uri": WRAPPED.kek.uri, "kek_version": "1",
              "wrapped_dek": b64(WRAPPED.ciphertext), "key_id": WRAPPED.key_id,
              "simulated": False},
    )


def test_generate_sends_spec_fingerprint_and_purpose_only_when_given() -> None:
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return _generate_reply(request)

    fingerprint = bytes(range(32))
    with client_for(handler) as client:
        client.generate(SESSION, "eu", "acme")
        client.generate(SESSION, "eu", "acme", spec_fingerprint=fingerprint)
        client.generate(SESSION, "eu", "acme", spec_fingerprint=fingerprint.hex().upper(),
                        purpose="features/v1")
    base = {"session_id": "session-id", "region": "eu", "producer_id": "acme"}
    assert bodies == [
        base,
        {**base, "spec_fingerprint": fingerprint.hex()},
        {**base, "spec_fingerprint": fingerprint.hex(), "purpose": "features/v1"},
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"spec_fingerprint": b"\x01" * 31}, "spec_fingerprint: expected 32 bytes, got 31"),
        ({"spec_fingerprint": "ab" * 31}, "spec_fingerprint: expected 32 bytes or 64 hex"),
        ({"spec_fingerprint": "zz" * 32}, "spec_fingerprint: expected 32 bytes or 64 hex"),
        ({"spec_fingerprint": 7}, "spec_fingerprint"),
        ({"purpose": ""}, "purpose: expected 1-64 characters"),
        ({"purpose": "line\nbreak"}, "purpose"),
        ({"purpose": "x" * 65}, "purpose"),
    ],
)
def test_generate_refuses_malformed_spec_arguments_before_sending(
    options: dict, message: str
) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return _generate_reply(request)

    with client_for(handler) as client, pytest.raises(BrokerRequestError, match=message):
        client.generate(SESSION, "eu", "acme", **options)
    assert sent == []


@pytest.mark.parametrize(
    "reply",
    [
        b"not json",
        b"[1, 2]",
        json.dumps({"session_id": "s", "expires_at": True, "simulated": True, "claims": {}}),
        json.dumps({"session_id": 1, "expires_at": 1.0, "simulated": True, "claims": {}}),
        json.dumps({"session_id": "s", "expires_at": 1.0, "simulated": "yes", "claims": {}}),
        b'{"claims": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",   # deep: no RecursionError
        b'{"session_id": "a", "session_id": "b"}',                  # duplicate keys
    ],
)
def test_malformed_replies_are_protocol_errors(reply: bytes | str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=reply)

    with client_for(handler) as client, pytest.raises(BrokerProtocolError):
        client.attest(b"n" * 32, "sev-snp", b"e", {}, b"k")


def test_bad_base64_and_oversized_replies_are_protocol_errors() -> None:
    def bad_b64(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"nonce": "***", "expires_at": 1})

    with client_for(bad_b64) as client, pytest.raises(BrokerProtocolError, match="base64"):
        client.challenge()

    def huge(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b" " * (2 << 20))

    with client_for(huge) as client, pytest.raises(BrokerProtocolError, match="over"):
        client.challenge()


def test_idempotent_calls_retry_once_on_connection_errors() -> None:
    calls: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"nonce": b64(b"n" * 32), "expires_at": 1.0})

    with client_for(flaky) as client:
        assert client.challenge() == b"n" * 32
    assert calls == ["/v1/challenge", "/v1/challenge"]


def test_idempotent_calls_give_up_after_one_retry() -> None:
    calls: list[str] = []

    def down(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ConnectError("refused", request=request)

    with client_for(down) as client, pytest.raises(BrokerUnavailableError, match="unreachable"):
        client.release_named(SESSION, "pseudonym/acme")
    assert len(calls) == 2


@pytest.mark.parametrize("call", ["attest", "generate"])
def test_non_idempotent_calls_are_not_retried(call: str) -> None:
    calls: list[str] = []

    def down(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ConnectError("refused", request=request)

    with client_for(down) as client, pytest.raises(BrokerUnavailableError):
        if call == "attest":
            client.attest(b"n" * 32, "sev-snp", b"e", {}, b"k")
        else:
            client.generate(SESSION, "eu", "acme")
    assert len(calls) == 1


def test_session_repr_hides_the_bearer_id() -> None:
    assert "session-id" not in repr(SESSION)
