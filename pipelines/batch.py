"""The batch pipeline: sealed record files -> TEE featurization -> region-pinned outputs.

What it does: ``build_batch_pipeline`` wires the ``transforms`` into a Beam pipeline (read,
parse headers, confidential processing with the feature spec, route by region, pinned write,
dead letters); ``run_batch`` runs it — on ``FnApiRunner`` unless ``--runner`` names another,
since Beam 2.77's default DirectRunner first tries to download the Prism binary — and
returns a ``RunSummary`` from the job's metrics, reconciling
``records_in == records_out + dead_letters`` (rows suppressed for k-anonymity and rows
resealed into dead letters are reported beside it; docs/ARCHITECTURE.md has the rule).

What it does not: it does not start a broker or create keys (``demo`` and ``keys init`` do)
and never sees plaintext: that only exists inside ``ConfidentialProcess``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import apache_beam as beam
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
from transforms.dead_letter_sinks import WriteDeadLettersBySink

from .errors import ReconciliationError
from .options import (
    SealbeamOptions,
    allowed_regions,
    feature_spec,
    output_format,
    required,
    session_limits,
    tee_settings,
)
from .preflight import PreflightClients, job_residency, preflight_job


class BatchPipelineOutputs(NamedTuple):
    written_paths: beam.PCollection
    dead_letters: beam.PCollection
    spec_fingerprint: str
    residency: dict[str, object] | None = None


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
    residency: dict[str, object] = field(default_factory=dict)

    @property
    def reconciled(self) -> bool:
        return self.records_in == self.records_out + self.dead_letters

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "reconciled": self.reconciled}


def build_batch_pipeline(p: beam.Pipeline, options: PipelineOptions,
                         preflight_clients: PreflightClients | None = None
                         ) -> BatchPipelineOutputs:
    """Add sealbeam's batch steps to ``p`` according to ``options``."""
    opts = options.view_as(SealbeamOptions)
    read = p | "ReadSealed" >> ReadSealedRecords(required(opts, "input"))
    return add_processing_steps(
        opts, read[ReadSealedRecords.SEALED], read[ReadSealedRecords.DEAD_LETTER],
        preflight_clients=preflight_clients)


def add_processing_steps(
    opts: SealbeamOptions, sealed: beam.PCollection, reader_dead_letters: beam.PCollection,
    *, preflight_clients: PreflightClients | None = None,
) -> BatchPipelineOutputs:
    """Everything after the source, shared by the batch and streaming pipelines: parse headers,
    the confidential step, routing, region-pinned writes and the dead-letter sinks. Preflight
    (``pipelines.preflight``) runs first: a sink or worker outside the residency map refuses
    the job before any data moves."""
    regions = allowed_regions(opts)
    residency = job_residency(opts, regions)
    report = preflight_job(opts, residency, regions, preflight_clients)
    broker_url = required(opts, "broker_url")
    parsed = sealed | "ParseHeaders" >> ParseSealed()
    confidential = ConfidentialProcess(
        broker_url, tee_settings(opts), feature_spec(opts), output_format=output_format(opts),
        limits=session_limits(opts), min_batch_size=opts.min_batch_size,
        max_batch_size=opts.max_batch_size,
    )
    processed = parsed[ParseSealed.SEALED] | "Confidential" >> confidential
    written = (
        processed[ConfidentialProcess.SEALED]
        | "Route" >> RouteByRegion()
        | "WritePinned" >> WriteRegionPinned(residency.sinks(), regions, residency.keks())
    )
    dead_letters = (
        (reader_dead_letters, parsed[ParseSealed.DEAD_LETTER],
         processed[ConfidentialProcess.DEAD_LETTER], written[WriteRegionPinned.DEAD_LETTER])
        | "AllDeadLetters" >> beam.Flatten()
    )
    dead_letters | "WriteDeadLetters" >> WriteDeadLettersBySink(
        residency.dead_letter_roots(), residency.unrouted_dead_letter_sink.beam_path)
    return BatchPipelineOutputs(written[WriteRegionPinned.WRITTEN], dead_letters,
                                confidential.compiled.fingerprint,
                                {"map": residency.to_json(), "preflight": report.to_json()})


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
    built = build_batch_pipeline(pipeline, options, preflight_clients)
    result = pipeline.run()
    result.wait_until_finish()
    return summarize_run(result, opts, built, started)


def check_reconciled(summary: RunSummary) -> None:
    """Raise ``ReconciliationError`` unless records_in == records_out + dead_letters."""
    if not summary.reconciled:
        raise ReconciliationError(
            f"run does not reconcile: records_in={summary.records_in} != records_out="
            f"{summary.records_out} + dead_letters={summary.dead_letters}")


def summarize_run(result: beam.runners.runner.PipelineResult, opts: SealbeamOptions,
                  built: BatchPipelineOutputs, started: float) -> RunSummary:
    """The run's counts from its metrics (namespace ``sealbeam``), for batch and streaming."""
    totals = _counter_totals(result)
    regions = sorted(allowed_regions(opts))
    return RunSummary(
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
        residency=dict(built.residency or {}),
    )
