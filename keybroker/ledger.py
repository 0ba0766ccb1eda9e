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
refused so that key material cannot slip in. This module decides nothing; it records.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

__all__ = [
    "DECISIONS",
    "GENESIS_HASH",
    "AuditLedger",
    "LedgerEntry",
    "LedgerError",
    "LedgerVerification",
    "entry_hash",
]

GENESIS_HASH = "0" * 64
HASH_LABEL = b"sealbeam/audit-ledger/v1"
DECISIONS = ("granted", "denied", "info")
MAX_DETAILS_BYTES = 64 * 1024
_EVENT = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
_HEX_HASH = re.compile(r"^[0-9a-f]{64}$")

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


class LedgerError(Exception):
    """The ledger cannot be opened or written, or an entry is malformed."""


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    time: str
    event: str
    decision: str
    details: Mapping[str, object]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class LedgerVerification:
    """The result of ``verify``: ok, or the first bad entry and what was wrong with it."""

    ok: bool
    entries: int
    head: str
    first_bad_seq: int | None = None
    problem: str | None = None

    def summary(self) -> str:
        if self.ok:
            return f"ledger ok: {self.entries} entries, head {self.head}"
        where = f"entry {self.first_bad_seq}: " if self.first_bad_seq is not None else ""
        return f"ledger broken: {where}{self.problem}"


def canonical_details(details: Mapping[str, object]) -> str:
    """The one JSON text of ``details`` that is stored and hashed."""
    if not isinstance(details, Mapping):
        raise LedgerError("details: expected a mapping")
    try:
        text = json.dumps(
            details, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as error:
        raise LedgerError(
            f"details: not plain JSON ({error}); bytes are refused so key material never lands here"
        ) from None
    if len(text) > MAX_DETAILS_BYTES:
        raise LedgerError(f"details: {len(text)} bytes, over the limit of {MAX_DETAILS_BYTES}")
    return text


def validate_event(event: object) -> None:
    """Raise LedgerError unless ``event`` is a lowercase event name."""
    if not isinstance(event, str) or not _EVENT.match(event):
        raise LedgerError(f"event: expected a lowercase name, got {event!r}")


def normalized_head(expect_head: str | None) -> str | None:
    """An anchored head hash as 64 lowercase hex digits (LedgerError otherwise)."""
    if expect_head is None:
        return None
    expect_head = expect_head.strip().lower()
    if not _HEX_HASH.match(expect_head):
        raise LedgerError("expect_head: expected 64 hex digits")
    return expect_head


def entry_hash(
    seq: int, time_text: str, event: str, decision: str, details: str, prev_hash: str
) -> str:
    """SHA-256 over label, seq (u64) and each text field as u32 length + UTF-8, prev hash raw."""
    digest = hashlib.sha256()
    digest.update(struct.pack(">I", len(HASH_LABEL)) + HASH_LABEL)
    digest.update(struct.pack(">Q", seq))
    for field in (time_text, event, decision, details):
        encoded = field.encode("utf-8")
        digest.update(struct.pack(">I", len(encoded)) + encoded)
    digest.update(bytes.fromhex(prev_hash))
    return digest.hexdigest()


def _utc_timestamp(clock: Callable[[], float]) -> str:
    moment = datetime.fromtimestamp(clock(), tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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

    def append(self, event: str, decision: str, details: Mapping[str, object]) -> LedgerEntry:
        """Add one entry at the head of the chain and return it once it is durable.

        Concurrent appends of this process are committed together (group commit): the
        first caller writes every entry queued so far in one transaction and one sync while
        the others wait for their entry's outcome. Each caller returns only after the
        transaction holding its entry committed, or gets the LedgerError that undid it.
        """
        validate_event(event)
        if decision not in DECISIONS:
            raise LedgerError(f"decision: expected one of {', '.join(DECISIONS)}, got {decision!r}")
        details_text = canonical_details(details)
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
                        seq, prev_hash = (0, GENESIS_HASH) if row is None else (row[0], row[1])
                        entries = []
                        for pending in batch:
                            seq += 1
                            time_text = _utc_timestamp(self._clock)
                            digest = entry_hash(seq, time_text, pending.event, pending.decision,
                                                pending.details, prev_hash)
                            entries.append((seq, time_text, pending.event, pending.decision,
                                            pending.details, prev_hash, digest))
                            prev_hash = digest
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
                rows = self._connection.execute(
                    "SELECT seq, time, event, decision, details, prev_hash, hash"
                    " FROM ledger ORDER BY seq"
                ).fetchall()
            except sqlite3.Error as error:
                raise LedgerError(f"cannot read ledger {self._path}: {error}") from None
        for seq, time_text, event, decision, details, prev_hash, digest in rows:
            try:
                parsed = json.loads(details)
            except (TypeError, json.JSONDecodeError):
                raise LedgerError(f"entry {seq}: details are not JSON") from None
            yield LedgerEntry(seq, time_text, event, decision, parsed, prev_hash, digest)

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
                cursor = self._connection.execute(
                    "SELECT seq, time, event, decision, details, prev_hash, hash"
                    " FROM ledger ORDER BY seq"
                )
                return _verify_rows(cursor, expect_head)
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

    def succeed(self, row: tuple[int, str, str, str, str, str, str]) -> None:
        seq, time_text, event, decision, details, prev_hash, digest = row
        self.entry = LedgerEntry(
            seq, time_text, event, decision, json.loads(details), prev_hash, digest
        )
        self.finished = True

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.finished = True

    def outcome(self) -> LedgerEntry:
        if self.error is not None:
            raise self.error
        assert self.entry is not None
        return self.entry


def _verify_rows(rows: Iterator[tuple], expect_head: str | None) -> LedgerVerification:
    expected_seq = 1
    previous = GENESIS_HASH
    anchor_found = expect_head is None or hmac.compare_digest(expect_head, GENESIS_HASH)
    count = 0
    for row in rows:
        problem = _row_problem(row, expected_seq, previous)
        if problem is not None:
            seq = row[0] if isinstance(row[0], int) else expected_seq
            return LedgerVerification(False, count, previous, first_bad_seq=seq, problem=problem)
        previous = row[6]
        if not anchor_found and hmac.compare_digest(previous, expect_head or ""):
            anchor_found = True
        expected_seq += 1
        count += 1
    if not anchor_found:
        return LedgerVerification(
            False,
            count,
            previous,
            problem=f"anchored head {expect_head} is not in the ledger "
            "(entries were cut off the end, or the ledger was replaced)",
        )
    return LedgerVerification(True, count, previous)


def _row_problem(row: tuple, expected_seq: int, previous: str) -> str | None:
    seq, time_text, event, decision, details, prev_hash, digest = row
    if not isinstance(seq, int):
        return "sequence number is not an integer"
    texts = {"time": time_text, "event": event, "decision": decision, "details": details}
    for column, value in {**texts, "prev_hash": prev_hash, "hash": digest}.items():
        if not isinstance(value, str):
            return f"column {column} is not text"
    if not _HEX_HASH.match(prev_hash) or not _HEX_HASH.match(digest):
        return "prev_hash or hash is not 64 lowercase hex digits"
    if seq != expected_seq:
        return f"expected sequence number {expected_seq} here (an entry was removed or inserted)"
    if not hmac.compare_digest(prev_hash, previous):
        return (
            f"prev_hash does not match the hash of entry {seq - 1} "
            "(entries were removed, reordered or altered)"
        )
    recomputed = entry_hash(seq, time_text, event, decision, details, prev_hash)
    if not hmac.compare_digest(recomputed, digest):
        return "hash does not match the entry's content (the entry or its hash was altered)"
    return None
