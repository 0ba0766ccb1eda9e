"""Open a batch of sealed envelopes, featurize the rows, and reseal them per region.

What it does: given sealed record or batch envelopes (possibly for several keys, regions and
producers), it groups them by (wrapped key, region, producer), obtains each data key once
from the ``KeySession``, opens every envelope, parses all record plaintexts of a (region,
producer) with one ``pyarrow.json.read_json``, featurizes with ``basic_features`` and reseals
one batch envelope (Arrow IPC stream of the featurized table) per (region, producer) under an
output key from the broker. Every envelope that cannot be processed becomes a ``DeadLetter``
(its id, the reason, the stage, and the still-sealed bytes); nothing in a dead letter is
plaintext.

What it does not: no Beam, no I/O, no logging. Transient broker failures
(``BrokerUnavailableError``) and a session the broker keeps rejecting are raised, not
dead-lettered, so the runner retries the whole batch instead of discarding good data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from envelope import (
    EnvelopeAuthenticationError,
    EnvelopeError,
    EnvelopeHeader,
    open_batch,
    open_record,
    read_header,
    seal_batch,
)
from keybroker.client import BrokerDeniedError, BrokerNotFoundError

from .basic_features import (
    FEATURE_SCHEMA,
    FeatureError,
    FeatureSettings,
    featurize,
    pseudonym_key_name,
)
from .key_session import KeySession, KeyUnsealError
from .records import (
    RecordError,
    conform_to_input_schema,
    parse_records,
    row_problems,
    schema_fingerprint,
    table_from_ipc,
    table_to_ipc,
)

MAX_ENVELOPE_BYTES = 64 << 20
FEATURES_FINGERPRINT = schema_fingerprint(FEATURE_SCHEMA)
FEATURES_KIND = "features"

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


@dataclass(frozen=True)
class DeadLetter:
    """One input (or refused output) that could not go on, still sealed, with why.

    ``sealed`` holds the envelope bytes when they parsed as an envelope (ciphertext), and is
    empty when they did not (they could be anything, including a partner's plaintext).
    ``records`` is how many input envelopes this dead letter stands for (1, or a refused
    output's source count), so that runs reconcile.
    """

    record_id: str
    reason: str
    stage: str
    sealed: bytes
    records: int = 1


@dataclass(frozen=True)
class SealedOutput:
    """One resealed feature batch for a (region, producer)."""

    region: str
    producer_id: str
    envelope: bytes
    row_count: int
    source_count: int


@dataclass
class BatchResult:
    outputs: list[SealedOutput] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


def unparsed_record_id(envelope: bytes) -> str:
    """An id for bytes that are not an envelope: a digest, never the content."""
    return "sha256:" + hashlib.sha256(envelope).hexdigest()[:32]


@dataclass
class _Source:
    index: int
    header: EnvelopeHeader
    envelope: bytes


@dataclass
class _RegionWork:
    """Opened material of one (region, producer): record plaintexts and batch tables."""

    record_sources: list[_Source] = field(default_factory=list)
    record_plaintexts: list[bytes] = field(default_factory=list)
    batch_sources: list[_Source] = field(default_factory=list)
    batch_tables: list[pa.Table] = field(default_factory=list)


def _dead(source: _Source, stage: str, reason: str) -> DeadLetter:
    return DeadLetter(source.header.envelope_id.hex(), reason, stage, source.envelope)


class BatchProcessor:
    """Turns sealed partner envelopes into sealed feature batches (one job, no I/O)."""

    def __init__(self, session: KeySession, settings: FeatureSettings, *,
                 max_envelope_bytes: int = MAX_ENVELOPE_BYTES) -> None:
        self._session = session
        self._settings = settings
        self._max_envelope_bytes = max_envelope_bytes

    def process(self, envelopes: Sequence[bytes]) -> BatchResult:
        result = BatchResult()
        groups = self._parse_and_group(envelopes, result)
        work: dict[tuple[str, str], _RegionWork] = {}
        for (_, region, producer_id), sources in groups.items():
            self._open_group(sources, work.setdefault((region, producer_id), _RegionWork()),
                             result)
        for (region, producer_id), region_work in sorted(work.items()):
            self._featurize_and_reseal(region, producer_id, region_work, result)
        return result

    # -- parse headers, group by key ------------------------------------------------------
    def _parse_and_group(self, envelopes: Sequence[bytes], result: BatchResult
                         ) -> dict[tuple[str, str, str], list[_Source]]:
        groups: dict[tuple[str, str, str], list[_Source]] = {}
        for index, envelope in enumerate(envelopes):
            if len(envelope) > self._max_envelope_bytes:
                result.dead_letters.append(DeadLetter(
                    unparsed_record_id(envelope),
                    f"envelope is {len(envelope)} bytes, over {self._max_envelope_bytes}",
                    STAGE_PARSE, b""))
                continue
            try:
                header, _ = read_header(envelope)
            except EnvelopeError as exc:
                result.dead_letters.append(DeadLetter(
                    unparsed_record_id(envelope), f"not a sealed envelope: {exc}", STAGE_PARSE,
                    b""))
                continue
            key = (header.wrapped_key.key_id, header.region, header.producer_id)
            groups.setdefault(key, []).append(_Source(index, header, envelope))
        return groups

    # -- one data key per group; open every envelope --------------------------------------
    def _open_group(self, sources: list[_Source], work: _RegionWork,
                    result: BatchResult) -> None:
        first = sources[0].header
        try:
            data_key = self._session.data_key(first.wrapped_key, first.region,
                                              first.producer_id)
        except (BrokerDeniedError, BrokerNotFoundError, KeyUnsealError) as exc:
            reason = f"data key not released: {type(exc).__name__}: {exc}"
            result.dead_letters.extend(_dead(s, STAGE_KEY, reason) for s in sources)
            return
        for source in sources:
            try:
                if source.header.kind == "record":
                    work.record_plaintexts.append(open_record(source.envelope, data_key))
                    work.record_sources.append(source)
                elif source.header.kind == "batch":
                    table = table_from_ipc(open_batch(source.envelope, data_key))
                    work.batch_tables.append(conform_to_input_schema(table))
                    work.batch_sources.append(source)
                else:
                    result.dead_letters.append(_dead(
                        source, STAGE_PARSE, f"unknown envelope kind {source.header.kind!r}"))
            except EnvelopeAuthenticationError:
                result.dead_letters.append(_dead(source, STAGE_OPEN,
                                                 "envelope failed authentication"))
            except EnvelopeError as exc:
                result.dead_letters.append(_dead(source, STAGE_OPEN, f"envelope: {exc}"))
            except RecordError as exc:
                result.dead_letters.append(_dead(source, STAGE_DECODE, str(exc)))

    # -- parse, check, featurize, reseal per (region, producer) ----------------------------
    def _checked_tables(self, region: str, work: _RegionWork, result: BatchResult
                        ) -> tuple[list[pa.Table], list[_Source]]:
        tables: list[pa.Table] = []
        kept: list[_Source] = []
        if work.record_plaintexts:
            parsed = parse_records(work.record_plaintexts)
            for index, (stage, reason) in sorted(parsed.failures.items()):
                result.dead_letters.append(_dead(work.record_sources[index], stage, reason))
            problems = row_problems(parsed.table, region)
            good_rows = [row for row, problem in enumerate(problems) if problem is None]
            for row, problem in enumerate(problems):
                if problem is not None:
                    source = work.record_sources[parsed.row_sources[row]]
                    result.dead_letters.append(_dead(source, STAGE_SCHEMA, problem))
            if good_rows:
                tables.append(parsed.table.take(pa.array(good_rows, type=pa.int64())))
                kept.extend(work.record_sources[parsed.row_sources[r]] for r in good_rows)
        for source, table in zip(work.batch_sources, work.batch_tables, strict=True):
            problem = next((p for p in row_problems(table, region) if p is not None), None)
            if problem is not None:
                result.dead_letters.append(_dead(source, STAGE_SCHEMA, f"a row: {problem}"))
                continue
            tables.append(table)
            kept.append(source)
        return tables, kept

    def _featurize_and_reseal(self, region: str, producer_id: str, work: _RegionWork,
                              result: BatchResult) -> None:
        tables, kept = self._checked_tables(region, work, result)
        if not kept:
            return
        try:
            pseudonym_key = self._session.named_key(pseudonym_key_name(producer_id))
        except (BrokerDeniedError, BrokerNotFoundError, KeyUnsealError) as exc:
            reason = f"pseudonym key not released: {type(exc).__name__}: {exc}"
            result.dead_letters.extend(_dead(s, STAGE_KEY, reason) for s in kept)
            return
        try:
            features = featurize(pa.concat_tables(tables), pseudonym_key=pseudonym_key,
                                 settings=self._settings)
        except FeatureError as exc:
            result.dead_letters.extend(_dead(s, STAGE_FEATURIZE, str(exc)) for s in kept)
            return
        try:
            output_key, wrapped = self._session.output_key(region, producer_id)
        except (BrokerDeniedError, BrokerNotFoundError, KeyUnsealError) as exc:
            reason = f"output key not generated: {type(exc).__name__}: {exc}"
            result.dead_letters.extend(_dead(s, STAGE_RESEAL, reason) for s in kept)
            return
        context = {
            "sealbeam.kind": FEATURES_KIND,
            "sealbeam.rows": str(features.num_rows),
            "sealbeam.source_count": str(len(kept)),
        }
        sealed = seal_batch(
            table_to_ipc(features), data_key=output_key, wrapped_key=wrapped, region=region,
            producer_id=producer_id, schema_fingerprint=FEATURES_FINGERPRINT, context=context,
        )
        result.outputs.append(SealedOutput(region, producer_id, sealed, features.num_rows,
                                           len(kept)))
