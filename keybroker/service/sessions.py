"""Challenge nonces and attested sessions, both verifiable by any broker process on one state.

A challenge costs the broker no memory: the nonce is ``random (16) || expires_at (u64 BE,
milliseconds) || HMAC-SHA-256(secret, label || random || expires_at)[:24]``, 48 bytes, so
``/v1/attest`` can tell a nonce it issued from a forged one by recomputing the MAC, and
the expiry cannot be moved. Single use is enforced at attest: a nonce whose evidence
verified is spent in the spent-nonce set (``spent_nonces.py``, ``<state>/nonces.sqlite``,
which every broker process on the state shares; or, when the ledger is in PostgreSQL,
``spent_nonces_postgres.py`` in that database, which every broker host shares), so a nonce
opens at most one session whichever processes or hosts it is presented to; the set only
holds live nonces, and when it is full (or cannot be written) attest is refused rather than
a live nonce forgotten. The MAC
secret is a file in the state directory (``challenge.key``, created 0600 on first use).

A session is opened by a successful attestation and is a self-contained, sealed token
(``sb1.`` + base64url of a 12-byte IV and AES-256-GCM over the session id, expiry, TEE
public key and verified claims, under ``session.key`` in the state directory): any
process holding the key can serve the session's releases, and none keeps a session table.
A token that was altered, made under another key, expired or over the length bound is
refused (the GCM tag check is constant time; nothing is compared byte by byte). Each
process keeps a bounded cache of tokens it has opened, to skip the decryption; the cache
never outlives a token's expiry. A cached session also keeps its TEE key parsed for HPKE
(``Session.tee_key``), so a session's releases do not parse it again. Clocks are injectable.

This module does not verify evidence or apply policy; it only remembers what was granted.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from envelope.transport import TeePublicKey
from keybroker.attestation.claims import Claims
from keybroker.service.spent_nonces import (
    NONCES_FILE,
    CapacityError,
    NonceAlreadySpent,
    NonceStoreError,
    SpentNonces,
)

if TYPE_CHECKING:
    from keybroker.service.spent_nonces_postgres import PostgresSpentNonces

__all__ = [
    "CHALLENGE_KEY_FILE",
    "MAX_SESSION_TOKEN_LENGTH",
    "NONCES_FILE",
    "NONCE_BYTES",
    "SESSION_KEY_FILE",
    "CapacityError",
    "Challenge",
    "ChallengeIssuer",
    "ChallengeSecretError",
    "NonceError",
    "NonceStoreError",
    "Session",
    "SessionError",
    "SessionTokens",
    "SpentNonces",
    "load_challenge_secret",
    "load_session_key",
]

NONCE_RANDOM_BYTES = 16
NONCE_EXPIRY_BYTES = 8
NONCE_TAG_BYTES = 24
NONCE_BYTES = NONCE_RANDOM_BYTES + NONCE_EXPIRY_BYTES + NONCE_TAG_BYTES
CHALLENGE_SECRET_BYTES = 32
CHALLENGE_KEY_FILE = "challenge.key"
SESSION_KEY_FILE = "session.key"
SESSION_ID_BYTES = 16
SESSION_TOKEN_PREFIX = "sb1."  # noqa: S105 (a format tag, not a secret)
SESSION_IV_BYTES = 12
# A token carries the verified claims (without the raw report), so its size follows the
# TEE's claims: ~1.2 KiB for SEV-SNP, ~2 KiB for TDX. The bound is checked before decoding.
MAX_SESSION_TOKEN_LENGTH = 8192
_NONCE_LABEL = b"sealbeam/challenge-nonce/v1"
_SESSION_AAD = b"sealbeam/session-token/v1"


class NonceError(Exception):
    """The nonce is malformed, forged, already used or expired."""


class SessionError(Exception):
    """The session token is malformed, not this broker's, or the session expired."""


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

    @functools.cached_property
    def tee_key(self) -> TeePublicKey:
        """The TEE key parsed for HPKE, once per session object (sessions are cached, so
        once per session and process); KeyTransportError when it does not parse."""
        return TeePublicKey.from_bytes(self.tee_public_key)

    @functools.cached_property
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
    """The MAC secret of ``state_dir/challenge.key``; created (0600, exclusively) if absent."""
    return _load_state_secret(Path(state_dir) / CHALLENGE_KEY_FILE)


def load_session_key(state_dir: Path) -> bytes:
    """The session-token key of ``state_dir/session.key``; created (0600) if absent."""
    return _load_state_secret(Path(state_dir) / SESSION_KEY_FILE)


def _load_state_secret(path: Path) -> bytes:
    """A 32-byte secret file, created exclusively if absent.

    Exclusive creation means several broker processes starting at once agree on one secret:
    the losers of the race read the winner's file.
    """
    name = path.name
    secret = secrets.token_bytes(CHALLENGE_SECRET_BYTES)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    except OSError as error:
        raise ChallengeSecretError(f"cannot create {name}: {error.strerror}") from None
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
            raise ChallengeSecretError(f"cannot read {name}: {error.strerror}") from None
        if len(stored) == CHALLENGE_SECRET_BYTES:
            return stored
        if len(stored) > CHALLENGE_SECRET_BYTES:
            break
        time.sleep(0.01)
    raise ChallengeSecretError(f"{name} is not {CHALLENGE_SECRET_BYTES} bytes")


class ChallengeIssuer:
    """Stateless MAC-protected nonces; single use through the shared spent-nonce set.

    ``issue`` keeps nothing. ``check`` (cheap, before evidence is verified) refuses a
    malformed, forged, expired or already spent nonce; ``mark_used`` (after the evidence
    verified) spends it atomically in ``spent``, so of two concurrent attests with one
    nonce, in one process or several, only one opens a session. Thread-safe.
    """

    def __init__(
        self,
        secret: bytes,
        ttl_seconds: float,
        spent: SpentNonces | PostgresSpentNonces,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the challenge secret must be at least 16 bytes")
        self._secret = bytes(secret)
        self._ttl = ttl_seconds
        self._spent = spent
        self._clock = clock

    def issue(self) -> Challenge:
        expires_ms = int((self._clock() + self._ttl) * 1000)
        random_part = secrets.token_bytes(NONCE_RANDOM_BYTES)
        expiry = expires_ms.to_bytes(NONCE_EXPIRY_BYTES, "big")
        nonce = random_part + expiry + self._tag(random_part + expiry)
        return Challenge(nonce, expires_ms / 1000)

    def check(self, nonce: bytes) -> float:
        """The nonce's expiry time if it is authentic, live and unspent; NonceError otherwise.

        NonceStoreError when the spent set cannot be read (fail closed).
        """
        expires_at = self._authentic_expiry(nonce)
        if self._clock() >= expires_at:
            raise NonceError("nonce expired")
        if self._spent.is_spent(nonce[:NONCE_RANDOM_BYTES]):
            raise NonceError("nonce already used")
        return expires_at

    def mark_used(self, nonce: bytes) -> None:
        """Spend the nonce once; NonceError if it was spent meanwhile (by any process),
        CapacityError if the set is full, NonceStoreError if it cannot be recorded."""
        expires_at = self._authentic_expiry(nonce)
        if self._clock() >= expires_at:
            raise NonceError("nonce expired")
        try:
            self._spent.spend(nonce[:NONCE_RANDOM_BYTES], expires_at)
        except NonceAlreadySpent:
            raise NonceError("nonce already used") from None

    def consume(self, nonce: bytes) -> None:
        """``check`` and ``mark_used`` at once (callers with nothing to verify in between)."""
        self.mark_used(nonce)

    def __len__(self) -> int:
        """How many live spent nonces are remembered (issuing adds none)."""
        return len(self._spent)

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


def _claims_from_token(document: object) -> Claims:
    """The policy facts a token carries back into ``Claims`` (ValueError when malformed)."""
    if not isinstance(document, dict):
        raise ValueError("claims: not an object")
    report_data = document["report_data"]
    if not isinstance(report_data, str):
        raise ValueError("claims: report_data")
    return Claims(
        tee=document["tee"],
        report_version=document["report_version"],
        debug=document["debug"],
        measurement=document["measurement"],
        report_data=bytes.fromhex(report_data),
        product=document["product"],
        signing_key=document["signing_key"],
        tcb=document["tcb"],
        simulated=document["simulated"],
        platform=document["platform"],
        tcb_status=document["tcb_status"],
    )


class SessionTokens:
    """Opens sessions as sealed tokens and reads them back. Thread-safe.

    ``open`` seals (session id, expiry, TEE key, claims without the raw report) under the
    state's session key; ``get`` opens a token in any process holding that key. A small
    per-process cache of opened tokens (at most ``max_cached``, keyed by a SHA-256 of the
    token) saves the decryption on a session's next calls; a cache hit still compares the
    whole token in constant time and checks the expiry.
    """

    def __init__(
        self,
        key: bytes,
        ttl_seconds: float,
        max_cached: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(key) != 32:
            raise ValueError("the session key must be 32 bytes")
        self._aead = AESGCM(bytes(key))
        self._ttl = ttl_seconds
        self._max_cached = max(0, max_cached)
        self._clock = clock
        self._cache: OrderedDict[bytes, Session] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, tee_public_key: bytes, claims: Claims) -> Session:
        """A new session for ``tee_public_key`` with ``claims``, for the TTL from now."""
        expires_at = self._clock() + self._ttl
        facts = claims.to_json()
        facts.pop("raw", None)
        plaintext = json.dumps(
            {
                "id": secrets.token_hex(SESSION_ID_BYTES),
                "exp": expires_at,
                "tee_key": base64.b64encode(bytes(tee_public_key)).decode("ascii"),
                "claims": facts,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode("utf-8")
        iv = secrets.token_bytes(SESSION_IV_BYTES)
        sealed = iv + self._aead.encrypt(iv, plaintext, _SESSION_AAD)
        token = SESSION_TOKEN_PREFIX + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode(
            "ascii"
        )
        if len(token) > MAX_SESSION_TOKEN_LENGTH:
            raise CapacityError(
                f"the verified claims make a session token over {MAX_SESSION_TOKEN_LENGTH} "
                "characters"
            )
        return Session(
            session_id=token,
            tee_public_key=bytes(tee_public_key),
            claims=claims,
            expires_at=expires_at,
        )

    def get(self, token: str) -> Session:
        """The live session ``token`` stands for; SessionError when malformed, foreign,
        altered or expired."""
        if not isinstance(token, str) or not 1 <= len(token) <= MAX_SESSION_TOKEN_LENGTH:
            raise SessionError("session id malformed")
        try:
            encoded = token.encode("ascii")
        except UnicodeEncodeError:
            raise SessionError("session id malformed") from None
        key = hashlib.sha256(encoded).digest()
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and hmac.compare_digest(
            cached.session_id.encode("ascii"), encoded
        ):
            if now >= cached.expires_at:
                with self._lock:
                    self._cache.pop(key, None)
                raise SessionError("session expired")
            return cached
        session = self._unseal(token, encoded)
        if now >= session.expires_at:
            raise SessionError("session expired")
        if self._max_cached:
            with self._lock:
                self._cache[key] = session
                while len(self._cache) > self._max_cached:
                    self._cache.popitem(last=False)
        return session

    def discard(self, token: str) -> None:
        """Forget a cached session (its grant could not be recorded; the token was never
        handed out)."""
        with self._lock:
            self._cache.pop(hashlib.sha256(token.encode("ascii")).digest(), None)

    def __len__(self) -> int:
        """How many opened tokens this process caches."""
        with self._lock:
            return len(self._cache)

    def _unseal(self, token: str, encoded: bytes) -> Session:
        if not token.startswith(SESSION_TOKEN_PREFIX):
            raise SessionError("session unknown or expired")
        body = encoded[len(SESSION_TOKEN_PREFIX):]
        try:
            sealed = base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise SessionError("session id malformed") from None
        if len(sealed) < SESSION_IV_BYTES + 16:
            raise SessionError("session id malformed")
        try:
            plaintext = self._aead.decrypt(
                sealed[:SESSION_IV_BYTES], sealed[SESSION_IV_BYTES:], _SESSION_AAD
            )
        except InvalidTag:
            raise SessionError("session unknown or expired") from None
        try:
            document = json.loads(plaintext)
            session = Session(
                session_id=token,
                tee_public_key=base64.b64decode(document["tee_key"], validate=True),
                claims=_claims_from_token(document["claims"]),
                expires_at=float(document["exp"]),
            )
        except (KeyError, TypeError, ValueError, binascii.Error):
            # Authentic but unreadable: only a broker with this key made it (a bug or a
            # token of an incompatible version); refused all the same.
            raise SessionError("session token unreadable") from None
        return session
