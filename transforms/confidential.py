"""The confidential step: open, featurize (with a feature spec) and reseal inside the TEE.

Usage::

    spec = FeatureSpec.load("features.yaml")          # or default_feature_spec()
    processed = parsed[ParseSealed.SEALED] | ConfidentialProcess(
        broker_url="https://broker.internal:8443",
        tee=TeeSettings("simulated-sev-snp", dev_tee_dir=".sealbeam/dev-tee"),
        spec=spec,
        output_format="parquet-pme",                   # default "sealed-arrow"
    )
    outputs = processed[ConfidentialProcess.SEALED]        # SealedOutput
    dead = processed[ConfidentialProcess.DEAD_LETTER]       # DeadLetter

Input: ``SealedEnvelope`` elements (``ParseSealed``, then ``DeduplicateEnvelopes``) or bare
envelope bytes (their headers are read here; one that does not parse is a dead letter).
Batching is ``BatchByDataKey`` (``batching.py``): grouped by data key and cut
deterministically by count and bytes, so each DEK goes to one worker and a rerun forms the
same batches; ``batcher=`` may name another ``SealedEnvelope -> EnvelopeBatch`` transform
(``BundleBatches`` for a stream that must not wait for its windows to close). With
``drop_duplicates=True`` exact copies of an envelope are dropped inside the data-key groups
(a third output, ``DUPLICATES``, counted in ``duplicates``): the batch pipeline de-duplicates
so, without a shuffle of its own. Every output's
``output_id`` is set to a digest of its batch's sorted envelope ids, region, producer and
format (``output_name_id``), which ``WriteRegionPinned`` turns into the file name: a retried
or rerun batch writes the same name again, never a second file. Each output then gets its
custody statement, signed in the confidential step by the session's statement key for the
file name it will have (``BatchProcessor.sign_custody``, docs/FORMAT.md "Custody statements").

In a batch run (the default batching) a bundle carries many batches, and the step looks one
batch ahead: it parses the next batch's headers and starts its data-key releases
(``BatchProcessor.prepare``) before featurizing the one before it, so the releases' wait on
the broker overlaps that work; the outputs are then signed in groups (up to
``CUSTODY_GROUP_OUTPUTS`` outputs or ``CUSTODY_GROUP_BYTES``) under one ledger head taken
after all of their grants, instead of a ledger-head fetch per output. What is held is
completed in ``finish_bundle``, each output and dead letter in its own batch's window. With
another batcher (streaming) each batch completes in its own ``process`` call.

The spec is validated and compiled when the transform is built (a bad spec fails there, not
on a worker), travels to the workers as its plain JSON document, and is compiled once per
worker in ``setup``; the worker checks that its compiled fingerprint is the one the pipeline
was built with. Each worker process holds one ``KeySession`` per (broker, TEE, limits, spec,
output format), shared by its threads and DoFn instances (``session.acquire_session``): it
attests once, fetches each data key once, and names the spec's fingerprint in every
output-key request. ``teardown`` releases it; the last holder closes it (keys forgotten).
For ``parquet-pme`` the session hands out a fresh output DEK per request, so each file's two
master keys differ. ``enclave_workers.batch_processor`` does the work.

A broker outage (``BrokerUnavailableError``) is retried here with bounded exponential backoff
(``broker_retries`` attempts, ``BROKER_BACKOFF_S`` doubling up to ``BROKER_BACKOFF_CAP_S``);
when it lasts longer the error is raised, so the runner retries the bundle (or the job fails)
and no envelope is dead-lettered for it: nothing is lost. Metrics: ``broker_calls``,
``broker_retries``, ``rows_suppressed`` (k-anonymity), ``confidential_batch_size``.

What it does not: no file I/O, no routing; keys stay in the worker's memory.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import BoundedWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from enclave_workers.batch_processor import (
    MAX_ENVELOPE_BYTES,
    OUTPUT_FORMATS,
    PARQUET_PME,
    SEALED_ARROW,
    BatchProcessor,
    BatchResult,
    PreparedBatch,
    SealedOutput,
)
from enclave_workers.features import CompiledSpec, FeatureError, FeatureSpec, compile_spec
from enclave_workers.features.pme import check_column_keys, column_keys_for_spec
from enclave_workers.key_session import KeySession
from enclave_workers.output_names import output_name_id
from keybroker.client import BrokerUnavailableError

from .batching import DEFAULT_MAX_BATCH_BYTES, DEFAULT_SHARDS, BatchByDataKey, EnvelopeBatch
from .broker_identity import BrokerTrust, resolve_broker_trust
from .errors import TransformConfigError
from .metrics import BROKER_CALLS, BROKER_RETRIES, NAMESPACE, ROWS_SUPPRESSED
from .parse import read_sealed
from .sealed import SealedEnvelope
from .session import (
    OutputDestinations,
    acquire_session,
    make_key_session,
    output_destinations,
    release_session,
)
from .tee import SessionLimits, TeeSettings
from .write import output_file_name

__all__ = ["BROKER_RETRIES_DEFAULT", "ConfidentialProcess", "compile_for_workers",
           "output_name_id"]

CUSTODY_GROUP_OUTPUTS = 16        # batch runs: outputs signed together under one ledger head
CUSTODY_GROUP_BYTES = 64 << 20     # ... or fewer, once they hold this many payload bytes
PME_OUTPUT_KEY_MAX_ENVELOPES = 1   # a fresh DEK per master key: each PME file's two differ
BROKER_RETRIES_DEFAULT = 5         # attempts after the first while the broker is unavailable
BROKER_BACKOFF_S = 0.5
BROKER_BACKOFF_CAP_S = 8.0


_COMPILED: dict[tuple[str, str | None], CompiledSpec] = {}
_COMPILED_LOCK = threading.Lock()
_COMPILED_MAX = 16


def compile_document(document: dict[str, Any], source: str | None) -> CompiledSpec:
    """``document`` validated and compiled, once per process for each distinct document.

    Validation (JSON Schema) and compilation take tens of milliseconds; a worker's
    ``setup`` and, in-process runners, the pipeline's construction compile the same
    document, run after run. Keyed by the document's canonical JSON and its source; a
    ``CompiledSpec`` is frozen and its operations keep no state, so threads share it.
    ``FeatureError`` as ``FeatureSpec.from_dict`` and ``compile_spec`` raise it.
    """
    try:
        key = (json.dumps(document, sort_keys=True, allow_nan=False), source)
    except (TypeError, ValueError):   # not plain JSON: from_dict says why
        return compile_spec(FeatureSpec.from_dict(document, source=source))
    with _COMPILED_LOCK:
        cached = _COMPILED.get(key)
    if cached is not None:
        return cached
    compiled = compile_spec(FeatureSpec.from_dict(document, source=source))
    with _COMPILED_LOCK:
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.clear()
        _COMPILED[key] = compiled
    return compiled


def compile_for_workers(spec: FeatureSpec) -> tuple[dict[str, Any], CompiledSpec]:
    """The spec's plain document (what is pickled to workers) and its compiled form."""
    document = spec.to_json_document()
    try:
        compiled = compile_document(document, spec.source)
    except FeatureError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise TransformConfigError(" ".join(lines)) from None
    return document, compiled


def _check_pme_assignment(compiled: CompiledSpec) -> None:
    """Fail at construction, not on a worker, when PME cannot name the spec's columns."""
    try:
        check_column_keys(compiled.output_schema, column_keys_for_spec(
            compiled, pseudonym_key_id="pseudonyms", features_key_id="features"))
    except FeatureError as exc:
        raise TransformConfigError(f"parquet-pme cannot encrypt this spec's output: {exc}"
                                   ) from None


class _CallCount:
    """Broker calls of one worker's shared session, counted on whatever thread made them and
    handed to the Beam counter by the DoFn thread that takes them (each call once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self, _kind: str) -> None:
        with self._lock:
            self._count += 1

    def take(self) -> int:
        with self._lock:
            count, self._count = self._count, 0
        return count


class _Unsigned(NamedTuple):
    """A named output waiting for its custody statement (batch runs sign several at once)."""

    output: SealedOutput
    file_name: str
    window: BoundedWindow
    timestamp: Timestamp


class _Prepared(NamedTuple):
    """A batch held back one step while its data keys are released (lookahead)."""

    batch: EnvelopeBatch
    envelopes: list[bytes]
    routes: list[tuple[str, str, str]]
    window: BoundedWindow
    timestamp: Timestamp
    prepared: PreparedBatch


_PENDING_CALLS: dict[str, _CallCount] = {}
_PENDING_LOCK = threading.Lock()


def _pending_broker_calls(session_tag: str) -> _CallCount:
    with _PENDING_LOCK:
        return _PENDING_CALLS.setdefault(session_tag, _CallCount())


class _ConfidentialProcessFn(beam.DoFn):
    def __init__(self, broker_url: str, tee: TeeSettings, spec_document: dict[str, Any],
                 spec_source: str | None, fingerprint: str, output_format: str,
                 limits: SessionLimits, broker_retries: int,
                 broker_trust: BrokerTrust | None = None,
                 destinations: OutputDestinations = (), lookahead: bool = False) -> None:
        """``lookahead`` (batch runs): hold each batch back one step, its data keys being
        released meanwhile, and featurize the batch before it; sign the outputs' custody
        statements in groups under one ledger head (``CUSTODY_GROUP_OUTPUTS``). Outputs keep
        their own batch's window and timestamp; what is held completes in ``finish_bundle``.
        """
        self._broker_url = broker_url
        self._lookahead = lookahead
        self._held: deque[_Prepared] = deque()
        self._unsigned: list[_Unsigned] = []
        self._unsigned_bytes = 0
        self._destinations = destinations
        self._broker_trust = broker_trust
        self._tee = tee
        self._spec_document = spec_document
        self._spec_source = spec_source
        self._fingerprint = fingerprint
        self._output_format = output_format
        self._limits = limits
        self._broker_retries = broker_retries
        self._broker_calls = Metrics.counter(NAMESPACE, BROKER_CALLS)
        self._retries = Metrics.counter(NAMESPACE, BROKER_RETRIES)
        self._rows_suppressed = Metrics.counter(NAMESPACE, ROWS_SUPPRESSED)
        self._batch_sizes = Metrics.distribution(NAMESPACE, "confidential_batch_size")
        self._processor: BatchProcessor | None = None
        self._session_tag_held: str | None = None

    def _session_tag(self) -> str:
        return repr((self._broker_url, self._tee, self._limits, self._fingerprint,
                     self._output_format, self._broker_trust, self._destinations))

    def _make_session(self) -> KeySession:
        counter = _pending_broker_calls(self._session_tag())
        return make_key_session(
            self._broker_url, self._tee, self._limits, spec_fingerprint=self._fingerprint,
            output_key_max_envelopes=(PME_OUTPUT_KEY_MAX_ENVELOPES
                                      if self._output_format == PARQUET_PME else None),
            on_broker_call=counter.add, broker_trust=self._broker_trust,
            destinations=self._destinations)

    def setup(self) -> None:
        compiled = compile_document(self._spec_document, self._spec_source)
        if compiled.fingerprint != self._fingerprint:
            raise TransformConfigError("the worker compiled the feature spec to another "
                                       "fingerprint than the pipeline was built with")
        tag = self._session_tag()
        session = acquire_session(tag, self._make_session)
        self._session_tag_held = tag
        self._processor = BatchProcessor(session, compiled, output_format=self._output_format)

    def teardown(self) -> None:
        """Give the worker's shared session back; the last holder closes it."""
        tag, self._session_tag_held = self._session_tag_held, None
        processor, self._processor = self._processor, None
        if processor is not None:
            processor.close()
        if tag is not None:
            release_session(tag)

    def _process_with_backoff(self, envelopes: list[bytes],
                              routes: list[tuple[str, str, str]],
                              prepared: PreparedBatch | None = None) -> BatchResult:
        """The batch's result (its first attempt completing ``prepared`` when given)."""
        assert self._processor is not None, "setup() creates the processor"
        for attempt in range(self._broker_retries + 1):
            try:
                if prepared is not None and attempt == 0:
                    return self._processor.complete(prepared)
                return self._processor.process(envelopes, routes)
            except BrokerUnavailableError:
                if attempt == self._broker_retries:
                    raise
                self._retries.inc()
                time.sleep(min(BROKER_BACKOFF_CAP_S, BROKER_BACKOFF_S * 2 ** attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def start_bundle(self) -> None:
        # A failed bundle's held batches and outputs are retried with the bundle.
        self._held.clear()
        self._unsigned, self._unsigned_bytes = [], 0

    def process(self, batch: EnvelopeBatch, window: BoundedWindow = beam.DoFn.WindowParam,
                timestamp: Timestamp = beam.DoFn.TimestampParam) -> Iterable[object]:
        self._batch_sizes.update(len(batch.envelopes))
        envelopes = [e.data for e in batch.envelopes]
        # The routing facts travel beside the bytes: the TEE dead-letters an envelope whose
        # header says otherwise (BatchProcessor.process), and relies on none of them.
        routes = [(e.key_id, e.region, e.producer_id) for e in batch.envelopes]
        if not self._lookahead:
            yield from self._outputs(batch, window,
                                     self._process_with_backoff(envelopes, routes))
            return
        assert self._processor is not None, "setup() creates the processor"
        self._held.append(_Prepared(batch, envelopes, routes, window, timestamp,
                                    self._processor.prepare(envelopes, routes)))
        while len(self._held) > 1:
            yield from self._complete_held()

    def finish_bundle(self) -> Iterable[object]:
        while self._held:
            yield from self._complete_held()
        yield from self._sign_unsigned()

    def _complete_held(self) -> Iterator[object]:
        """The oldest held batch, completed: its dead letters out now, its outputs queued
        for their custody statements; all in its own window and timestamp."""
        held = self._held.popleft()
        result = self._process_with_backoff(held.envelopes, held.routes, held.prepared)
        self._rows_suppressed.inc(result.rows_suppressed)
        for output in result.outputs:
            named = dataclasses.replace(output, output_id=output_name_id(held.batch.batch_id,
                                                                         output))
            self._unsigned.append(_Unsigned(named, output_file_name(named, held.window),
                                            held.window, held.timestamp))
            self._unsigned_bytes += len(named.payload)
        for dead_letter in result.dead_letters:
            yield TaggedOutput(ConfidentialProcess.DEAD_LETTER,
                               WindowedValue(dead_letter, held.timestamp, (held.window,)))
        self._broker_calls.inc(_pending_broker_calls(self._session_tag()).take())
        if (len(self._unsigned) >= CUSTODY_GROUP_OUTPUTS
                or self._unsigned_bytes >= CUSTODY_GROUP_BYTES):
            yield from self._sign_unsigned()

    def _sign_unsigned(self) -> Iterator[object]:
        """The queued outputs with their custody statements, signed in the TEE for the names
        the files get, under one ledger head taken after all of their grants."""
        unsigned, self._unsigned, self._unsigned_bytes = self._unsigned, [], 0
        if not unsigned:
            return
        assert self._processor is not None
        signed = self._processor.sign_custody_all([(u.output, u.file_name) for u in unsigned])
        for output, queued in zip(signed, unsigned, strict=True):
            yield WindowedValue(output, queued.timestamp, (queued.window,))
        self._broker_calls.inc(_pending_broker_calls(self._session_tag()).take())

    def _outputs(self, batch: EnvelopeBatch, window: BoundedWindow,
                 result: BatchResult) -> Iterator[object]:
        self._rows_suppressed.inc(result.rows_suppressed)
        assert self._processor is not None
        for output in result.outputs:
            named = dataclasses.replace(output, output_id=output_name_id(batch.batch_id, output))
            # The custody statement is signed here, in the TEE, for the name the file gets.
            yield self._processor.sign_custody(named, output_file_name(named, window))
        for dead_letter in result.dead_letters:
            yield TaggedOutput(ConfidentialProcess.DEAD_LETTER, dead_letter)
        # Calls made on any thread of the session (a batch's DEK releases run in parallel
        # threads, where Beam metrics are not recorded) are counted here, once.
        self._broker_calls.inc(_pending_broker_calls(self._session_tag()).take())


class _AsSealedEnvelopeFn(beam.DoFn):
    """``SealedEnvelope`` passes; bare bytes get their header read (else a dead letter)."""

    def process(self, element: SealedEnvelope | bytes) -> Iterable[object]:
        if isinstance(element, SealedEnvelope):
            yield element
            return
        read = read_sealed(element, MAX_ENVELOPE_BYTES)
        if isinstance(read, SealedEnvelope):
            yield read
        else:
            yield TaggedOutput(ConfidentialProcess.DEAD_LETTER, read)


class ConfidentialProcess(beam.PTransform):
    """``SealedEnvelope`` (or envelope bytes) -> feature outputs (``SealedOutput``, named by
    their inputs) and dead letters."""

    SEALED = "sealed"
    DEAD_LETTER = "dead_letter"
    DUPLICATES = "duplicates"

    def __init__(self, broker_url: str, tee: TeeSettings, spec: FeatureSpec, *,
                 output_format: str = SEALED_ARROW, limits: SessionLimits | None = None,
                 max_batch_size: int = 2000, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
                 key_shards: int = DEFAULT_SHARDS, key_spread: int = 1,
                 broker_retries: int = BROKER_RETRIES_DEFAULT,
                 batcher: beam.PTransform | None = None,
                 drop_duplicates: bool = False,
                 broker_trust: BrokerTrust | None = None,
                 destinations: Mapping[str, Mapping[str, object]] | None = None) -> None:
        """``broker_trust``: the broker's public identity key the workers pin (by default
        ``broker-identity.pub.pem`` beside the simulated TEE's dev chain) and its TLS trust.
        ``destinations``: per region, ``{"sink", "location", "verified"}`` from preflight; each
        output key's ``generate`` carries its region's into the broker's ledger."""
        super().__init__()
        if not broker_url:
            raise TransformConfigError("ConfidentialProcess needs a broker_url")
        if max_batch_size < 1 or max_batch_bytes < 1:
            raise TransformConfigError("batch sizes must be at least 1 (max_batch_size, "
                                       "max_batch_bytes)")
        if broker_retries < 0:
            raise TransformConfigError("broker_retries must be 0 or more")
        if drop_duplicates and batcher is not None:
            raise TransformConfigError("drop_duplicates works with the default batching only")
        if output_format not in OUTPUT_FORMATS:
            raise TransformConfigError(f"output format must be one of "
                                       f"{', '.join(OUTPUT_FORMATS)}, not {output_format!r}")
        if not isinstance(spec, FeatureSpec):
            raise TransformConfigError(f"spec must be a FeatureSpec, not {type(spec).__name__}")
        document, compiled = compile_for_workers(spec)
        if output_format == PARQUET_PME:
            _check_pme_assignment(compiled)
        self.compiled = compiled
        self._fn = _ConfidentialProcessFn(broker_url, tee, document, spec.source,
                                          compiled.fingerprint, output_format,
                                          limits or SessionLimits(), broker_retries,
                                          resolve_broker_trust(broker_trust, tee),
                                          output_destinations(destinations),
                                          # Batch runs: a bundle holds many batches, and
                                          # the next one's DEK releases overlap this
                                          # one's work. Not for per-bundle streaming
                                          # batches, which keep their outputs prompt.
                                          lookahead=batcher is None)
        self._drop_duplicates = drop_duplicates
        self._batcher = batcher or BatchByDataKey(
            max_count=max_batch_size, max_bytes=max_batch_bytes, shards=key_shards,
            spread=key_spread, drop_duplicates=drop_duplicates)

    def expand(self, pcoll: beam.PCollection) -> dict[str, beam.PCollection]:
        return batch_and_process(pcoll, self._batcher, self._drop_duplicates,
                                 "OpenFeaturizeReseal", self._fn)


def batch_and_process(pcoll: beam.PCollection, batcher: beam.PTransform, drop_duplicates: bool,
                      step: str, fn: beam.DoFn) -> dict[str, beam.PCollection]:
    """Header facts -> batches -> ``fn`` per batch, with the tags of ``ConfidentialProcess``.

    One body for the in-process step and the remote one (``transforms.remote``), so both
    batch, drop copies and collect dead letters alike (same inputs, same output names).
    """
    sealed, dead_letter = ConfidentialProcess.SEALED, ConfidentialProcess.DEAD_LETTER
    keyed = pcoll | "HeaderFacts" >> beam.ParDo(_AsSealedEnvelopeFn()).with_outputs(
        dead_letter, main=sealed)
    batched = keyed[sealed] | "Batch" >> batcher
    batches = batched[BatchByDataKey.BATCHES] if drop_duplicates else batched
    processed = batches | step >> beam.ParDo(fn).with_outputs(dead_letter, main=sealed)
    dead = (keyed[dead_letter], processed[dead_letter]) | "DeadLetters" >> beam.Flatten()
    outputs = {sealed: processed[sealed], dead_letter: dead}
    if drop_duplicates:   # exact copies dropped in the data-key groups
        outputs[ConfidentialProcess.DUPLICATES] = batched[BatchByDataKey.DUPLICATES]
    return outputs
