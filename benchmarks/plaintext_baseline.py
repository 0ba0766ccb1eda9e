"""The plaintext baseline of ``benchmarks/pipeline.py --baseline plaintext``: the batch
pipeline's Beam graph with the cryptography taken out, on the partners' plaintext JSONL.

The same shape as ``pipelines.batch`` on FnApiRunner: match and read the files (the same
bounded line framing), batch with ``BatchElements`` of the same size, and per batch do what
``BatchProcessor`` does after opening: group by (region, producer), read every record with
one ``pyarrow.json.read_json`` (``parse_records``, the spec's read schema), apply the same
compiled feature spec through ``decide_region_outcome`` (the shared row limits, conformance,
features, k-anonymity), serialize each (region, producer) output as the unsealed form of the
output format (an Arrow IPC stream for ``sealed-arrow``, a plain Parquet file for
``parquet-pme``), then key by region and write each output to ``<out>/<region>/``
atomically. What is left out is exactly the confidentiality: no envelope headers, no key
release or broker, no decryption, no sealing, no Parquet encryption; the spec's keys are
fixed local bytes per (key, producer). Region and producer come from the file the record was
read from, as the envelope header says them in the sealed run.

The counts are Beam metrics in the ``sealbeam_baseline`` namespace, reconciled like the
sealed run: records in = records out + dead letters. It is benchmark code, not a feature:
nothing in sealbeam runs on plaintext.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from enclave_workers.batch_processor import PARQUET_PME, default_feature_spec
from enclave_workers.features import CompiledSpec, FeatureError, compile_spec
from enclave_workers.records import json_read_schema, parse_records, table_to_ipc
from enclave_workers.row_outcomes import RowPart, decide_region_outcome
from transforms.read import MAX_LINE_BYTES, iter_bounded_lines

NAMESPACE = "sealbeam_baseline"
SUFFIXES = {PARQUET_PME: ".parquet"}
DEFAULT_SUFFIX = ".arrow"


class BaselineSummary(NamedTuple):
    records_in: int
    records_out: int
    dead_letters: int
    rows_out: int
    output_files: int
    framing_errors: int

    @property
    def reconciled(self) -> bool:
        return self.records_in == self.records_out + self.dead_letters


class _PlainRecord:
    """One input record's identity for ``decide_region_outcome`` (compared by identity)."""

    __slots__ = ()


def spec_keys(compiled: CompiledSpec, producer_id: str) -> dict[str, bytes]:
    """Fixed stand-ins for the broker's named keys: 32 bytes per (spec key, producer)."""
    return {name: hashlib.sha256(f"baseline/{name}/{producer_id}".encode()).digest()
            for name in compiled.key_names}


class _ReadPlainLinesFn(beam.DoFn):
    """One matched file -> (region, producer, line) per non-blank line."""

    def __init__(self, origins: Mapping[str, tuple[str, str]]) -> None:
        self._origins = dict(origins)
        self._records_in = Metrics.counter(NAMESPACE, "records_in")
        self._framing = Metrics.counter(NAMESPACE, "framing_errors")

    def process(self, readable_file: fileio.ReadableFile) -> Iterable[tuple[str, str, bytes]]:
        path = readable_file.metadata.path
        region, producer = self._origins[FileSystems.split(path)[1]]
        with readable_file.open(mime_type="application/octet-stream") as stream:
            for _, line, _ in iter_bounded_lines(stream, MAX_LINE_BYTES):
                if line is not None and not line.strip():
                    continue
                self._records_in.inc()
                if line is None:
                    self._framing.inc()
                    continue
                yield region, producer, line.strip()


class _FeaturizeFn(beam.DoFn):
    """One batch of lines -> (region, payload, rows, records) per (region, producer)."""

    def __init__(self, output_format: str) -> None:
        self._output_format = output_format
        self._compiled: CompiledSpec | None = None
        self._dead = Metrics.counter(NAMESPACE, "dead_letters")

    def setup(self) -> None:
        self._compiled = compile_spec(default_feature_spec())

    def process(self, batch: Sequence[tuple[str, str, bytes]]
                ) -> Iterable[tuple[str, tuple[bytes, int, int]]]:
        compiled = self._compiled
        assert compiled is not None, "setup() compiles the spec"
        read_schema = json_read_schema((c.name, c.type) for c in compiled.spec.columns)
        groups: dict[tuple[str, str], list[bytes]] = {}
        for region, producer, line in batch:
            groups.setdefault((region, producer), []).append(line)
        for (region, producer), lines in sorted(groups.items()):
            parsed = parse_records(lines, read_schema)
            self._dead.inc(len(parsed.failures))
            if not parsed.row_sources:
                continue
            sources = [_PlainRecord() for _ in parsed.row_sources]
            try:
                outcome = decide_region_outcome(
                    compiled, [RowPart.of_records(parsed.table, sources)],
                    spec_keys(compiled, producer), region)
            except FeatureError:
                self._dead.inc(len(sources))
                continue
            self._dead.inc(len(outcome.whole))
            if not outcome.kept_sources:
                continue
            table = outcome.table(compiled.output_schema)
            yield region, (self._serialize(table), table.num_rows, len(outcome.kept_sources))

    def _serialize(self, table: pa.Table) -> bytes:
        if self._output_format == PARQUET_PME:
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            return sink.getvalue().to_pybytes()
        return table_to_ipc(table)


class _WriteFn(beam.DoFn):
    """Write one output under ``<root>/<region>/`` via a temporary name and a rename."""

    def __init__(self, output_root: str, suffix: str) -> None:
        self._root = output_root
        self._suffix = suffix
        self._records_out = Metrics.counter(NAMESPACE, "records_out")
        self._rows_out = Metrics.counter(NAMESPACE, "rows_out")
        self._files = Metrics.counter(NAMESPACE, "output_files")

    def process(self, element: tuple[str, tuple[bytes, int, int]]) -> Iterable[str]:
        region, (payload, rows, records) = element
        name = f"part-{uuid.uuid4()}{self._suffix}"
        final_path = FileSystems.join(self._root, region, name)
        temp_path = FileSystems.join(self._root, region, f".{name}.tmp")
        writer = FileSystems.create(temp_path, mime_type="application/octet-stream",
                                    compression_type="uncompressed")
        try:
            writer.write(payload)
        finally:
            writer.close()
        FileSystems.rename([temp_path], [final_path])
        self._records_out.inc(records)
        self._rows_out.inc(rows)
        self._files.inc()
        yield final_path


def run_plaintext_baseline(file_pattern: str, origins: Mapping[str, tuple[str, str]],
                           output_root: str, batch_size: int, output_format: str
                           ) -> BaselineSummary:
    """Run the baseline graph on FnApiRunner; ``origins`` maps file name -> (region, producer)."""
    pipeline = beam.Pipeline(runner=FnApiRunner())
    _ = (
        pipeline
        | "Match" >> fileio.MatchFiles(file_pattern, empty_match_treatment="DISALLOW")
        | "Open" >> fileio.ReadMatches()
        | "SplitLines" >> beam.ParDo(_ReadPlainLinesFn(origins))
        | "Batch" >> beam.BatchElements(min_batch_size=batch_size, max_batch_size=batch_size)
        | "Featurize" >> beam.ParDo(_FeaturizeFn(output_format))
        | "Write" >> beam.ParDo(_WriteFn(output_root, SUFFIXES.get(output_format,
                                                                    DEFAULT_SUFFIX)))
    )
    result = pipeline.run()
    result.wait_until_finish()
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + int(value or 0)
    framing = totals.get("framing_errors", 0)
    return BaselineSummary(
        records_in=totals.get("records_in", 0),
        records_out=totals.get("records_out", 0),
        dead_letters=totals.get("dead_letters", 0) + framing,
        rows_out=totals.get("rows_out", 0),
        output_files=totals.get("output_files", 0),
        framing_errors=framing,
    )
