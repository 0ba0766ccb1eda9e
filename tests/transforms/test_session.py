"""The spec-bound broker client: generate names the spec when the client can, else not."""

from __future__ import annotations

from typing import Any

from transforms.session import SpecBoundBrokerClient, supports_spec_fingerprint

FINGERPRINT = "ab" * 32


class _NewClient:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def generate(self, session, region, producer_id, *, spec_fingerprint=None, purpose=None):
        self.calls.append((session, region, producer_id, spec_fingerprint))
        return b"sealed", "wrapped"

    def release_named(self, session, name):
        self.calls.append((session, name))
        return b"named"


class _OldClient:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def generate(self, session, region, producer_id):
        self.calls.append((session, region, producer_id))
        return b"sealed", "wrapped"


def test_a_client_that_takes_the_fingerprint_gets_it_on_every_generate() -> None:
    client = _NewClient()
    bound = SpecBoundBrokerClient(client, FINGERPRINT)   # type: ignore[arg-type]
    assert bound.records_spec_fingerprint
    assert bound.generate("s", "eu", "acme") == (b"sealed", "wrapped")
    assert bound.release_named("s", "pseudonym/acme") == b"named"
    assert client.calls == [("s", "eu", "acme", FINGERPRINT), ("s", "pseudonym/acme")]


def test_an_older_client_is_called_without_it() -> None:
    client = _OldClient()
    bound = SpecBoundBrokerClient(client, FINGERPRINT)   # type: ignore[arg-type]
    assert not bound.records_spec_fingerprint
    bound.generate("s", "us", "globex")
    assert client.calls == [("s", "us", "globex")]
    assert not supports_spec_fingerprint(object())
