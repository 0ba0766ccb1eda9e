"""What a run set aside, read back for ``custody_run.verify_run``: its dead-letter files
(``dead-letter/*.jsonl``) and late files (``late/*.jsonl``, streaming runs).

Why apart: both name what they hold the same way — an envelope id for a whole input, or
``<stream id>#<index ranges>`` (``envelope.index_ranges``) for some records of a record
stream — and the run check counts them the same way, as records accounted for. A late
line's sealed bytes are read (without a key) to confirm they are the record its
``record_id`` names.

What it does not: it opens nothing (no key) and judges nothing against the inputs or the
outputs; ``verify_run`` does.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envelope import (
    STREAM_RECORD_MARK,
    EnvelopeError,
    parse_index_ranges,
    read_header,
    read_stream_record,
)

from .custody import CustodyError

__all__ = ["SetAside", "is_envelope_id", "read_dead_letters", "read_late_records"]


@dataclass
class SetAside:
    """Records a run set aside (dead letters, or late records): ids of whole inputs, stream
    records by stream id (``<stream id>#<indices>``), records in all, (dead letters only)
    how many stand for lines that were not envelopes, and (late records only) what is wrong
    with the lines."""

    ids: set[str] = field(default_factory=set)
    pieces: dict[str, set[int]] = field(default_factory=dict)
    records: int = 0
    unnamed: int = 0
    reasons: list[str] = field(default_factory=list)


def _stream_records(record_id: str) -> tuple[str, set[int] | None]:
    """(stream id, indices) of a ``<stream id>#<index ranges>`` name; indices ``None`` when
    the name is not one."""
    envelope_id, mark, ranges = record_id.partition(STREAM_RECORD_MARK)
    if not mark or not is_envelope_id(envelope_id):
        return envelope_id, None
    return envelope_id, parse_index_ranges(ranges)


def read_dead_letters(files: Iterable[Path]) -> SetAside:
    """What the dead-letter files stand for (a line with ``records`` 0 stands for none)."""
    dead = SetAside()
    for path, entry in _entries(files, "dead-letter file", "a dead letter"):
        try:
            count = int(entry.get("records", 0))
            record_id = str(entry["record_id"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CustodyError(f"dead-letter file {path.name} has a line that is not "
                               "a dead letter") from None
        dead.records += count
        if count < 1:
            continue
        envelope_id, indices = _stream_records(record_id)
        if indices:
            dead.pieces.setdefault(envelope_id, set()).update(indices)
        elif is_envelope_id(record_id):
            dead.ids.add(record_id)
        else:
            dead.unnamed += count
    return dead


def _entries(files: Iterable[Path], kind: str, what: str) -> Iterator[tuple[Path, Any]]:
    """Each non-blank line of each file, parsed as JSON; a line that is not JSON is a
    CustodyError naming the file."""
    for path in files:
        with path.open("rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    yield path, json.loads(line)
                except ValueError:
                    raise CustodyError(f"{kind} {path.name} has a line that is not "
                                       f"{what}") from None


def read_late_records(files: Iterable[Path]) -> SetAside:
    """What the late files hold: a v1 record (or batch envelope) by its envelope id, one
    record each; a stream's records by ``<stream id>#<indices>``. Each line's sealed bytes
    must be the record its id names; a record late twice is a reason."""
    late = SetAside()
    for path, entry in _entries(files, "late file", "a late record"):
        try:
            record_id = str(entry["record_id"])
            sealed = base64.b64decode(str(entry["sealed_b64"]), validate=True)
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise CustodyError(f"late file {path.name} has a line that is not a "
                               "late record") from None
        envelope_id, indices = _stream_records(record_id)
        if indices:
            named = _late_excerpt_name(sealed)
            seen = late.pieces.setdefault(envelope_id, set())
            again = seen & indices
            seen.update(indices)
            late.records += len(indices)
        elif is_envelope_id(record_id):
            named = _late_envelope_name(sealed)
            again = {0} if record_id in late.ids else set()
            late.ids.add(record_id)
            late.records += 1
        else:
            raise CustodyError(f"late file {path.name} has a line whose record_id "
                               f"{record_id!r} names no envelope or stream record")
        if named != record_id:
            late.reasons.append(f"late record {record_id} in {path.name} holds "
                                f"sealed bytes of {named or 'no envelope'}")
        if again:
            late.reasons.append(f"late record {record_id} is in the late files "
                                "more than once")
    return late


def _late_envelope_name(sealed: bytes) -> str:
    try:
        header, _ = read_header(sealed)
    except EnvelopeError:
        return ""
    return header.envelope_id.hex()


def _late_excerpt_name(sealed: bytes) -> str:
    try:
        excerpt = read_stream_record(sealed)
    except EnvelopeError:
        return ""
    return f"{excerpt.header.envelope_id.hex()}{STREAM_RECORD_MARK}{excerpt.index}"


def is_envelope_id(record_id: str) -> bool:
    return len(record_id) == 32 and all(c in "0123456789abcdef" for c in record_id)
