"""Where every opened row of a (region, producer) ends up: output, violation, or suppressed.

What it does: the batch processor hands over the opened rows as ``RowPart``s (the rows of
all record envelopes, and one part per batch envelope), each row tagged with the envelope it
came from. ``decide_region_outcome`` applies the compiled spec to the parts that share a
schema (one ``apply`` per schema, so k-anonymity sees as many rows as possible), after
taking out the rows that break a limit every spec shares (``records.row_limit_problems``),
and maps every violation back to its envelope:

- an envelope all of whose rows break the spec (a record envelope has one row) is dead-lettered
  whole: its original sealed bytes, and the reason ``column X: reason`` for each broken row;
- a batch envelope with some broken rows keeps its good rows in the output; its broken rows
  (all their columns, as opened) are returned as ``PartialDeadRows`` for the processor to
  reseal under an output key of the region;
- rows suppressed for k-anonymity are counted.

Accounting rule (docs/ARCHITECTURE.md, "Decisions worth knowing"): an envelope counts in the
output's ``source_count`` (-> ``records_out``) when at least one of its rows was emitted or
suppressed, or it had no rows at all; otherwise it is one whole dead letter (``records=1``).
A partial dead letter stands for rows, not envelopes (``records=0``, ``rows=k``), so
``records_in == records_out + dead_letters`` holds.

What it does not: no keys, no sealing, no I/O; reasons never contain a data value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from envelope import (
    STREAM_RECORD_MARK,
    EnvelopeHeader,
    ParsedEnvelope,
    StreamPiece,
    extract_stream_records,
    index_ranges,
    piece_records,
    record_envelope_id,
)

from .features import CompiledSpec
from .records import row_limit_problems

MAX_LISTED_ROWS = 20          # rows named in one dead letter's reason
MAX_REASON_CHARS = 4000


@dataclass(frozen=True)
class DeadLetter:
    """One input (or refused output) that could not go on, still sealed, with why.

    ``sealed`` holds envelope bytes: the input as it arrived when it parsed as an envelope, a
    resealed batch of an envelope's violating rows, or a refused output; it is empty when the
    input was not an envelope (it could be anything, including a partner's plaintext).
    ``records`` is how many input envelopes it stands for (1, 0 for a batch's violating rows,
    or a refused output's source count); ``rows`` how many rows a resealed part holds.
    """

    record_id: str
    reason: str
    stage: str
    sealed: bytes
    records: int = 1
    rows: int = 0


@dataclass(eq=False, slots=True)
class Source:
    """One input envelope, parsed once (compared by identity) — or one record of a record
    stream (``index`` set): each of a stream's records is a source of its own, one row, so
    its fate is decided per record.

    It holds the ``ParsedEnvelope`` so that opening does not parse the header again; the
    header and the original sealed bytes (for dead letters) come from it. A v1 record that
    ``envelope.RecordSorter`` parsed holds its bytes instead (no header object is built for
    it; its envelope id is at a fixed offset). ``records`` is how many input records it
    stands for: 1, or a whole record stream's (or piece's) count. A piece of a stream
    (``envelope.StreamPiece``, some of its records split off without a key) stands where a
    ``ParsedEnvelope`` would: it has the stream's header and its bytes.
    """

    parsed: ParsedEnvelope | StreamPiece | bytes
    records: int = 1
    index: int | None = None

    @property
    def header(self) -> EnvelopeHeader:
        """The parsed header (not for a sorted v1 record: see ``envelope_id``)."""
        parsed = self.parsed
        if type(parsed) is bytes:
            raise TypeError("a sorted v1 record source has no header object")
        return parsed.header

    @property
    def envelope_id(self) -> bytes:
        parsed = self.parsed
        if type(parsed) is bytes:
            return record_envelope_id(parsed)
        return parsed.header.envelope_id

    @property
    def envelope(self) -> bytes:
        parsed = self.parsed
        return parsed if type(parsed) is bytes else parsed.data


def unparsed_record_id(envelope: bytes) -> str:
    """An id for bytes that are not an envelope: a digest, never the content."""
    return "sha256:" + hashlib.sha256(envelope).hexdigest()[:32]


def dead_letter(source: Source, stage: str, reason: str) -> DeadLetter:
    """The whole input envelope as a dead letter (its original sealed bytes).

    A record of a stream is a dead letter of its own, named ``<envelope id>#<index>``,
    carrying the record's sealed excerpt (``envelope.extract_stream_record``: the stream's
    header and that record's frame, openable only with the DEK), not the whole stream. A
    piece of a stream that fails whole is named ``<envelope id>#<its indices>``
    (``index_ranges``) and carries the piece.
    """
    return dead_letters([(source, stage, reason)])[0]


def dead_letters(failed: Iterable[tuple[Source, str, str]]) -> list[DeadLetter]:
    """``dead_letter`` for each ``(source, stage, reason)``, in order; the excerpts of a
    stream's (or piece's) records are cut from one walk of it, not one walk per record."""
    failed = list(failed)
    wanted: dict[int, tuple[ParsedEnvelope | StreamPiece, list[int]]] = {}
    for source, _, _ in failed:
        if source.index is not None:
            wanted.setdefault(id(source.parsed), (source.parsed, []))[1].append(source.index)
    excerpts: dict[tuple[int, int], bytes] = {}
    for key, (parsed, indices) in wanted.items():
        unique = list(dict.fromkeys(indices))
        cut = (piece_records(parsed, unique) if isinstance(parsed, StreamPiece)
               else extract_stream_records(parsed, unique))
        excerpts.update(((key, index), excerpt) for index, excerpt in zip(unique, cut,
                                                                          strict=True))
    letters = []
    for source, stage, reason in failed:
        envelope_id = source.envelope_id.hex()
        if source.index is not None:
            letters.append(DeadLetter(f"{envelope_id}{STREAM_RECORD_MARK}{source.index}",
                                      _bounded(reason), stage,
                                      excerpts[(id(source.parsed), source.index)]))
        elif type(source.parsed) is StreamPiece:   # a piece, whole: named by its records
            letters.append(DeadLetter(
                f"{envelope_id}{STREAM_RECORD_MARK}{index_ranges(source.parsed.indices)}",
                _bounded(reason), stage, source.envelope, records=source.records))
        else:
            letters.append(DeadLetter(envelope_id, _bounded(reason), stage, source.envelope,
                                      records=source.records))
    return letters


@dataclass
class RowPart:
    """Rows with one schema, each tagged with its envelope and its row in that envelope."""

    table: pa.Table
    sources: list[Source]
    row_source: np.ndarray            # per row: index into ``sources``
    row_in_source: np.ndarray         # per row: row index inside its envelope
    originals: list[pa.Table | None]  # per source: the opened batch (all columns) or None

    @classmethod
    def of_records(cls, table: pa.Table, row_sources: Sequence[Source]) -> RowPart:
        """One row per record envelope, in order."""
        count = len(row_sources)
        return cls(table.replace_schema_metadata(None), list(row_sources),
                   np.arange(count, dtype=np.int64), np.zeros(count, dtype=np.int64),
                   [None] * count)

    @classmethod
    def of_batch(cls, declared: pa.Table, source: Source, original: pa.Table) -> RowPart:
        count = declared.num_rows
        return cls(declared.replace_schema_metadata(None), [source],
                   np.zeros(count, dtype=np.int64), np.arange(count, dtype=np.int64),
                   [original])

    @staticmethod
    def sources_of(parts: Sequence[RowPart]) -> list[Source]:
        return [source for part in parts for source in part.sources]


@dataclass(frozen=True)
class PartialDeadRows:
    """A batch envelope's violating rows (all opened columns) and why, to be resealed."""

    source: Source
    rows: pa.Table
    reason: str


@dataclass
class RegionOutcome:
    tables: list[pa.Table] = field(default_factory=list)
    kept_sources: list[Source] = field(default_factory=list)
    whole: list[tuple[Source, str]] = field(default_factory=list)
    partial: list[PartialDeadRows] = field(default_factory=list)
    rows_suppressed: int = 0

    def table(self, schema: pa.Schema) -> pa.Table:
        """Every emitted row as one table of the spec's output schema (maybe empty)."""
        if not self.tables:
            return schema.empty_table()
        return pa.concat_tables(self.tables).cast(schema)

    def whole_dead_letters(self, stage: str) -> list[DeadLetter]:
        return dead_letters((source, stage, reason) for source, reason in self.whole)


@dataclass
class _SourceRows:
    """What happened to the rows of one envelope."""

    total: int = 0
    broken: dict[int, list[tuple[str, str]]] = field(default_factory=dict)


def _grouped_by_schema(parts: Sequence[RowPart]) -> list[list[RowPart]]:
    groups: list[list[RowPart]] = []
    for part in parts:
        for group in groups:
            if group[0].table.schema.equals(part.table.schema):
                group.append(part)
                break
        else:
            groups.append([part])
    return groups


def decide_region_outcome(compiled: CompiledSpec, parts: Sequence[RowPart],
                          keys: Mapping[str, bytes], region: str) -> RegionOutcome:
    """Apply ``compiled`` to ``parts`` and decide each envelope's fate (module docstring).

    Raises ``features.FeatureError`` when the spec cannot run at all (a missing key); rows
    that break it are never errors.
    """
    outcome = RegionOutcome()
    per_source: dict[int, _SourceRows] = {}
    by_id: dict[int, Source] = {}
    originals: dict[int, pa.Table | None] = {}
    for group in _grouped_by_schema(parts):
        _apply_group(compiled, group, keys, region, outcome, per_source)
        for part in group:
            for source, original in zip(part.sources, part.originals, strict=True):
                by_id[id(source)] = source
                originals[id(source)] = original
    for source_id, rows in per_source.items():
        source = by_id[source_id]
        if not rows.broken:
            outcome.kept_sources.append(source)
        elif len(rows.broken) == rows.total:
            outcome.whole.append((source, _reason(rows, whole=True)))
        else:
            outcome.kept_sources.append(source)
            original = originals[source_id]
            assert original is not None, "only a batch envelope has more than one row"
            broken = pa.array(sorted(rows.broken), type=pa.int64())
            outcome.partial.append(PartialDeadRows(source, original.take(broken),
                                                   _reason(rows, whole=False)))
    return outcome


def _apply_group(compiled: CompiledSpec, group: Sequence[RowPart], keys: Mapping[str, bytes],
                 region: str, outcome: RegionOutcome, per_source: dict[int, _SourceRows]
                 ) -> None:
    table = pa.concat_tables([part.table for part in group])
    source_ids = np.concatenate([
        np.array([id(s) for s in part.sources], dtype=object)[part.row_source]
        for part in group]) if table.num_rows else np.array([], dtype=object)
    row_in_source = np.concatenate([part.row_in_source for part in group])
    for part in group:
        for source in part.sources:
            per_source.setdefault(id(source), _SourceRows())
    for source_id in source_ids:
        per_source[source_id].total += 1

    limits = row_limit_problems(table, region)
    within = np.array([problem is None for problem in limits], dtype=bool)
    for row in np.flatnonzero(~within):
        per_source[source_ids[row]].broken.setdefault(int(row_in_source[row]), []).append(
            limits[row])
    kept_rows = np.flatnonzero(within)
    applied = compiled.apply(table.take(pa.array(kept_rows, type=pa.int64())), keys)
    for violation in applied.violations:
        row = kept_rows[violation.row_index]
        per_source[source_ids[row]].broken.setdefault(int(row_in_source[row]), []).append(
            (violation.column, violation.reason))
    outcome.tables.append(applied.table)
    outcome.rows_suppressed += applied.suppressed_rows


def _reason(rows: _SourceRows, *, whole: bool) -> str:
    def row_text(problems: list[tuple[str, str]]) -> str:
        return "; ".join(f"column {column}: {reason}" for column, reason in problems)

    if rows.total == 1:
        [problems] = rows.broken.values()
        return _bounded(row_text(problems))
    listed = sorted(rows.broken.items())[:MAX_LISTED_ROWS]
    head = (f"all {rows.total} rows break the spec" if whole
            else f"{len(rows.broken)} of {rows.total} rows break the spec")
    text = head + ": " + " | ".join(f"row {row}: {row_text(problems)}"
                                    for row, problems in listed)
    if len(rows.broken) > len(listed):
        text += f" | ... and {len(rows.broken) - len(listed)} more rows"
    return _bounded(text)


def _bounded(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS - 3] + "..."
