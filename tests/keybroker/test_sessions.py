"""Stateless challenges and the session store: single use, TTL, bounds, no comparison shortcuts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from keybroker.attestation.claims import Claims
from keybroker.service.sessions import (
    CHALLENGE_KEY_FILE,
    NONCE_BYTES,
    CapacityError,
    ChallengeIssuer,
    ChallengeSecretError,
    NonceError,
    SessionError,
    SessionStore,
    load_challenge_secret,
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


SECRET = bytes(range(32))


def test_nonce_is_single_use_and_expires() -> None:
    clock = Clock()
    issuer = ChallengeIssuer(SECRET, ttl_seconds=30, max_used=10, clock=clock)
    challenge = issuer.issue()
    assert len(challenge.nonce) == NONCE_BYTES and challenge.expires_at == 1030.0
    issuer.check(challenge.nonce)
    issuer.mark_used(challenge.nonce)
    with pytest.raises(NonceError, match="already used"):
        issuer.check(challenge.nonce)
    with pytest.raises(NonceError, match="already used"):
        issuer.mark_used(challenge.nonce)
    late = issuer.issue()
    clock.now += 30
    with pytest.raises(NonceError, match="expired"):
        issuer.check(late.nonce)
    with pytest.raises(NonceError, match="unknown"):
        issuer.check(bytes(NONCE_BYTES))
    with pytest.raises(NonceError, match="48 bytes"):
        issuer.check(b"short")


def test_issuing_keeps_no_state_and_a_forged_or_stretched_nonce_is_refused() -> None:
    clock = Clock()
    issuer = ChallengeIssuer(SECRET, ttl_seconds=30, max_used=10, clock=clock)
    for _ in range(20_000):
        issuer.issue()
    assert len(issuer) == 0  # 20 000 challenges, nothing remembered
    nonce = issuer.issue().nonce
    stretched = bytearray(nonce)
    stretched[16:24] = (2**60).to_bytes(8, "big")  # move the expiry far out
    with pytest.raises(NonceError, match="not issued by this broker"):
        issuer.check(bytes(stretched))
    other = ChallengeIssuer(bytes(32), ttl_seconds=30, max_used=10, clock=clock)
    with pytest.raises(NonceError, match="not issued by this broker"):
        other.check(nonce)
    sibling = ChallengeIssuer(SECRET, ttl_seconds=30, max_used=10, clock=clock)
    sibling.check(nonce)  # another process on the same state accepts it


def test_used_set_is_bounded_and_forgets_expired_nonces() -> None:
    clock = Clock()
    issuer = ChallengeIssuer(SECRET, ttl_seconds=10, max_used=3, clock=clock)
    for _ in range(3):
        issuer.mark_used(issuer.issue().nonce)
    with pytest.raises(CapacityError):
        issuer.mark_used(issuer.issue().nonce)  # never forget a live nonce: that allows replay
    clock.now += 10
    issuer.mark_used(issuer.issue().nonce)
    assert len(issuer) == 1


def test_challenge_secret_is_created_once_private_and_shared(tmp_path: Path) -> None:
    first = load_challenge_secret(tmp_path)
    assert len(first) == 32
    assert (tmp_path / CHALLENGE_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert load_challenge_secret(tmp_path) == first
    (tmp_path / CHALLENGE_KEY_FILE).write_bytes(b"short")
    with pytest.raises(ChallengeSecretError, match="not 32 bytes"):
        load_challenge_secret(tmp_path)


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
