"""The audit ledger: an append-only, hash-chained record of every broker decision, in SQLite.

Each entry holds its sequence number, time, event, decision, a JSON object of details and
the previous entry's hash; its own hash is SHA-256 over a canonical encoding of all of
those (docs/PROTOCOL.md, "Audit ledger"). ``verify`` recomputes the chain and names the
first entry that was altered, removed or reordered. SQLite triggers refuse UPDATE and
DELETE as a guard against mistakes; the chain, not the triggers, is what detects tampering.

A chain cannot show that its newest entries were cut off, or that it was recomputed after
rows were deleted: the broker signs checkpoints of its head (``keybroker.checkpoints``),
and ``check_anchor`` compares a ledger with one. A bare head hash kept elsewhere can still
be passed back as ``expect_head``. ``keybroker.ledger_postgres`` holds the same chain in
PostgreSQL for several brokers.

Concurrent appends in one process share a transaction and its sync (group commit): an
append returns once the transaction holding its entry committed, so a grant still waits
for its record, but a burst of N grants costs one sync, not N.

Several broker processes may append to one ledger file (``broker serve --workers N``): an
append holds an exclusive ``flock`` on ``<ledger>.lock`` while it reads the tail and writes
the next entry (inside one SQLite ``BEGIN IMMEDIATE`` transaction), so each append sees
every other process's last entry and the file holds one chain, never a fork. The lock
wakes the next writer as soon as it is released (SQLite's own busy wait sleeps in steps of
milliseconds, which the lock avoids).

Details must be plain JSON (str, numbers, booleans, null, lists, objects): bytes are
refused so that key material cannot slip in. The rows, their hashes and their checks are
``keybroker.ledger_rows``, shared with the PostgreSQL ledger; this module stores them in
SQLite. It decides nothing; it records.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from keybroker.ledger_rows import (
    DECISIONS,
    GENESIS_HASH,
    MAX_DETAILS_BYTES,
    LedgerEntry,
    LedgerError,
    LedgerVerification,
    Row,
    append_details,
    chain_rows,
    entry_from_row,
    entry_hash,
    normalized_head,
    verify_rows,
)

__all__ = [
    "DECISIONS",
    "GENESIS_HASH",
    "MAX_DETAILS_BYTES",
    "AuditLedger",
    "LedgerEntry",
    "LedgerError",
    "LedgerVerification",
    "entry_hash",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    event TEXT NOT NULL,
    decision TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS ledger_append_only_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_append_only_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
"""
_SELECT_ALL = "SELECT seq, time, event, decision, details, prev_hash, hash FROM ledger ORDER BY seq"


class AuditLedger:
    """A hash-chained SQLite ledger. Thread-safe; WAL mode; one writer at a time."""

    def __init__(
        self,
        path: Path,
        *,
        create: bool = True,
        read_only: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open the ledger, creating it unless ``create`` is False.

        ``read_only`` opens an existing ledger without touching it (what ``verify`` wants).
        """
        self._path = Path(path)
        self._clock = clock
        self._read_only = read_only
        self._lock = threading.Lock()
        self._queue_changed = threading.Condition()
        self._queue: list[_PendingEntry] = []
        self._writing = False
        if (read_only or not create) and not self._path.is_file():
            raise LedgerError(f"ledger {self._path} does not exist")
        try:
            if read_only:
                uri = self._path.resolve().as_uri() + "?mode=ro"
                self._connection = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30.0
                )
                self._connection.execute("SELECT seq FROM ledger LIMIT 1").fetchall()
            else:
                self._connection = sqlite3.connect(
                    self._path, isolation_level=None, check_same_thread=False, timeout=30.0
                )
                self._connection.execute("PRAGMA journal_mode=WAL")
                self._connection.execute("PRAGMA synchronous=FULL")
                self._connection.executescript(_SCHEMA)
        except sqlite3.Error as error:
            raise LedgerError(f"cannot open ledger {self._path}: {error}") from None
        self._append_lock: int | None = None
        if not read_only:
            lock_path = self._path.with_name(self._path.name + ".lock")
            try:
                self._append_lock = os.open(
                    lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
                )
            except OSError as error:
                self._connection.close()
                raise LedgerError(
                    f"cannot open the ledger's lock file {lock_path}: {error.strerror}"
                ) from None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def commits_locally(self) -> bool:
        """A local file: a commit is a local transaction and sync, short enough to run on an
        event loop (``keybroker.service.ledger_writer``)."""
        return True

    def append(self, event: str, decision: str, details: Mapping[str, object]) -> LedgerEntry:
        """Add one entry at the head of the chain and return it once it is durable.

        Concurrent appends of this process are committed together (group commit): the
        first caller writes every entry queued so far in one transaction and one sync while
        the others wait for their entry's outcome. Each caller returns only after the
        transaction holding its entry committed, or gets the LedgerError that undid it.
        """
        details_text = append_details(event, decision, details)
        if self._read_only:
            raise LedgerError(f"ledger {self._path} was opened read-only")
        pending = _PendingEntry(event, decision, details_text)
        with self._queue_changed:
            self._queue.append(pending)
            while not pending.finished:
                if not self._writing:
                    self._writing = True
                    batch, self._queue = self._queue, []
                    break
                self._queue_changed.wait()
            else:
                return pending.outcome()
        try:
            self._write_batch(batch)
        finally:
            with self._queue_changed:
                self._writing = False
                self._queue_changed.notify_all()
        return pending.outcome()

    def append_prepared(self, appends: Sequence[tuple[str, str, str]]) -> list[LedgerEntry]:
        """Add entries already checked by ``append_details`` (event, decision, details text)
        in one transaction and one sync; all of them or, with a LedgerError, none.

        Why: a caller that gathers its own batch (the broker's event-loop writer,
        ``keybroker.service.ledger_writer``) commits it without a thread per entry.
        """
        if self._read_only:
            raise LedgerError(f"ledger {self._path} was opened read-only")
        batch = [_PendingEntry(event, decision, details) for event, decision, details in appends]
        if batch:
            self._write_batch(batch)
        return [pending.outcome() for pending in batch]

    def _write_batch(self, batch: list[_PendingEntry]) -> None:
        """Chain and commit ``batch`` in one transaction; set each entry's outcome."""
        try:
            with self._lock, self._exclusive():
                try:
                    self._connection.execute("BEGIN IMMEDIATE")
                    try:
                        row = self._connection.execute(
                            "SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1"
                        ).fetchone()
                        entries = chain_rows(
                            row,
                            ((p.event, p.decision, p.details) for p in batch),
                            self._clock,
                        )
                        self._connection.executemany(
                            "INSERT INTO ledger (seq, time, event, decision, details, prev_hash,"
                            " hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            entries,
                        )
                        self._connection.execute("COMMIT")
                    except BaseException:
                        self._connection.execute("ROLLBACK")
                        raise
                except sqlite3.Error as error:
                    raise LedgerError(f"cannot append to ledger {self._path}: {error}") from None
        except BaseException as error:
            failure = error if isinstance(error, LedgerError) else LedgerError(
                f"cannot append to ledger {self._path}: {type(error).__name__}")
            for pending in batch:
                pending.fail(failure)
            raise
        for pending, row in zip(batch, entries, strict=True):
            pending.succeed(row)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The inter-process append lock (flock on ``<ledger>.lock``), held for one append."""
        if self._append_lock is None:
            raise LedgerError(f"ledger {self._path} was opened read-only")
        try:
            fcntl.flock(self._append_lock, fcntl.LOCK_EX)
        except OSError as error:
            raise LedgerError(f"cannot lock ledger {self._path}: {error.strerror}") from None
        try:
            yield
        finally:
            fcntl.flock(self._append_lock, fcntl.LOCK_UN)

    def entries(self) -> Iterator[LedgerEntry]:
        """Every entry in sequence order (a snapshot per call)."""
        with self._lock:
            try:
                rows = self._connection.execute(_SELECT_ALL).fetchall()
            except sqlite3.Error as error:
                raise LedgerError(f"cannot read ledger {self._path}: {error}") from None
        for row in rows:
            yield entry_from_row(row)

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the newest entry; (0, GENESIS_HASH) when empty."""
        with self._lock:
            row = self._connection.execute(
                "SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))

    def first_hash(self) -> str:
        """Hash of entry 1 (which names this chain in checkpoints); GENESIS_HASH when empty."""
        with self._lock:
            row = self._connection.execute("SELECT hash FROM ledger WHERE seq = 1").fetchone()
        return GENESIS_HASH if row is None else str(row[0])

    def verify(self, expect_head: str | None = None) -> LedgerVerification:
        """Recompute the chain; with ``expect_head``, also require that anchored hash in it."""
        expect_head = normalized_head(expect_head)
        with self._lock:
            try:
                return verify_rows(self._connection.execute(_SELECT_ALL), expect_head)
            except sqlite3.Error as error:
                raise LedgerError(f"cannot read ledger {self._path}: {error}") from None

    def close(self) -> None:
        with self._lock:
            self._connection.close()
            if self._append_lock is not None:
                os.close(self._append_lock)
                self._append_lock = None

    def __enter__(self) -> AuditLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _PendingEntry:
    """An entry waiting for the group commit that will write it, and what became of it."""

    __slots__ = ("decision", "details", "entry", "error", "event", "finished")

    def __init__(self, event: str, decision: str, details: str) -> None:
        self.event = event
        self.decision = decision
        self.details = details
        self.entry: LedgerEntry | None = None
        self.error: BaseException | None = None
        self.finished = False

    def succeed(self, row: Row) -> None:
        self.entry = entry_from_row(row)
        self.finished = True

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.finished = True

    def outcome(self) -> LedgerEntry:
        if self.error is not None:
            raise self.error
        assert self.entry is not None
        return self.entry
