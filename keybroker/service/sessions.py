"""Challenge nonces and attested sessions, held in memory with a TTL and a size cap.

A nonce is 32 random bytes, good for one ``/v1/attest`` within its TTL. A session is opened
by a successful attestation and binds a random id to the TEE's public key and verified
claims for its TTL. Both stores are keyed by a SHA-256 of the secret value (so lookups do
not compare secrets byte by byte), evict expired entries as they go, and refuse new
entries when full rather than evicting live ones. The clock is injectable for tests.

This module does not verify evidence or apply policy; it only remembers what was granted.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keybroker.attestation.claims import Claims

__all__ = [
    "NONCE_BYTES",
    "CapacityError",
    "Challenge",
    "NonceError",
    "NonceStore",
    "Session",
    "SessionError",
    "SessionStore",
]

NONCE_BYTES = 32
SESSION_ID_BYTES = 32
MAX_SESSION_ID_LENGTH = 128


class NonceError(Exception):
    """The nonce is unknown, already used or expired."""


class SessionError(Exception):
    """The session id is unknown or the session expired."""


class CapacityError(Exception):
    """The store is full of live entries; try again later."""


@dataclass(frozen=True)
class Challenge:
    nonce: bytes
    expires_at: float


@dataclass(frozen=True)
class Session:
    """What a successful attestation granted: a TEE key and its claims, until ``expires_at``."""

    session_id: str
    tee_public_key: bytes
    claims: Claims
    expires_at: float

    @property
    def simulated(self) -> bool:
        return self.claims.simulated

    @property
    def audit_id(self) -> str:
        """A non-secret handle for the ledger: the session id itself is a bearer token."""
        return _digest(self.session_id.encode("ascii"))[:16]

    def __repr__(self) -> str:
        return (
            f"Session(audit_id={self.audit_id!r}, tee={self.claims.tee!r}, "
            f"expires_at={self.expires_at})"
        )


def _digest(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


class NonceStore:
    """Single-use challenge nonces with a TTL. Thread-safe."""

    def __init__(
        self, ttl_seconds: float, max_entries: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._pending: OrderedDict[str, float] = OrderedDict()
        self._used: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def issue(self) -> Challenge:
        now = self._clock()
        with self._lock:
            self._evict_expired(now)
            if len(self._pending) >= self._max_entries:
                raise CapacityError("too many outstanding challenges; retry later")
            nonce = secrets.token_bytes(NONCE_BYTES)
            expires_at = now + self._ttl
            self._pending[_digest(nonce)] = expires_at
            return Challenge(nonce, expires_at)

    def consume(self, nonce: bytes) -> None:
        """Accept a nonce once; raise NonceError naming why it is not acceptable."""
        if len(nonce) != NONCE_BYTES:
            raise NonceError(f"nonce must be {NONCE_BYTES} bytes")
        now = self._clock()
        key = _digest(nonce)
        with self._lock:
            expires_at = self._pending.pop(key, None)
            if expires_at is None:
                if key in self._used:
                    raise NonceError("nonce already used")
                self._evict_expired(now)
                raise NonceError("nonce unknown or expired")
            if now >= expires_at:
                raise NonceError("nonce expired")
            self._used[key] = expires_at
            while len(self._used) > self._max_entries:
                self._used.popitem(last=False)
            self._evict_expired(now)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def _evict_expired(self, now: float) -> None:
        # One TTL for all, so insertion order is expiry order: stop at the first live entry.
        for store in (self._pending, self._used):
            while store and next(iter(store.values())) <= now:
                store.popitem(last=False)


class SessionStore:
    """Attested sessions by id, with a TTL. Thread-safe."""

    def __init__(
        self, ttl_seconds: float, max_entries: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, tee_public_key: bytes, claims: Claims) -> Session:
        now = self._clock()
        with self._lock:
            self._evict_expired(now)
            if len(self._sessions) >= self._max_entries:
                raise CapacityError("too many open sessions; retry later")
            session = Session(
                session_id=secrets.token_urlsafe(SESSION_ID_BYTES),
                tee_public_key=bytes(tee_public_key),
                claims=claims,
                expires_at=now + self._ttl,
            )
            self._sessions[_digest(session.session_id.encode("ascii"))] = session
            return session

    def get(self, session_id: str) -> Session:
        """The live session for ``session_id``; SessionError when unknown or expired."""
        if not isinstance(session_id, str) or not 1 <= len(session_id) <= MAX_SESSION_ID_LENGTH:
            raise SessionError("session id malformed")
        try:
            encoded = session_id.encode("ascii")
        except UnicodeEncodeError:
            raise SessionError("session id malformed") from None
        key = _digest(encoded)
        now = self._clock()
        with self._lock:
            session = self._sessions.get(key)
            if session is None or not hmac.compare_digest(
                session.session_id.encode("ascii"), encoded
            ):
                raise SessionError("session unknown or expired")
            if now >= session.expires_at:
                del self._sessions[key]
                raise SessionError("session expired")
            return session

    def discard(self, session_id: str) -> None:
        """Forget a session (a grant that could not be recorded is withdrawn)."""
        with self._lock:
            self._sessions.pop(_digest(session_id.encode("ascii")), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _evict_expired(self, now: float) -> None:
        while self._sessions and next(iter(self._sessions.values())).expires_at <= now:
            self._sessions.popitem(last=False)
