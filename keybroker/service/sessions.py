"""Challenge nonces and attested sessions.

A challenge costs the broker no memory: the nonce is ``random (16) || expires_at (u64 BE,
milliseconds) || HMAC-SHA-256(secret, label || random || expires_at)[:24]``, 48 bytes, so
``/v1/attest`` can tell a nonce it issued from a forged one by recomputing the MAC, and
the expiry cannot be moved. Single use is enforced only at attest: a nonce whose evidence
verified is remembered until it expires (a bounded set that only ever holds live
nonces; when it is full, attest answers 503 rather than forget a live nonce and allow a
replay). The MAC secret is a file in the state directory (``challenge.key``, created
0600 on first use), so several broker processes on one state accept each other's
nonces; each process keeps its own used set, so across processes a nonce is single use
per process (docs/PROTOCOL.md, "Challenges").

A session is opened by a successful attestation and binds a random id to the TEE's
public key and verified claims for its TTL; the store is keyed by a SHA-256 of the id (so
lookups do not compare secrets byte by byte), evicts expired entries as it goes and
refuses new entries when full rather than evicting live ones. Clocks are injectable.

This module does not verify evidence or apply policy; it only remembers what was granted.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keybroker.attestation.claims import Claims

__all__ = [
    "CHALLENGE_KEY_FILE",
    "NONCE_BYTES",
    "CapacityError",
    "Challenge",
    "ChallengeIssuer",
    "ChallengeSecretError",
    "NonceError",
    "Session",
    "SessionError",
    "SessionStore",
    "load_challenge_secret",
]

NONCE_RANDOM_BYTES = 16
NONCE_EXPIRY_BYTES = 8
NONCE_TAG_BYTES = 24
NONCE_BYTES = NONCE_RANDOM_BYTES + NONCE_EXPIRY_BYTES + NONCE_TAG_BYTES
CHALLENGE_SECRET_BYTES = 32
CHALLENGE_KEY_FILE = "challenge.key"
SESSION_ID_BYTES = 32
MAX_SESSION_ID_LENGTH = 128
_NONCE_LABEL = b"sealbeam/challenge-nonce/v1"


class NonceError(Exception):
    """The nonce is malformed, forged, already used or expired."""


class SessionError(Exception):
    """The session id is unknown or the session expired."""


class CapacityError(Exception):
    """The store is full of live entries; try again later."""


class ChallengeSecretError(Exception):
    """The challenge MAC secret file cannot be read or created."""


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


def load_challenge_secret(state_dir: Path) -> bytes:
    """The MAC secret of ``state_dir/challenge.key``; created (0600, exclusively) if absent.

    Exclusive creation means two broker processes starting at once agree on one secret:
    the loser of the race reads the winner's file.
    """
    path = Path(state_dir) / CHALLENGE_KEY_FILE
    secret = secrets.token_bytes(CHALLENGE_SECRET_BYTES)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    except OSError as error:
        raise ChallengeSecretError(
            f"cannot create {CHALLENGE_KEY_FILE}: {error.strerror}"
        ) from None
    else:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secret)
            handle.flush()
            os.fsync(handle.fileno())
        return secret
    for _attempt in range(50):  # the creator may still be writing
        try:
            with open(path, "rb") as handle:
                stored = handle.read(CHALLENGE_SECRET_BYTES + 1)
        except OSError as error:
            raise ChallengeSecretError(
                f"cannot read {CHALLENGE_KEY_FILE}: {error.strerror}"
            ) from None
        if len(stored) == CHALLENGE_SECRET_BYTES:
            return stored
        if len(stored) > CHALLENGE_SECRET_BYTES:
            break
        time.sleep(0.01)
    raise ChallengeSecretError(f"{CHALLENGE_KEY_FILE} is not {CHALLENGE_SECRET_BYTES} bytes")


class ChallengeIssuer:
    """Stateless MAC-protected nonces; single use via a bounded set of used, live nonces.

    ``issue`` keeps nothing. ``check`` (cheap, before evidence is verified) refuses a
    malformed, forged, expired or already used nonce; ``mark_used`` (after the evidence
    verified) records it atomically, so of two concurrent attests with one nonce only one
    opens a session. Thread-safe.
    """

    def __init__(
        self,
        secret: bytes,
        ttl_seconds: float,
        max_used: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the challenge secret must be at least 16 bytes")
        self._secret = bytes(secret)
        self._ttl = ttl_seconds
        self._max_used = max_used
        self._clock = clock
        self._used: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def issue(self) -> Challenge:
        expires_ms = int((self._clock() + self._ttl) * 1000)
        random_part = secrets.token_bytes(NONCE_RANDOM_BYTES)
        expiry = expires_ms.to_bytes(NONCE_EXPIRY_BYTES, "big")
        nonce = random_part + expiry + self._tag(random_part + expiry)
        return Challenge(nonce, expires_ms / 1000)

    def check(self, nonce: bytes) -> float:
        """The nonce's expiry time if it is authentic, live and unused; NonceError otherwise."""
        expires_at = self._authentic_expiry(nonce)
        now = self._clock()
        if now >= expires_at:
            raise NonceError("nonce expired")
        with self._lock:
            if nonce[:NONCE_RANDOM_BYTES] in self._used:
                raise NonceError("nonce already used")
        return expires_at

    def mark_used(self, nonce: bytes) -> None:
        """Spend the nonce once; NonceError if it was spent meanwhile, CapacityError if full."""
        expires_at = self.check(nonce)
        key = nonce[:NONCE_RANDOM_BYTES]
        now = self._clock()
        with self._lock:
            if key in self._used:
                raise NonceError("nonce already used")
            if len(self._used) >= self._max_used:
                self._evict_expired(now)
                if len(self._used) >= self._max_used:
                    raise CapacityError("too many nonces in use; retry later")
            self._used[key] = expires_at

    def consume(self, nonce: bytes) -> None:
        """``check`` and ``mark_used`` at once (callers with nothing to verify in between)."""
        self.mark_used(nonce)

    def __len__(self) -> int:
        """How many used nonces are remembered (issuing adds none)."""
        with self._lock:
            self._evict_expired(self._clock())
            return len(self._used)

    def _authentic_expiry(self, nonce: bytes) -> float:
        if len(nonce) != NONCE_BYTES:
            raise NonceError(f"nonce unknown: a broker nonce is {NONCE_BYTES} bytes")
        body, tag = nonce[:-NONCE_TAG_BYTES], nonce[-NONCE_TAG_BYTES:]
        if not hmac.compare_digest(self._tag(body), tag):
            raise NonceError("nonce unknown: not issued by this broker")
        return int.from_bytes(body[NONCE_RANDOM_BYTES:], "big") / 1000

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._secret, _NONCE_LABEL + body, hashlib.sha256).digest()[
            :NONCE_TAG_BYTES
        ]

    def _evict_expired(self, now: float) -> None:
        expired = [key for key, expires_at in self._used.items() if expires_at <= now]
        for key in expired:
            del self._used[key]


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
