"""The spent-nonce set in PostgreSQL, shared by every broker host on one ``ledger_url``.

Why: a challenge nonce is stateless (sessions.py) and any broker holding the same
``challenge.key`` accepts it; with the SQLite set (spent_nonces.py) each host kept its own
set, so a nonce could open one session per host. Brokers that share a PostgreSQL ledger
keep their spent nonces in the same database, so a nonce is spent once across all hosts.
What it does: the interface and guarantees of ``SpentNonces``. ``spend`` is one
``INSERT ... ON CONFLICT DO NOTHING`` under the primary key: of two concurrent spends, on
any hosts, exactly one inserts the row, and the other's row count of 0 is
``NonceAlreadySpent``. Expired rows are pruned at most once a second (``FOR UPDATE SKIP
LOCKED``, so hosts pruning at once do not wait on each other) and the set is bounded by
``max_entries`` live rows (``CapacityError``; counted at most once a second, so the bound
holds to within what the other hosts spend in that second). A connection the server dropped
fails the call that notices it and is replaced on the next. Every database error is a
``NonceStoreError``: the attestation is refused (503), never let through unrecorded.
Expiry is read on each host's own clock (the injected ``clock``); rows are kept
``PRUNE_GRACE_SECONDS`` past expiry, so a host whose clock lags the pruning host's by less
than that still finds a nonce spent until it sees it expire.
What it does not: it does not check MACs or expiry of nonces (``ChallengeIssuer`` does),
create the database, or keep a password (libpq finds it, as for ``PostgresLedger``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from keybroker.postgres_connection import KeptConnection, import_psycopg, server_reason
from keybroker.service.spent_nonces import (
    PRUNE_INTERVAL_SECONDS,
    CapacityError,
    NonceAlreadySpent,
    NonceStoreError,
)

__all__ = ["PRUNE_GRACE_SECONDS", "SCHEMA_LOCK_KEY", "PostgresSpentNonces"]

SCHEMA_LOCK_KEY = 0x5EA1B0CE  # serializes the CREATE ... IF NOT EXISTS of hosts starting at once
PRUNE_GRACE_SECONDS = 60.0

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS sealbeam_spent_nonces (
        nonce BYTEA PRIMARY KEY,
        expires_at DOUBLE PRECISION NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS sealbeam_spent_nonces_expiry"
    " ON sealbeam_spent_nonces (expires_at)",
)
_INSERT = (
    "INSERT INTO sealbeam_spent_nonces (nonce, expires_at) VALUES (%s, %s)"
    " ON CONFLICT (nonce) DO NOTHING"
)
_PRUNE = (
    "DELETE FROM sealbeam_spent_nonces WHERE nonce IN ("
    " SELECT nonce FROM sealbeam_spent_nonces WHERE expires_at <= %s FOR UPDATE SKIP LOCKED)"
)
_COUNT_LIVE = "SELECT count(*) FROM sealbeam_spent_nonces WHERE expires_at > %s"


class PostgresSpentNonces:
    """Spent nonces in a PostgreSQL table shared by broker hosts. Thread-safe (one
    connection, one lock)."""

    def __init__(self, url: str, max_entries: int, clock: Callable[[], float]) -> None:
        psycopg = import_psycopg(NonceStoreError, "the PostgreSQL spent-nonce set")
        self._errors = psycopg.Error
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._last_prune = float("-inf")
        self._count = 0
        try:
            self._kept = KeptConnection(
                psycopg, url, lambda: NonceStoreError("the spent-nonce set was closed"))
            connection = self._kept.live()
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
                for statement in _SCHEMA:
                    connection.execute(statement)
        except psycopg.Error as error:
            raise NonceStoreError(
                f"cannot open the PostgreSQL spent-nonce set: {server_reason(error)}"
            ) from None

    def is_spent(self, key: bytes) -> bool:
        """Whether ``key`` was spent (by any host) and has not expired by this host's clock."""
        now = self._clock()
        with self._lock:
            try:
                row = self._kept.live().execute(
                    "SELECT 1 FROM sealbeam_spent_nonces WHERE nonce = %s AND expires_at > %s",
                    (key, now),
                ).fetchone()
            except self._errors as error:
                raise NonceStoreError(
                    f"cannot read the spent-nonce set: {server_reason(error)}"
                ) from None
        return row is not None

    def spend(self, key: bytes, expires_at: float) -> None:
        """Record ``key`` as spent until ``expires_at``.

        NonceAlreadySpent when some host spent it first; CapacityError when the set holds
        ``max_entries`` live nonces; NonceStoreError when it cannot be recorded.
        """
        now = self._clock()
        with self._lock:
            try:
                connection = self._kept.live()
                if (now - self._last_prune >= PRUNE_INTERVAL_SECONDS
                        or self._count + 1 >= self._max_entries):
                    self._prune_and_count(connection, now)
                    if self._count >= self._max_entries:
                        raise CapacityError("too many nonces in use; retry later")
                inserted = connection.execute(_INSERT, (key, expires_at)).rowcount
            except self._errors as error:
                raise NonceStoreError(
                    f"cannot record the nonce as spent: {server_reason(error)}"
                ) from None
            if inserted != 1:
                raise NonceAlreadySpent()
            self._count += 1

    def _prune_and_count(self, connection: Any, now: float) -> None:
        """Drop rows expired for longer than the grace and count the live ones (at most once
        a second, or near the bound)."""
        connection.execute(_PRUNE, (now - PRUNE_GRACE_SECONDS,))
        (count,) = connection.execute(_COUNT_LIVE, (now,)).fetchone()
        self._count = int(count)
        self._last_prune = now

    def __len__(self) -> int:
        """How many live spent nonces the set holds (all hosts' spends)."""
        now = self._clock()
        with self._lock:
            try:
                (count,) = self._kept.live().execute(_COUNT_LIVE, (now,)).fetchone()
            except self._errors as error:
                raise NonceStoreError(
                    f"cannot read the spent-nonce set: {server_reason(error)}"
                ) from None
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._kept.close()
