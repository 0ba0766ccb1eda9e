"""The audit ledger's rows, independent of where they are stored.

Both ledgers (``keybroker.ledger`` in SQLite, ``keybroker.ledger_postgres`` in PostgreSQL)
store the same seven columns and the same hash chain (docs/PROTOCOL.md, "Audit ledger").
This module is that shared part: checking what an append is given, encoding its details,
chaining new rows onto the head, turning a stored row back into an entry, and verifying a
chain. Keeping it in one place is what makes the two ledgers agree byte for byte.

Details must be plain JSON (str, numbers, booleans, null, lists, objects): bytes are
refused so that key material cannot slip in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "DECISIONS",
    "GENESIS_HASH",
    "HASH_LABEL",
    "MAX_DETAILS_BYTES",
    "LedgerEntry",
    "LedgerError",
    "LedgerVerification",
    "Row",
    "append_details",
    "canonical_details",
    "chain_rows",
    "entry_from_row",
    "entry_hash",
    "normalized_head",
    "utc_timestamp",
    "validate_event",
    "verify_rows",
]

GENESIS_HASH = "0" * 64
HASH_LABEL = b"sealbeam/audit-ledger/v1"
DECISIONS = ("granted", "denied", "info")
MAX_DETAILS_BYTES = 64 * 1024
_EVENT = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
_HEX_HASH = re.compile(r"^[0-9a-f]{64}$")

# (seq, time, event, decision, details as canonical JSON text, prev_hash, hash), as stored.
Row = tuple[int, str, str, str, str, str, str]


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


def append_details(event: str, decision: str, details: Mapping[str, object]) -> str:
    """Check an append's event and decision; its details as the canonical text to store."""
    validate_event(event)
    if decision not in DECISIONS:
        raise LedgerError(f"decision: expected one of {', '.join(DECISIONS)}, got {decision!r}")
    return canonical_details(details)


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


def utc_timestamp(clock: Callable[[], float]) -> str:
    """The entry time as stored: UTC, microseconds, a trailing Z."""
    moment = datetime.fromtimestamp(clock(), tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def chain_rows(
    head: Sequence[Any] | None,
    appends: Iterable[tuple[str, str, str]],
    clock: Callable[[], float],
) -> list[Row]:
    """The rows that extend the chain whose newest row is ``head`` (``(seq, hash)``; None
    when empty) by each (event, decision, canonical details), in order, hashed and linked."""
    seq, prev_hash = (0, GENESIS_HASH) if head is None else (int(head[0]), str(head[1]))
    rows: list[Row] = []
    for event, decision, details in appends:
        seq += 1
        time_text = utc_timestamp(clock)
        digest = entry_hash(seq, time_text, event, decision, details, prev_hash)
        rows.append((seq, time_text, event, decision, details, prev_hash, digest))
        prev_hash = digest
    return rows


def entry_from_row(row: Sequence[Any]) -> LedgerEntry:
    """A stored row as an entry, its details parsed (LedgerError when they are not JSON)."""
    seq, time_text, event, decision, details, prev_hash, digest = row
    try:
        parsed = json.loads(details)
    except (TypeError, json.JSONDecodeError):
        raise LedgerError(f"entry {seq}: details are not JSON") from None
    return LedgerEntry(seq, time_text, event, decision, parsed, prev_hash, digest)


def verify_rows(rows: Iterable[tuple], expect_head: str | None) -> LedgerVerification:
    """Recompute the chain of ``rows`` (in seq order); with ``expect_head``, require it in it."""
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
