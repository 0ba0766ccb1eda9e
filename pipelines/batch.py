"""The batch pipeline: sealed record files -> TEE featurization -> region-pinned outputs.

What it does: ``build_batch_pipeline`` wires the ``transforms`` into a Beam pipeline: read
files in byte ranges spread over the workers (``Reshuffle``), parse headers, de-duplicate by
envelope id, batch by data key (deterministic batches), the confidential step with the
feature spec, a checkpoint (``Reshuffle``) so a retried write rewrites the same outputs, route
by region, pinned writes named by their inputs, dead letters named the same way, and, once
everything is written, removal of temporary files a killed worker left. ``run_batch`` runs it
— on ``FnApiRunner`` unless ``--runner`` names another, since Beam 2.77's default DirectRunner
first tries to download the Prism binary; ``--direct_num_workers=N
--direct_running_mode=multi_processing`` spreads it over N worker processes — and returns a
``RunSummary`` from the job's metrics, reconciling
``records_in == records_out + dead_letters + duplicates`` (rows suppressed for k-anonymity and
rows resealed into dead letters are reported beside it; docs/ARCHITECTURE.md has the rule).
Running the same job again into the same output root rewrites the same file names, so every
row is there once.

What it does not: it does not start a broker or create keys (``demo`` and ``keys init`` do)
and never sees plaintext: that only exists inside ``ConfidentialProcess``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from transforms import (
    ConfidentialProcess,
    ParseSealed,
    ReadSealedRecords,
    RouteByRegion,
    WriteRegionPinned,
)
from transforms import metrics as names
from transforms.batching import BundleBatches
from transforms.dead_letter_sinks import WriteDeadLettersBySink
from transforms.dead_letters import DEAD_LETTER_DIR
from transforms.dedupe import STATEFUL, DeduplicateEnvelopes
from transforms.write import clean_temporary_files

from .confidential_mode import confidential_step, remote_mode
from .custody_run import write_run_statement
from .errors import ReconciliationError
from .ledger_head import fetch_ledger_head
from .options import (
    SealbeamOptions,
    allowed_regions,
    output_format,
    required,
)
from .preflight import PreflightClients, job_residency, preflight_job
from .preflight.pool import pool_location_patterns
from .residency import ResidencyMap

_LOG = logging.getLogger(__name__)

OutputsStep = Callable[[beam.PCollection], beam.PCollection]


class BatchPipelineOutputs(NamedTuple):
    written_paths: beam.PCollection
    dead_letters: beam.PCollection
    spec_fingerprint: str
    dead_letter_paths: beam.PCollection | None = None
    residency: dict[str, object] | None = None
    temporary_directories: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSummary:
    """Counts of one run, from the job's committed ``sealbeam`` metrics."""

    records_in: int
    records_out: int
    dead_letters: int
    rows_out: int
    output_files: int
    broker_calls: int
    outputs_by_region: dict[str, int] = field(default_factory=dict)
    rows_suppressed: int = 0
    dead_letter_rows: int = 0
    spec_fingerprint: str = ""
    output_format: str = ""
    seconds: float = 0.0
    duplicates: int = 0
    residency: dict[str, object] = field(default_factory=dict)
    ledger_head: dict[str, object] | None = None
    """The broker's signed checkpoint of its ledger after the run (an anchor for
    ``sealbeam audit verify --anchor``)."""

    @property
    def reconciled(self) -> bool:
        return self.records_in == self.records_out + self.dead_letters + self.duplicates

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "reconciled": self.reconciled}


def build_batch_pipeline(p: beam.Pipeline, options: PipelineOptions, *,
                         after_confidential: OutputsStep | None = None,
                         preflight_clients: PreflightClients | None = None
                         ) -> BatchPipelineOutputs:
    """Add sealbeam's batch steps to ``p`` according to ``options``.

    ``after_confidential``, when given, is applied to the confidential step's outputs before
    the checkpoint (an audit step, or a failure injected by a test). ``preflight_clients``:
    the cloud clients preflight reads sinks with (default: the clouds' own).
    """
    opts = options.view_as(SealbeamOptions)
    read = p | "ReadSealed" >> ReadSealedRecords(required(opts, "input"),
                                                 range_bytes=opts.range_bytes)
    built = add_processing_steps(
        opts, read[ReadSealedRecords.SEALED], read[ReadSealedRecords.DEAD_LETTER],
        after_confidential=after_confidential, preflight_clients=preflight_clients)
    written = (built.written_paths, built.dead_letter_paths) | "AllWritten" >> beam.Flatten()
    # Once, after every write (the side input is complete only then), even when nothing was
    # written; a side input, not a global count, which would add ten transforms and a stage.
    _ = (
        p
        | "AfterAllWrites" >> beam.Impulse()
        | "CleanTemporaryFiles" >> beam.Map(_clean_after_writes, beam.pvalue.AsList(written),
                                            list(built.temporary_directories))
    )
    return built


def _clean_after_writes(_: bytes, written: list[str], directories: list[str]) -> int:
    """Runs once every write of a batch run is done: removes temporary files left behind."""
    removed = clean_temporary_files(directories)
    if removed:
        _LOG.warning("removed %d temporary files left by failed attempts (%d files written)",
                     len(removed), len(written))
    return len(removed)


def _written_directories(residency: ResidencyMap, regions: frozenset[str]) -> tuple[str, ...]:
    """Where the job writes: its regions' sinks and every dead-letter directory."""
    sinks = [residency.regions[r].sink.beam_path for r in sorted(regions)
             if r in residency.regions]
    roots = sorted({*residency.dead_letter_roots().values(),
                    residency.unrouted_dead_letter_sink.beam_path})
    return (*sinks, *(FileSystems.join(root, DEAD_LETTER_DIR) for root in roots))


def add_processing_steps(
    opts: SealbeamOptions, sealed: beam.PCollection, reader_dead_letters: beam.PCollection, *,
    after_confidential: OutputsStep | None = None,
    preflight_clients: PreflightClients | None = None,
) -> BatchPipelineOutputs:
    """Everything after the source, shared by the batch and streaming pipelines: parse headers,
    de-duplicate, the confidential step (batched by data key; per bundle and window in a
    streaming run, which must not wait for windows to close), a checkpoint, routing,
    region-pinned writes and the dead-letter sinks. Preflight (``pipelines.preflight``) runs
    first: a sink or worker outside the residency map refuses the job before any data moves."""
    regions = allowed_regions(opts)
    residency = job_residency(opts, regions)
    report = preflight_job(opts, residency, regions, preflight_clients)
    streaming = bool(opts.view_as(StandardOptions).streaming)
    parsed = sealed | "ParseHeaders" >> ParseSealed()
    envelopes = parsed[ParseSealed.SEALED]
    if streaming:
        # Copies may arrive far apart: the stateful form, before batching per bundle.
        deduped = envelopes | "Deduplicate" >> DeduplicateEnvelopes(
            horizon_s=opts.dedupe_horizon_s, strategy=STATEFUL)
        envelopes = deduped[DeduplicateEnvelopes.UNIQUE]
    # Batch runs drop exact copies inside the data-key groups (copies share a group), which
    # is DeduplicateEnvelopes' grouped form over the whole run without a shuffle of its own.
    # In-process, or remote on an attested pool: the same batches and output names either way.
    confidential = confidential_step(
        opts, batcher=(BundleBatches(max_count=opts.max_batch_size,
                                     max_bytes=opts.max_batch_bytes) if streaming else None),
        drop_duplicates=not streaming, destinations=report.destinations(),
        pool_locations=pool_location_patterns(residency, regions))
    processed = envelopes | "Confidential" >> confidential
    outputs = processed[ConfidentialProcess.SEALED]
    if after_confidential is not None:
        outputs = after_confidential(outputs)
    if not streaming:
        # The checkpoint: a retried write rewrites these outputs, not a re-run of the
        # confidential step. Not in streaming runs: on FnApiRunner a Reshuffle there holds
        # every output until the feed ends (the streaming pipeline's own concern).
        outputs = outputs | "Checkpoint" >> beam.Reshuffle()
    written = (
        outputs
        | "Route" >> RouteByRegion()
        | "WritePinned" >> WriteRegionPinned(residency.sinks(), regions, residency.keks())
    )
    dead_letters = (
        (reader_dead_letters, parsed[ParseSealed.DEAD_LETTER],
         processed[ConfidentialProcess.DEAD_LETTER], written[WriteRegionPinned.DEAD_LETTER])
        | "AllDeadLetters" >> beam.Flatten()
    )
    dead_letter_paths = dead_letters | "WriteDeadLetters" >> WriteDeadLettersBySink(
        residency.dead_letter_roots(), residency.unrouted_dead_letter_sink.beam_path)
    return BatchPipelineOutputs(written[WriteRegionPinned.WRITTEN], dead_letters,
                                confidential.compiled.fingerprint, dead_letter_paths,
                                {"map": residency.to_json(), "preflight": report.to_json()},
                                _written_directories(residency, regions))


def _counter_totals(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    query = result.metrics().query(MetricsFilter().with_namespace(names.NAMESPACE))
    totals: dict[str, int] = {}
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


def run_batch(options: PipelineOptions,
              preflight_clients: PreflightClients | None = None) -> RunSummary:
    """Run the batch pipeline to completion and summarize it from its metrics
    (``preflight_clients``: the cloud clients preflight reads sinks with; default: the
    clouds' own, with default credentials)."""
    opts = options.view_as(SealbeamOptions)
    runner = options.view_as(StandardOptions).runner or FnApiRunner()
    started = time.monotonic()
    pipeline = beam.Pipeline(runner=runner, options=options)
    built = build_batch_pipeline(pipeline, options, preflight_clients=preflight_clients)
    result = pipeline.run()
    result.wait_until_finish()
    return summarize_run(result, opts, built, started)


def check_reconciled(summary: RunSummary) -> None:
    """Raise ``ReconciliationError`` unless
    records_in == records_out + dead_letters + duplicates."""
    if not summary.reconciled:
        raise ReconciliationError(
            f"run does not reconcile: records_in={summary.records_in} != records_out="
            f"{summary.records_out} + dead_letters={summary.dead_letters} + duplicates="
            f"{summary.duplicates}")


def summarize_run(result: beam.runners.runner.PipelineResult, opts: SealbeamOptions,
                  built: BatchPipelineOutputs, started: float) -> RunSummary:
    """The run's counts from its metrics (namespace ``sealbeam``), for batch and streaming."""
    totals = _counter_totals(result)
    regions = sorted(allowed_regions(opts))
    summary = RunSummary(
        records_in=totals.get(names.RECORDS_IN, 0),
        records_out=totals.get(names.RECORDS_OUT, 0),
        dead_letters=totals.get(names.DEAD_LETTERS, 0),
        rows_out=totals.get(names.ROWS_OUT, 0),
        output_files=totals.get(names.OUTPUT_FILES, 0),
        broker_calls=totals.get(names.BROKER_CALLS, 0),
        outputs_by_region={r: totals.get(names.outputs_in_region(r), 0) for r in regions},
        rows_suppressed=totals.get(names.ROWS_SUPPRESSED, 0),
        dead_letter_rows=totals.get(names.DEAD_LETTER_ROWS, 0),
        spec_fingerprint=built.spec_fingerprint,
        output_format=output_format(opts),
        seconds=round(time.monotonic() - started, 3),
        duplicates=totals.get(names.DUPLICATES, 0),
        # Remote mode may run without --broker_url (the pool talks to the broker): no head then.
        ledger_head=(fetch_ledger_head(opts) if opts.broker_url or not remote_mode(opts)
                     else None),
        residency=dict(built.residency or {}),
    )
    if not opts.view_as(StandardOptions).streaming and opts.output_root \
            and not opts.residency_map:
        # The run's custody index beside its outputs (docs/FORMAT.md, custody statements);
        # runs whose sinks a residency map places (other stores) have per-output statements only.
        write_run_statement(opts.output_root, required(opts, "input"), regions,
                            summary.to_json())
    return summary
