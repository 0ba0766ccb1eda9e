"""The spent-nonce set, shared by every broker process on one state directory (SQLite, WAL).

Why: a challenge nonce is stateless (sessions.py) and must be spent at most once; when
several broker processes serve one state (``broker serve --workers N``), the set of spent
nonces must be one set, or a nonce spent through one process could open a second session
through another. What it does: ``spend`` inserts the nonce's random part under a primary
key in ``<state>/nonces.sqlite`` (so of two concurrent spends, in any processes, exactly
one commits), with its expiry; expired rows are pruned as it goes and the table is bounded
(``max_entries`` live nonces: beyond that ``CapacityError``, never forgetting a live one;
the count is taken at most once a second, so with several processes the bound holds to
within what the others spend in that second).
Every failure to read or record is an error (``NonceStoreError``): the caller refuses the
attestation, it never lets the nonce through unrecorded (fail closed).
What it does not: it does not check MACs or expiry of nonces (``ChallengeIssuer`` does), nor
span hosts: brokers on several hosts share a PostgreSQL ``ledger_url`` and keep their spent
nonces there instead (``spent_nonces_postgres.py``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "NONCES_FILE", "CapacityError", "NonceAlreadySpent", "NonceStoreError", "SpentNonces",
]

NONCES_FILE = "nonces.sqlite"
BUSY_TIMEOUT_SECONDS = 10.0
PRUNE_INTERVAL_SECONDS = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spent (
    nonce BLOB PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS spent_expiry ON spent (expires_at);
"""


class CapacityError(Exception):
    """The store is full of live entries; try again later."""


class NonceStoreError(Exception):
    """The spent-nonce set cannot be read or written (the attestation is refused: 503)."""


class NonceAlreadySpent(Exception):
    """The nonce is in the set already."""


class SpentNonces:
    """Spent nonces in a SQLite file shared across processes. Thread-safe."""

    def __init__(
        self, path: Path, max_entries: int, clock: Callable[[], float]
    ) -> None:
        self._path = Path(path)
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._last_prune = float("-inf")
        self._count = 0
        try:
            self._connection = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False,
                timeout=BUSY_TIMEOUT_SECONDS,
            )
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=FULL")
            self._connection.executescript(_SCHEMA)
        except sqlite3.Error as error:
            raise NonceStoreError(f"cannot open the spent-nonce set {self._path.name}: {error}"
                                  ) from None

    def is_spent(self, key: bytes) -> bool:
        """Whether ``key`` was spent (by any process) and has not expired from the set."""
        with self._lock:
            try:
                row = self._connection.execute(
                    "SELECT 1 FROM spent WHERE nonce = ?", (key,)
                ).fetchone()
            except sqlite3.Error as error:
                raise NonceStoreError(f"cannot read the spent-nonce set: {error}") from None
        return row is not None

    def spend(self, key: bytes, expires_at: float) -> None:
        """Record ``key`` as spent until ``expires_at``.

        NonceAlreadySpent when some process spent it first; CapacityError
        when the set holds ``max_entries`` live nonces; NonceStoreError when it cannot be
        recorded.
        """
        now = self._clock()
        with self._lock:
            try:
                self._connection.execute("BEGIN IMMEDIATE")
                try:
                    if (now - self._last_prune >= PRUNE_INTERVAL_SECONDS
                            or self._count + 1 >= self._max_entries):
                        self._prune_and_count(now)
                        if self._count >= self._max_entries:
                            raise CapacityError("too many nonces in use; retry later")
                    self._connection.execute(
                        "INSERT INTO spent (nonce, expires_at) VALUES (?, ?)", (key, expires_at))
                    self._connection.execute("COMMIT")
                except BaseException:
                    self._connection.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError:
                raise NonceAlreadySpent() from None
            except sqlite3.Error as error:
                raise NonceStoreError(f"cannot record the nonce as spent: {error}") from None
            self._count += 1

    def _prune_and_count(self, now: float) -> None:
        """Drop expired rows and count the live ones (at most once a second, or near the
        bound): between counts, other processes' spends are not seen, so the bound holds to
        within what they spend in a second."""
        self._connection.execute("DELETE FROM spent WHERE expires_at <= ?", (now,))
        (self._count,) = self._connection.execute("SELECT COUNT(*) FROM spent").fetchone()
        self._last_prune = now

    def __len__(self) -> int:
        """How many live spent nonces the set holds."""
        with self._lock:
            try:
                (count,) = self._connection.execute(
                    "SELECT COUNT(*) FROM spent WHERE expires_at > ?", (self._clock(),)
                ).fetchone()
            except sqlite3.Error as error:
                raise NonceStoreError(f"cannot read the spent-nonce set: {error}") from None
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._connection.close()
