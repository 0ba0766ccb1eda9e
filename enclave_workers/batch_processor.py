"""Open a batch of sealed envelopes, run the feature spec over the rows, and reseal per region.

What it does: given sealed record, record-stream (profile 2) or batch envelopes (possibly
for several keys, regions and producers), it groups them by (wrapped key, region, producer),
obtains each data key once from the ``KeySession``, opens every envelope, reads all record
plaintexts of a (region, producer) with one ``pyarrow.json.read_json`` (the columns the spec
declares), applies the compiled feature spec (``features.CompiledSpec.apply``) with the
named keys it asks for, and writes one output per (region, producer): a sealed batch
envelope (Arrow IPC, format ``sealed-arrow``) or a Parquet file with Parquet Modular
Encryption (``parquet-pme``, master keys from ``pme_keys``), both under output keys the
broker generated for that region. The spec's fingerprint is in every output (the envelope's
``schema_fingerprint`` and context ``sealbeam.spec``; the Parquet schema metadata).

Row outcomes (``row_outcomes``): a row that breaks the spec's input schema (or a limit every
spec shares) is a violation; a record envelope with a violating row is dead-lettered whole
(its original sealed bytes, reason ``column X: ...``); a batch envelope's violating rows are
resealed into a dead-letter batch envelope under an output key of the batch's region, and
the rest of the batch proceeds. Rows suppressed for k-anonymity are counted per output.

Record streams (record profile 2): one ``open_record_stream`` call opens a stream (one HKDF
and commitment check for all of its records); its records join the v1 records' plaintexts,
so one ``read_json`` parses them all. Each record's fate is its own: a record that fails
authentication, JSON parsing or the spec is a dead letter of its own named ``<envelope
id>#<index>``, carrying that record still sealed (the stream's header and the record's
frame, ``envelope.extract_stream_record``; ``row_outcomes``). A failure of the whole stream
(header authentication, a wrong count, the data key) dead-letters all of its records at once
(``records`` = its count). A **piece** of a stream (``SBRX``: some of its records, split off
without a key by the streaming pipeline per event-time window; ``envelope.StreamPiece``) is
taken where a stream is: its header authenticated once, only its records opened
(``open_stream_piece``), each record's fate its own as above.

What it does not: no Beam, no I/O, no logging, and nothing in a dead letter is plaintext.
Transient broker failures (``BrokerUnavailableError``) and a session the broker keeps
rejecting are raised, not dead-lettered, so the runner retries the whole batch instead of
discarding good data.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import resources

import pyarrow as pa

from envelope import (
    KIND_RECORD_STREAM,
    BatchSealer,
    DataKey,
    EnvelopeAuthenticationError,
    EnvelopeError,
    EnvelopeFormatError,
    ParsedEnvelope,
    RecordGroup,
    RecordOpener,
    RecordSorter,
    StreamPiece,
    WrappedKey,
    is_stream_excerpt,
    open_batch_into,
    open_record_stream,
    open_stream_piece,
    parse_envelope,
    read_stream_piece,
    seal_batch,
)
from envelope.keys import memoized_key_id
from keybroker.client import BrokerDeniedError, BrokerError, BrokerNotFoundError
from keybroker.identity import canonical_json

from .features import CompiledSpec, FeatureError, FeatureSpec
from .key_session import KeySession, KeyUnsealError
from .pme_keys import ROLE_FEATURES, ROLE_PSEUDONYMS, master_keys_for, write_pme_table
from .provenance import output_statement
from .records import (
    RecordError,
    json_read_schema,
    parse_records,
    select_columns,
    table_from_ipc,
    table_to_ipc,
)
from .row_outcomes import (
    DeadLetter,
    PartialDeadRows,
    RegionOutcome,
    RowPart,
    Source,
    dead_letter,
    dead_letters,
    decide_region_outcome,
    unparsed_record_id,
)

__all__ = [
    "DEAD_ROWS_KIND",
    "DEFAULT_SPEC_RESOURCE",
    "FEATURES_KIND",
    "MAX_ENVELOPE_BYTES",
    "OUTPUT_FORMATS",
    "PARQUET_PME",
    "SEALED_ARROW",
    "SPEC_CONTEXT_KEY",
    "STAGE_FRAMING",
    "STAGE_PARSE",
    "STAGE_REGION",
    "STAGE_ROUTE",
    "TENANT_KEY",
    "BatchConfigError",
    "BatchProcessor",
    "BatchResult",
    "DeadLetter",
    "PreparedBatch",
    "SealedOutput",
    "broker_key_name",
    "default_feature_spec",
    "unparsed_record_id",
]

MAX_ENVELOPE_BYTES = 64 << 20
FEATURES_KIND = "features"
DEAD_ROWS_KIND = "dead-letter-rows"
SPEC_CONTEXT_KEY = "sealbeam.spec"
SEALED_ARROW = "sealed-arrow"
PARQUET_PME = "parquet-pme"
OUTPUT_FORMATS = (SEALED_ARROW, PARQUET_PME)
TENANT_KEY = "tenant"
TENANT_KEY_PREFIX = "pseudonym/"
DEFAULT_SPEC_RESOURCE = "default_spec.yaml"

# Stages named in dead letters, in pipeline order.
STAGE_FRAMING = "framing"
STAGE_PARSE = "parse"
STAGE_KEY = "key"
STAGE_OPEN = "open"
STAGE_DECODE = "decode"
STAGE_SCHEMA = "schema"
STAGE_FEATURIZE = "featurize"
STAGE_RESEAL = "reseal"
STAGE_REGION = "region"
STAGE_ROUTE = "route"

MAX_PARALLEL_RELEASES = 4         # DEK releases of one batch in flight together
_KEY_ERRORS = (BrokerDeniedError, BrokerNotFoundError, KeyUnsealError)
_WRAPPED_KEY_REJECTED = "wrapped_key_rejected"   # the broker's error code (docs/PROTOCOL.md)


class BatchConfigError(Exception):
    """The processor was configured with something it cannot work with (output format)."""


@functools.cache
def default_feature_spec() -> FeatureSpec:
    """The spec run when none is given: package data ``enclave_workers/default_spec.yaml``.

    Read once per process (a ``FeatureSpec`` is frozen): parsing and validating the YAML
    takes tens of milliseconds, which every pipeline run paid when building its graph."""
    text = resources.files(__package__).joinpath(DEFAULT_SPEC_RESOURCE).read_text("utf-8")
    return FeatureSpec.from_yaml(text, source=f"{__package__}/{DEFAULT_SPEC_RESOURCE}")


def broker_key_name(spec_key: str, producer_id: str) -> str:
    """The broker's named key behind a key the spec names, for one producer (tenant).

    ``tenant`` -> ``pseudonym/<producer_id>`` (what ``sealbeam keys init`` creates); any
    other spec key ``K`` -> ``K/<producer_id>``. Keys are always per tenant, so one
    producer's pseudonyms can never be computed under another's key.
    """
    if spec_key == TENANT_KEY:
        return TENANT_KEY_PREFIX + producer_id
    return f"{spec_key}/{producer_id}"


@dataclass(frozen=True)
class SealedOutput:
    """One output of a (region, producer): a sealed batch envelope or a PME Parquet file.

    ``output_id`` (16 bytes) names the file; for ``sealed-arrow`` it is the envelope id.
    ``source_count`` is how many input records this output accounts for (see
    ``row_outcomes``: a v1 record or a sealed batch counts one, each kept record of a record
    stream one; ``source_ids`` lists each envelope once); ``rows_suppressed`` how many rows
    k-anonymity left out of it.
    """

    region: str
    producer_id: str
    payload: bytes
    row_count: int
    source_count: int
    output_id: bytes
    output_format: str = SEALED_ARROW
    rows_suppressed: int = 0
    source_ids: tuple[str, ...] = ()
    """Hex envelope ids of the inputs this output accounts for (custody statements)."""
    kek_refs: tuple[tuple[str, str], ...] = ()
    """(KEK URI, version) of the output keys, for the custody statement."""
    dead_letter_rows: int = 0
    """Rows of its inputs resealed as dead letters (a batch's violating rows)."""
    statement: bytes = b""
    """The signed custody statement (DSSE JSON), once ``BatchProcessor.sign_custody`` ran."""


@dataclass
class BatchResult:
    outputs: list[SealedOutput] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    @property
    def rows_suppressed(self) -> int:
        return sum(o.rows_suppressed for o in self.outputs)


GroupKey = tuple[WrappedKey, str, str]   # (wrapped DEK, region, producer)
Route = tuple[str, str, str]             # (data-key id, region, producer), as routed outside
_ROUTE_REASON = ("routed by facts its header does not state (data key, region or producer "
                 "differ from the header the TEE parsed)")


def _route_of(key: GroupKey) -> Route:
    """The route the TEE's own parse gives: (data-key id, region, producer)."""
    wrapped_key, region, producer_id = key
    return memoized_key_id(wrapped_key), region, producer_id


def _route_differs(route: Route | None, expected: Route) -> bool:
    """Whether what the untrusted side routed by differs from the TEE's own parse."""
    return route is not None and tuple(route) != expected




@dataclass
class _KeyGroup:
    """What one data key opens: v1 records sorted by header, and other parsed sources."""

    records: list[RecordGroup] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)


@dataclass
class PreparedBatch:
    """A batch whose headers are parsed and grouped and whose data keys are being released
    on the processor's threads (``BatchProcessor.prepare``); ``complete`` finishes it."""

    result: BatchResult
    groups: dict[GroupKey, _KeyGroup]
    releases: list[Future[DataKey | Exception]]


@dataclass
class _RegionWork:
    """Opened material of one (region, producer): record plaintexts and batch tables."""

    record_sources: list[Source] = field(default_factory=list)
    record_plaintexts: list[bytes] = field(default_factory=list)
    batch_sources: list[Source] = field(default_factory=list)
    batch_tables: list[pa.Table] = field(default_factory=list)


class BatchProcessor:
    """Turns sealed partner envelopes into sealed feature outputs (one job, no I/O).

    For ``parquet-pme`` the session must hand out a distinct output DEK per
    ``output_key`` call (``output_key_max_envelopes=1``): each file's two master keys are two
    fresh DEKs, and the processor refuses to write when they are the same.
    """

    def __init__(self, session: KeySession, compiled: CompiledSpec, *,
                 output_format: str = SEALED_ARROW,
                 max_envelope_bytes: int = MAX_ENVELOPE_BYTES) -> None:
        if output_format not in OUTPUT_FORMATS:
            raise BatchConfigError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, "
                                   f"not {output_format!r}")
        self._session = session
        self._compiled = compiled
        self._output_format = output_format
        self._max_envelope_bytes = max_envelope_bytes
        self._declared = tuple(c.name for c in compiled.spec.columns)
        self._releaser: ThreadPoolExecutor | None = None
        self._read_schema = json_read_schema((c.name, c.type) for c in compiled.spec.columns)

    @property
    def compiled(self) -> CompiledSpec:
        return self._compiled

    def close(self) -> None:
        """Stop the threads that release a batch's data keys (idle between batches)."""
        releaser, self._releaser = self._releaser, None
        if releaser is not None:
            releaser.shutdown(wait=True)

    def process(self, envelopes: Sequence[bytes | ParsedEnvelope],
                routes: Sequence[Route] | None = None) -> BatchResult:
        """Open, featurize and reseal ``envelopes``; each header is parsed exactly once.

        An element may already be a ``ParsedEnvelope`` (bound to its bytes by the parser),
        which is used as it is; v1 records (bytes) are parsed once by an
        ``envelope.RecordSorter`` into per-header groups that the batch opener opens; other
        bytes are parsed here and the parse is reused for opening. Bytes that start with
        ``SBRX`` are a piece of a record stream (module docstring).

        ``routes``, when given, holds per envelope what the untrusted side routed it by:
        ``(data-key id, region, producer)``. Nothing here relies on it; an envelope whose
        header says otherwise is a dead letter (``STAGE_ROUTE``), never processed.
        """
        if routes is not None and len(routes) != len(envelopes):
            raise ValueError(f"{len(routes)} routes for {len(envelopes)} envelopes")
        result = BatchResult()
        groups = self._parse_and_group(envelopes, routes, result)
        released = self._release_data_keys(list(groups))
        return self._open_and_featurize(groups, released, result)

    def prepare(self, envelopes: Sequence[bytes | ParsedEnvelope],
                routes: Sequence[Route] | None = None) -> PreparedBatch:
        """Parse and group ``envelopes`` and start releasing their data keys, without waiting.

        For a caller that has the next batch in hand while this one is featurized: the
        releases (mostly waiting on the broker) overlap the other batch's work instead of
        stalling this one. Each key is still fetched once per session (single flight, then
        the cache), after the session's attestation; ``complete`` waits for them. ``routes``
        as for ``process``.
        """
        if routes is not None and len(routes) != len(envelopes):
            raise ValueError(f"{len(routes)} routes for {len(envelopes)} envelopes")
        result = BatchResult()
        groups = self._parse_and_group(envelopes, routes, result)
        releaser = self._release_pool()
        return PreparedBatch(result, groups, [releaser.submit(self._release_one, key)
                                              for key in groups])

    def complete(self, prepared: PreparedBatch) -> BatchResult:
        """Open, featurize and reseal a prepared batch (``process`` after ``prepare``);
        an error a release raised that is not a key refusal (broker unavailable) raises
        here, as ``process`` would."""
        released = [release.result() for release in prepared.releases]
        return self._open_and_featurize(prepared.groups, released, prepared.result)

    def _open_and_featurize(self, groups: dict[GroupKey, _KeyGroup],
                            released: list[DataKey | Exception],
                            result: BatchResult) -> BatchResult:
        work: dict[tuple[str, str], _RegionWork] = {}
        for (key, group), data_key in zip(groups.items(), released, strict=True):
            _, region, producer_id = key
            self._open_group(group, data_key,
                             work.setdefault((region, producer_id), _RegionWork()), result)
        for (region, producer_id), region_work in sorted(work.items()):
            self._featurize_and_write(region, producer_id, region_work, result)
        return result

    # -- parse headers (once per envelope: opening reuses the parse), group by key ----------
    def _parse_and_group(self, envelopes: Sequence[bytes | ParsedEnvelope],
                         routes: Sequence[Route] | None, result: BatchResult
                         ) -> dict[GroupKey, _KeyGroup]:
        # Grouped by the wrapped DEK itself (KEK reference and ciphertext: what its key_id
        # digests), which hashes without a SHA-256 per envelope.
        groups: dict[GroupKey, _KeyGroup] = {}
        sorter = RecordSorter()
        limit = self._max_envelope_bytes
        for index, envelope in enumerate(envelopes):
            route = None if routes is None else routes[index]
            if type(envelope) is bytes and len(envelope) <= limit and sorter.add(envelope, route):
                continue
            parsed = self._parse_once(envelope, result)
            if parsed is None:
                continue
            header = parsed.header
            # A record stream stands for the records its header commits to (read here, in
            # the TEE; the tag authenticates that count when the stream is opened).
            if type(parsed) is StreamPiece:
                source = Source(parsed, parsed.record_count)
            elif header.kind == KIND_RECORD_STREAM:
                source = Source(parsed, header.record_count or 1)
            else:
                source = Source(parsed)
            key = (header.wrapped_key, header.region, header.producer_id)
            if route is not None and _route_differs(route, _route_of(key)):
                result.dead_letters.append(dead_letter(source, STAGE_ROUTE, _ROUTE_REASON))
                continue
            groups.setdefault(key, _KeyGroup()).sources.append(source)
        for records in sorter.groups():
            header = records.header
            key = (header.wrapped_key, header.region, header.producer_id)
            if routes is not None:
                records = self._drop_misrouted(records, key, result)
            if records.envelopes:
                groups.setdefault(key, _KeyGroup()).records.append(records)
        return groups

    @staticmethod
    def _drop_misrouted(records: RecordGroup, key: GroupKey, result: BatchResult
                        ) -> RecordGroup:
        """``records`` without those routed by other facts than their header's (dead
        letters). The group's fields are the TEE's own parse of each record's bytes."""
        expected = _route_of(key)
        if not any(_route_differs(route, expected) for route in records.tags):
            return records
        kept: list[bytes] = []
        for envelope, route in zip(records.envelopes, records.tags, strict=True):
            if _route_differs(route, expected):
                result.dead_letters.append(dead_letter(Source(envelope), STAGE_ROUTE,
                                                       _ROUTE_REASON))
            else:
                kept.append(envelope)
        return RecordGroup(records.header, tuple(kept), (None,) * len(kept))

    def _parse_once(self, envelope: bytes | ParsedEnvelope,
                    result: BatchResult) -> ParsedEnvelope | StreamPiece | None:
        """The envelope's one parse, or None after dead-lettering what is not an envelope."""
        raw = envelope.data if type(envelope) is ParsedEnvelope else envelope
        if len(raw) > self._max_envelope_bytes:
            result.dead_letters.append(DeadLetter(
                unparsed_record_id(raw),
                f"envelope is {len(raw)} bytes, over {self._max_envelope_bytes}",
                STAGE_PARSE, b""))
            return None
        if type(envelope) is ParsedEnvelope:
            return envelope
        try:
            if is_stream_excerpt(envelope):
                return read_stream_piece(envelope)
            return parse_envelope(envelope)
        except EnvelopeError as exc:
            result.dead_letters.append(DeadLetter(
                unparsed_record_id(envelope), f"not a sealed envelope: {exc}", STAGE_PARSE,
                b""))
            return None

    # -- one data key per group; open every envelope --------------------------------------
    def _release_data_keys(self, keys: list[GroupKey]) -> list[DataKey | Exception]:
        """Each group's data key (or the key error refusing it), the releases of a batch's
        DEKs in flight together: a release is mostly waiting on the broker (its KMS unwrap,
        ledger append, HPKE seal), so a batch of many DEKs (e.g. record streams, a DEK per
        few hundred records) waits for them once, not one after another. The session is
        shared by threads (single flight per key); other errors (broker unavailable) raise."""
        if len(keys) <= 1:
            return [self._release_one(key) for key in keys]
        return list(self._release_pool().map(self._release_one, keys))

    def _release_one(self, key: GroupKey) -> DataKey | Exception:
        """One group's data key, or the key error refusing it (other errors raise)."""
        wrapped_key, region, producer_id = key
        try:
            return self._session.data_key(wrapped_key, region, producer_id)
        except _KEY_ERRORS as exc:
            return exc
        except BrokerError as exc:
            # The KMS refused this wrapped key for this (region, producer): e.g. a header
            # whose region was changed. A fact about these envelopes, not an outage.
            if exc.error == _WRAPPED_KEY_REJECTED:
                return exc
            raise

    def _release_pool(self) -> ThreadPoolExecutor:
        if self._releaser is None:
            self._releaser = ThreadPoolExecutor(max_workers=MAX_PARALLEL_RELEASES,
                                                thread_name_prefix="dek-release")
        return self._releaser

    def _open_group(self, group: _KeyGroup, data_key: DataKey | Exception,
                    work: _RegionWork, result: BatchResult) -> None:
        if isinstance(data_key, Exception):
            exc = data_key
            reason = f"data key not released: {type(exc).__name__}: {exc}"
            result.dead_letters.extend(dead_letter(s, STAGE_KEY, reason) for s in group.sources)
            result.dead_letters.extend(dead_letter(Source(envelope), STAGE_KEY, reason)
                                       for records in group.records
                                       for envelope in records.envelopes)
            return
        opener = RecordOpener(data_key)  # per-DEK state taken once for the whole group
        for records in group.records:
            self._open_records(opener, records, work, result)
        for source in group.sources:
            try:
                if source.header.kind == "record":
                    work.record_plaintexts.append(opener.open(source.parsed))
                    work.record_sources.append(source)
                elif source.header.kind == KIND_RECORD_STREAM:
                    self._open_stream(source, data_key, work, result)
                elif source.header.kind == "batch":
                    # Decrypted in place into an Arrow (mimalloc) buffer that the table's
                    # columns then use directly: no per-segment bytes, no join, no copy.
                    work.batch_tables.append(table_from_ipc(open_batch_into(
                        source.parsed, data_key, pa.allocate_buffer)))
                    work.batch_sources.append(source)
                else:
                    result.dead_letters.append(dead_letter(
                        source, STAGE_PARSE, f"unknown envelope kind {source.header.kind!r}"))
            except EnvelopeAuthenticationError:
                result.dead_letters.append(dead_letter(source, STAGE_OPEN,
                                                       "envelope failed authentication"))
            except EnvelopeError as exc:
                result.dead_letters.append(dead_letter(source, STAGE_OPEN, f"envelope: {exc}"))
            except RecordError as exc:
                result.dead_letters.append(dead_letter(source, STAGE_DECODE, str(exc)))

    @staticmethod
    def _open_records(opener: RecordOpener, records: RecordGroup, work: _RegionWork,
                      result: BatchResult) -> None:
        """One call opens the group's v1 records; each failure is that record's dead letter
        (the same reasons as a record opened on its own)."""
        plaintexts = work.record_plaintexts
        sources = work.record_sources
        for envelope, opened in zip(records.envelopes, opener.open_group(records), strict=True):
            if type(opened) is bytes:
                plaintexts.append(opened)
                sources.append(Source(envelope))
            elif isinstance(opened, EnvelopeAuthenticationError):
                result.dead_letters.append(dead_letter(Source(envelope), STAGE_OPEN,
                                                       "envelope failed authentication"))
            else:
                result.dead_letters.append(dead_letter(Source(envelope), STAGE_OPEN,
                                                       f"envelope: {opened}"))

    @staticmethod
    def _open_stream(source: Source, data_key: DataKey, work: _RegionWork,
                     result: BatchResult) -> None:
        """One call opens the whole stream; each record becomes a source of its own (one
        row), each record that fails authentication a dead letter of its own (its sealed
        excerpt). A stream-level failure raises (the caller dead-letters all of its
        records)."""
        parsed = source.parsed
        opened = (open_stream_piece(parsed, data_key) if type(parsed) is StreamPiece
                  else open_record_stream(parsed, data_key))
        if len(opened.records) + len(opened.failures) != source.records:
            raise EnvelopeFormatError("the opened stream's records differ from its count")
        for record in opened.records:
            work.record_plaintexts.append(record.plaintext)
            work.record_sources.append(Source(parsed, index=record.index))
        result.dead_letters.extend(dead_letters(
            (Source(parsed, index=failure.index), STAGE_OPEN,
             "record failed authentication"
             if isinstance(failure.error, EnvelopeAuthenticationError)
             else f"record: {failure.error}") for failure in opened.failures))

    # -- rows of one (region, producer) as parts that share a schema ------------------------
    def _row_parts(self, work: _RegionWork, result: BatchResult) -> list[RowPart]:
        parts: list[RowPart] = []
        if work.record_plaintexts:
            parsed = parse_records(work.record_plaintexts, self._read_schema)
            result.dead_letters.extend(dead_letters(
                (work.record_sources[index], STAGE_DECODE, reason)
                for index, (_, reason) in sorted(parsed.failures.items())))
            if parsed.row_sources:
                parts.append(RowPart.of_records(
                    parsed.table, [work.record_sources[i] for i in parsed.row_sources]))
        for source, table in zip(work.batch_sources, work.batch_tables, strict=True):
            try:
                declared = select_columns(table, self._declared)
            except RecordError as exc:
                result.dead_letters.append(dead_letter(source, STAGE_SCHEMA, str(exc)))
                continue
            parts.append(RowPart.of_batch(declared, source, table))
        return parts

    def _spec_keys(self, producer_id: str) -> dict[str, bytes]:
        return {name: self._session.named_key(broker_key_name(name, producer_id))
                for name in self._compiled.key_names}

    def _featurize_and_write(self, region: str, producer_id: str, work: _RegionWork,
                             result: BatchResult) -> None:
        parts = self._row_parts(work, result)
        if not parts:
            return
        sources = RowPart.sources_of(parts)
        try:
            keys = self._spec_keys(producer_id)
        except _KEY_ERRORS as exc:
            reason = f"spec key not released: {type(exc).__name__}: {exc}"
            result.dead_letters.extend(dead_letters((s, STAGE_KEY, reason) for s in sources))
            return
        try:
            outcome = decide_region_outcome(self._compiled, parts, keys, region)
        except FeatureError as exc:
            result.dead_letters.extend(dead_letters((s, STAGE_FEATURIZE, str(exc))
                                                    for s in sources))
            return
        result.dead_letters.extend(outcome.whole_dead_letters(STAGE_SCHEMA))
        if not outcome.kept_sources:
            return
        try:
            output = self._write_output(region, producer_id, outcome)
            partial = [self._reseal_rows(region, producer_id, dead) for dead in outcome.partial]
        except _KEY_ERRORS as exc:
            reason = f"output key not generated: {type(exc).__name__}: {exc}"
            result.dead_letters.extend(dead_letters((s, STAGE_RESEAL, reason)
                                                    for s in outcome.kept_sources))
            return
        result.outputs.append(output)
        result.dead_letters.extend(partial)

    # -- outputs ----------------------------------------------------------------------------
    def _write_output(self, region: str, producer_id: str,
                      outcome: RegionOutcome) -> SealedOutput:
        table = outcome.table(self._compiled.output_schema)
        if self._output_format == PARQUET_PME:
            features_key = self._session.output_key(region, producer_id)
            pseudonyms_key = self._session.output_key(region, producer_id)
            master_keys = master_keys_for({
                ROLE_FEATURES: features_key,
                ROLE_PSEUDONYMS: pseudonyms_key,
            }, region, producer_id)
            payload = write_pme_table(table, self._compiled, master_keys)
            output_id = os.urandom(16)
            kek_refs = tuple((w.kek.uri, w.kek.version)
                             for _, w in (features_key, pseudonyms_key))
        else:
            output_key, wrapped = self._session.output_key(region, producer_id)
            context = {
                "sealbeam.kind": FEATURES_KIND,
                "sealbeam.rows": str(table.num_rows),
                "sealbeam.source_count": str(sum(s.records for s in outcome.kept_sources)),
                SPEC_CONTEXT_KEY: self._compiled.fingerprint,
            }
            sealer = BatchSealer(
                data_key=output_key, wrapped_key=wrapped, region=region,
                producer_id=producer_id, schema_fingerprint=self._compiled.fingerprint_bytes,
                context=context)
            sealer.write(table_to_ipc(table))
            payload = sealer.finish()
            output_id = sealer.header.envelope_id  # the sealer knows it: no parse of the output
            kek_refs = ((wrapped.kek.uri, wrapped.kek.version),)
        return SealedOutput(region, producer_id, payload, table.num_rows,
                            sum(s.records for s in outcome.kept_sources), output_id,
                            self._output_format, outcome.rows_suppressed,
                            source_ids=tuple(sorted({s.envelope_id.hex()
                                                     for s in outcome.kept_sources})),
                            kek_refs=kek_refs,
                            dead_letter_rows=sum(p.rows.num_rows for p in outcome.partial))

    # -- custody ----------------------------------------------------------------------------
    def sign_custody(self, output: SealedOutput, file_name: str) -> SealedOutput:
        """``output`` with its custody statement, signed by this session's statement key.

        Called once the output has its final file name (``file_name``, the statement's
        subject): the statement names the file, its digest and what went into it, and embeds
        the broker's signed attestation result (which lists the signing key) and the
        broker's signed ledger head after the grants (provenance.py).
        """
        return self.sign_custody_all([(output, file_name)])[0]

    def sign_custody_all(self, named: Sequence[tuple[SealedOutput, str]]
                         ) -> list[SealedOutput]:
        """``sign_custody`` for several outputs of completed batches, under one ledger head.

        The head is fetched once, after every grant behind these outputs (their batches are
        done), so it covers each of them: one broker call for the group instead of one per
        output whenever grants happened in between (a batch run's next DEKs).
        """
        if not named:
            return []
        signer, attestation_result = self._session.custody_signer()
        ledger_head = self._session.ledger_head()
        signed = []
        for output, file_name in named:
            statement = output_statement(
                file_name=file_name, payload=output.payload, region=output.region,
                producer_id=output.producer_id, output_format=output.output_format,
                source_ids=output.source_ids, spec_fingerprint=self._compiled.fingerprint,
                kek_refs=output.kek_refs,
                counts={"envelopes_in": len(output.source_ids),
                        "records_in": output.source_count,
                        "rows_in": output.row_count + output.rows_suppressed
                        + output.dead_letter_rows,
                        "rows_out": output.row_count, "rows_suppressed": output.rows_suppressed,
                        "dead_letter_rows": output.dead_letter_rows},
                attestation_result=attestation_result, ledger_head=ledger_head)
            signed.append(replace(output, statement=canonical_json(signer.sign(statement))))
        return signed

    def _reseal_rows(self, region: str, producer_id: str,
                     partial: PartialDeadRows) -> DeadLetter:
        """A batch's violating rows, resealed under an output key of its region."""
        output_key, wrapped = self._session.output_key(region, producer_id)
        source = partial.source
        context = {
            "sealbeam.kind": DEAD_ROWS_KIND,
            "sealbeam.rows": str(partial.rows.num_rows),
            "sealbeam.source": source.header.envelope_id.hex(),
            SPEC_CONTEXT_KEY: self._compiled.fingerprint,
        }
        sealed = seal_batch(table_to_ipc(partial.rows), data_key=output_key, wrapped_key=wrapped,
                            region=region, producer_id=producer_id,
                            schema_fingerprint=source.header.schema_fingerprint, context=context)
        return DeadLetter(source.header.envelope_id.hex(), partial.reason, STAGE_SCHEMA, sealed,
                          records=0, rows=partial.rows.num_rows)
