"""Stateless challenges, the shared spent-nonce set and sealed session tokens: single use,
TTL, bounds, tampering, no comparison shortcuts."""

from __future__ import annotations

import base64
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from envelope import (
    TEE_PUBLIC_KEY_LENGTH,
    KeyTransportError,
    TeeKeyPair,
    release_info,
    seal_to_tee,
)
from keybroker.attestation.claims import Claims
from keybroker.service.sessions import (
    CHALLENGE_KEY_FILE,
    MAX_SESSION_TOKEN_LENGTH,
    NONCE_BYTES,
    SESSION_KEY_FILE,
    CapacityError,
    ChallengeIssuer,
    ChallengeSecretError,
    NonceError,
    NonceStoreError,
    SessionError,
    SessionTokens,
    SpentNonces,
    load_challenge_secret,
    load_session_key,
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
SESSION_KEY = bytes(range(1, 33))
TEE_KEY = bytes(range(256)) * 4 + bytes(192)


def make_issuer(
    directory: Path, clock: Clock, *, secret: bytes = SECRET, max_used: int = 10, ttl: float = 30
) -> ChallengeIssuer:
    spent = SpentNonces(directory / "nonces.sqlite", max_used, clock)
    return ChallengeIssuer(secret, ttl_seconds=ttl, spent=spent, clock=clock)


def test_nonce_is_single_use_and_expires(tmp_path: Path) -> None:
    clock = Clock()
    issuer = make_issuer(tmp_path, clock)
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
    with pytest.raises(NonceError, match="expired"):
        issuer.mark_used(late.nonce)
    with pytest.raises(NonceError, match="unknown"):
        issuer.check(bytes(NONCE_BYTES))
    with pytest.raises(NonceError, match="48 bytes"):
        issuer.check(b"short")


def test_issuing_keeps_no_state_and_a_forged_or_stretched_nonce_is_refused(
    tmp_path: Path,
) -> None:
    clock = Clock()
    issuer = make_issuer(tmp_path, clock)
    for _ in range(20_000):
        issuer.issue()
    assert len(issuer) == 0  # 20 000 challenges, nothing remembered
    nonce = issuer.issue().nonce
    stretched = bytearray(nonce)
    stretched[16:24] = (2**60).to_bytes(8, "big")  # move the expiry far out
    with pytest.raises(NonceError, match="not issued by this broker"):
        issuer.check(bytes(stretched))
    (tmp_path / "other").mkdir()
    other = make_issuer(tmp_path / "other", clock, secret=bytes(32))
    with pytest.raises(NonceError, match="not issued by this broker"):
        other.check(nonce)
    sibling = make_issuer(tmp_path, clock)
    sibling.check(nonce)  # another process on the same state accepts it


def test_a_nonce_spent_through_one_issuer_is_refused_by_another_on_the_same_state(
    tmp_path: Path,
) -> None:
    """Two issuers stand for two broker processes: separate connections, one file."""
    clock = Clock()
    first, second = make_issuer(tmp_path, clock), make_issuer(tmp_path, clock)
    nonce = first.issue().nonce
    second.check(nonce)
    first.mark_used(nonce)
    with pytest.raises(NonceError, match="already used"):
        second.check(nonce)
    with pytest.raises(NonceError, match="already used"):
        second.mark_used(nonce)
    assert len(second) == 1


def test_spent_set_is_bounded_and_forgets_expired_nonces(tmp_path: Path) -> None:
    clock = Clock()
    issuer = make_issuer(tmp_path, clock, max_used=3, ttl=10)
    for _ in range(3):
        issuer.mark_used(issuer.issue().nonce)
    with pytest.raises(CapacityError):
        issuer.mark_used(issuer.issue().nonce)  # never forget a live nonce: that allows replay
    clock.now += 10
    issuer.mark_used(issuer.issue().nonce)
    assert len(issuer) == 1


def test_a_spent_set_that_cannot_be_written_fails_closed(tmp_path: Path) -> None:
    clock = Clock()
    issuer = make_issuer(tmp_path, clock)
    blocker = sqlite3.connect(tmp_path / "nonces.sqlite", isolation_level=None)
    blocker.execute("DROP TABLE spent")  # the set is gone: nothing can be recorded
    nonce = issuer.issue().nonce
    with pytest.raises(NonceStoreError):
        issuer.mark_used(nonce)
    with pytest.raises(NonceStoreError):
        issuer.check(nonce)
    blocker.close()


def test_state_secrets_are_created_once_private_and_shared(tmp_path: Path) -> None:
    for load, name in ((load_challenge_secret, CHALLENGE_KEY_FILE),
                       (load_session_key, SESSION_KEY_FILE)):
        first = load(tmp_path)
        assert len(first) == 32
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
        assert load(tmp_path) == first
        (tmp_path / name).write_bytes(b"short")
        with pytest.raises(ChallengeSecretError, match="not 32 bytes"):
            load(tmp_path)
    assert load_challenge_secret is not load_session_key


def test_a_session_token_is_served_by_another_holder_of_the_key_and_expires() -> None:
    clock = Clock()
    tokens = SessionTokens(SESSION_KEY, ttl_seconds=60, max_cached=2, clock=clock)
    session = tokens.open(TEE_KEY, CLAIMS)
    assert session.session_id.startswith("sb1.")
    assert len(session.session_id) <= MAX_SESSION_TOKEN_LENGTH
    assert session.session_id not in repr(session)
    opened = tokens.get(session.session_id)
    assert tokens.get(session.session_id) is opened  # the second time from the cache
    sibling = SessionTokens(SESSION_KEY, ttl_seconds=60, max_cached=2, clock=clock)
    served = sibling.get(session.session_id)  # another process: opened from the token
    assert served.tee_public_key == TEE_KEY and served.expires_at == 1060.0
    assert served.claims == dataclasses.replace(CLAIMS, raw={})
    assert served.simulated is True and served.audit_id == session.audit_id
    clock.now += 60
    for holder in (tokens, sibling, SessionTokens(SESSION_KEY, 60, 2, clock)):
        with pytest.raises(SessionError, match="expired"):
            holder.get(session.session_id)


def test_claims_that_policy_reads_survive_the_token() -> None:
    claims = dataclasses.replace(
        CLAIMS,
        tcb={"snp": 8, "microcode": 115},
        platform={"vmpl": 0, "host_data": "ab" * 32, "advisory_ids": ["INTEL-SA-1"],
                  "nested": {"x": [1, 2]}},
        tcb_status="UpToDate",
        raw={"big": "x" * 10_000},
    )
    tokens = SessionTokens(SESSION_KEY, 60, 0, Clock())
    session = tokens.open(TEE_KEY, claims)
    served = tokens.get(session.session_id)
    assert served is not session  # no cache: unsealed
    assert served.claims == dataclasses.replace(claims, raw={})


def test_tampered_foreign_and_malformed_tokens_are_refused() -> None:
    clock = Clock()
    tokens = SessionTokens(SESSION_KEY, 60, 4, clock)
    token = tokens.open(TEE_KEY, CLAIMS).session_id
    foreign = SessionTokens(bytes(32), 60, 4, clock)
    with pytest.raises(SessionError, match="unknown"):
        foreign.get(token)  # another state's key
    raw = bytearray(base64.urlsafe_b64decode(token[4:] + "=" * (-len(token[4:]) % 4)))
    for position in (0, 20, len(raw) - 1):  # the IV, the ciphertext, the tag
        altered = bytearray(raw)
        altered[position] ^= 1
        forged = "sb1." + base64.urlsafe_b64encode(bytes(altered)).rstrip(b"=").decode()
        with pytest.raises(SessionError, match="unknown"):
            SessionTokens(SESSION_KEY, 60, 4, clock).get(forged)
        with pytest.raises(SessionError, match="unknown"):
            tokens.get(forged)  # a cache of the genuine token does not help a forgery
    with pytest.raises(SessionError, match="unknown"):
        tokens.get("nope")
    with pytest.raises(SessionError, match="malformed"):
        tokens.get("é")
    with pytest.raises(SessionError, match="malformed"):
        tokens.get("sb1." + "x" * MAX_SESSION_TOKEN_LENGTH)
    with pytest.raises(SessionError, match="malformed"):
        tokens.get("sb1.!!!!")
    with pytest.raises(SessionError, match="malformed"):
        tokens.get("sb1.AAAA")


def test_the_cache_is_bounded_and_discard_forgets() -> None:
    clock = Clock()
    tokens = SessionTokens(SESSION_KEY, 60, 2, clock)
    sessions = [tokens.open(TEE_KEY, CLAIMS) for _ in range(3)]
    for session in sessions:
        tokens.get(session.session_id)
    assert len(tokens) == 2
    tokens.discard(sessions[2].session_id)
    assert len(tokens) == 1
    assert tokens.get(sessions[2].session_id).session_id == sessions[2].session_id


def test_claims_too_large_for_a_token_are_refused() -> None:
    huge = dataclasses.replace(CLAIMS, platform={"blob": "a" * MAX_SESSION_TOKEN_LENGTH})
    with pytest.raises(CapacityError, match="session token"):
        SessionTokens(SESSION_KEY, 60, 2, Clock()).open(TEE_KEY, huge)


def test_a_cached_session_parses_its_tee_key_once() -> None:
    tee = TeeKeyPair.generate()
    tokens = SessionTokens(SESSION_KEY, 60, 2, Clock())
    session = tokens.open(tee.public_bytes(), CLAIMS)
    opened = tokens.get(session.session_id)
    assert opened.tee_key is opened.tee_key  # parsed once for the session's releases
    assert tokens.get(session.session_id).tee_key is opened.tee_key
    info = release_info("release", "ab" * 32)
    assert tee.open(seal_to_tee(opened.tee_key, bytes(32), info), info) == bytes(32)
    broken = tokens.get(tokens.open(b"\xff" * TEE_PUBLIC_KEY_LENGTH, CLAIMS).session_id)
    with pytest.raises(KeyTransportError):  # fails closed, as sealing to the bytes does
        _ = broken.tee_key
