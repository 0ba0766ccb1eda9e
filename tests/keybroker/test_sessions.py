"""Nonce and session stores: single use, TTL, bounds, and no secret comparison shortcuts."""

from __future__ import annotations

import dataclasses

import pytest

from keybroker.attestation.claims import Claims
from keybroker.service.sessions import (
    NONCE_BYTES,
    CapacityError,
    NonceError,
    NonceStore,
    SessionError,
    SessionStore,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CLAIMS = Claims(
    tee="sev-snp",
    report_version=2,
    debug=False,
    measurement="aa" * 48,
    report_data=bytes(64),
    product="Milan",
    signing_key="vcek",
    tcb={},
    simulated=True,
)


def test_nonce_is_single_use_and_expires() -> None:
    clock = Clock()
    store = NonceStore(ttl_seconds=30, max_entries=10, clock=clock)
    challenge = store.issue()
    assert len(challenge.nonce) == NONCE_BYTES and challenge.expires_at == 1030.0
    store.consume(challenge.nonce)
    with pytest.raises(NonceError, match="already used"):
        store.consume(challenge.nonce)
    late = store.issue()
    clock.now += 30
    with pytest.raises(NonceError, match="expired"):
        store.consume(late.nonce)
    with pytest.raises(NonceError, match="unknown"):
        store.consume(bytes(NONCE_BYTES))
    with pytest.raises(NonceError, match="32 bytes"):
        store.consume(b"short")


def test_nonce_store_is_bounded_and_evicts_expired() -> None:
    clock = Clock()
    store = NonceStore(ttl_seconds=10, max_entries=3, clock=clock)
    for _ in range(3):
        store.issue()
    with pytest.raises(CapacityError):
        store.issue()
    clock.now += 10
    store.issue()
    assert len(store) == 1


def test_sessions_expire_and_are_bounded() -> None:
    clock = Clock()
    store = SessionStore(ttl_seconds=60, max_entries=2, clock=clock)
    first = store.open(b"k" * 1216, CLAIMS)
    assert store.get(first.session_id) is first
    assert first.simulated is True
    assert first.session_id not in repr(first)
    store.open(b"k" * 1216, CLAIMS)
    with pytest.raises(CapacityError):
        store.open(b"k" * 1216, CLAIMS)
    clock.now += 60
    with pytest.raises(SessionError, match=r"expired|unknown"):
        store.get(first.session_id)
    store.open(b"k" * 1216, dataclasses.replace(CLAIMS, simulated=False))
    assert len(store) == 1


def test_unknown_malformed_and_discarded_sessions() -> None:
    store = SessionStore(ttl_seconds=60, max_entries=5, clock=Clock())
    with pytest.raises(SessionError, match="unknown"):
        store.get("nope")
    with pytest.raises(SessionError, match="malformed"):
        store.get("é")
    with pytest.raises(SessionError, match="malformed"):
        store.get("x" * 500)
    session = store.open(b"k", CLAIMS)
    store.discard(session.session_id)
    with pytest.raises(SessionError):
        store.get(session.session_id)
