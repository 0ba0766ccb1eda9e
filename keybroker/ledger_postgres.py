"""The audit ledger in PostgreSQL: one hash chain shared by several broker replicas.

What it does: the same entries, hashes and checks as ``keybroker.ledger.AuditLedger`` (the
SQLite default; both take them from ``keybroker.ledger_rows``), in a PostgreSQL table, so
brokers behind one address append to one chain.
Each append is one transaction that first takes a transaction-level advisory lock, then
reads the head and inserts the next entry: appends from every replica are serialized, and
the primary key on ``seq`` refuses a second entry at a position even if the lock were
bypassed, so the chain cannot fork. Triggers refuse UPDATE and DELETE as a guard against
mistakes; the chain and the signed checkpoints, not the triggers, detect tampering.

What it does not: it does not create the database or its roles, and it keeps no password:
pass a ``postgresql://user@host:port/db`` URL and let libpq find the password (PGPASSWORD,
~/.pgpass, a service file). Requires the ``postgres`` extra (psycopg 3).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from keybroker.ledger_rows import (
    GENESIS_HASH,
    LedgerEntry,
    LedgerError,
    LedgerVerification,
    append_details,
    chain_rows,
    entry_from_row,
    normalized_head,
    verify_rows,
)
from keybroker.postgres_connection import KeptConnection, import_psycopg, server_reason

__all__ = ["ADVISORY_LOCK_KEY", "PostgresLedger"]

ADVISORY_LOCK_KEY = 0x5EA1BEA0  # one lock for every broker appending to this database

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS sealbeam_ledger (
        seq BIGINT PRIMARY KEY,
        time TEXT NOT NULL,
        event TEXT NOT NULL,
        decision TEXT NOT NULL,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )
    """,
    """
    CREATE OR REPLACE FUNCTION sealbeam_ledger_append_only() RETURNS trigger AS $$
    BEGIN RAISE EXCEPTION 'the audit ledger is append-only'; END;
    $$ LANGUAGE plpgsql
    """,
    "DROP TRIGGER IF EXISTS sealbeam_ledger_append_only ON sealbeam_ledger",
    """
    CREATE TRIGGER sealbeam_ledger_append_only BEFORE UPDATE OR DELETE ON sealbeam_ledger
    FOR EACH ROW EXECUTE FUNCTION sealbeam_ledger_append_only()
    """,
)
_SELECT_ALL = (
    "SELECT seq, time, event, decision, details, prev_hash, hash FROM sealbeam_ledger ORDER BY seq"
)


class PostgresLedger:
    """A hash-chained ledger in PostgreSQL. Thread-safe (one connection, one lock)."""

    def __init__(
        self,
        url: str,
        *,
        read_only: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        psycopg = import_psycopg(LedgerError, "the PostgreSQL ledger")
        self._errors = psycopg.Error
        self._url = url
        self._clock = clock
        self._read_only = read_only
        self._lock = threading.Lock()
        try:
            self._kept = KeptConnection(
                psycopg, url, lambda: LedgerError("the PostgreSQL ledger was closed"))
            connection = self._kept.live()
            if read_only:
                connection.execute("SELECT seq FROM sealbeam_ledger LIMIT 1").fetchall()
            else:
                with connection.transaction():
                    connection.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
                    for statement in _SCHEMA:
                        connection.execute(statement)
        except psycopg.Error as error:
            raise LedgerError(
                f"cannot open the PostgreSQL ledger: {server_reason(error)}") from None

    @property
    def path(self) -> None:
        """No file: the ledger lives in PostgreSQL."""
        return None

    @property
    def commits_locally(self) -> bool:
        """A network round trip per commit: never run on an event loop
        (``keybroker.service.ledger_writer`` commits it on a thread)."""
        return False

    def append(self, event: str, decision: str, details: Mapping[str, object]) -> LedgerEntry:
        """Add one entry at the head of the shared chain and return it."""
        (entry,) = self.append_prepared([(event, decision, append_details(event, decision,
                                                                           details))])
        return entry

    def append_prepared(self, appends: Sequence[tuple[str, str, str]]) -> list[LedgerEntry]:
        """Add entries already checked by ``append_details`` in one transaction: all of them
        or, with a LedgerError, none (see ``AuditLedger.append_prepared``)."""
        if self._read_only:
            raise LedgerError("the PostgreSQL ledger was opened read-only")
        if not appends:
            return []
        with self._lock:
            try:
                connection = self._kept.live()
                with connection.transaction():
                    connection.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
                    row = connection.execute(
                        "SELECT seq, hash FROM sealbeam_ledger ORDER BY seq DESC LIMIT 1"
                    ).fetchone()
                    entries = chain_rows(row, appends, self._clock)
                    with connection.cursor() as cursor:
                        cursor.executemany(
                            "INSERT INTO sealbeam_ledger"
                            " (seq, time, event, decision, details, prev_hash, hash)"
                            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                            entries,
                        )
            except self._errors as error:
                raise LedgerError(
                    f"cannot append to the PostgreSQL ledger: {server_reason(error)}"
                ) from None
        return [entry_from_row(entry) for entry in entries]

    def _rows(self) -> list[tuple]:
        with self._lock:
            try:
                return [
                    (int(row[0]), *row[1:])
                    for row in self._kept.live().execute(_SELECT_ALL).fetchall()
                ]
            except self._errors as error:
                raise LedgerError(
                    f"cannot read the PostgreSQL ledger: {server_reason(error)}"
                ) from None

    def entries(self) -> Iterator[LedgerEntry]:
        for row in self._rows():
            yield entry_from_row(row)

    def head(self) -> tuple[int, str]:
        row = self._one("SELECT seq, hash FROM sealbeam_ledger ORDER BY seq DESC LIMIT 1")
        return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))

    def first_hash(self) -> str:
        row = self._one("SELECT hash FROM sealbeam_ledger WHERE seq = 1")
        return GENESIS_HASH if row is None else str(row[0])

    def _one(self, query: str) -> tuple | None:
        with self._lock:
            try:
                return self._kept.live().execute(query).fetchone()
            except self._errors as error:
                raise LedgerError(
                    f"cannot read the PostgreSQL ledger: {server_reason(error)}"
                ) from None

    def verify(self, expect_head: str | None = None) -> LedgerVerification:
        return verify_rows(self._rows(), normalized_head(expect_head))

    def close(self) -> None:
        with self._lock:
            self._kept.close()

    def __enter__(self) -> PostgresLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
