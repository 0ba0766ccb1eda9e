"""Benchmark: the batch pipeline end to end on the embedded default (FnApiRunner, a simulated
SEV-SNP worker, the key broker on loopback), next to the confidential step alone.

What it does, in a temporary directory: creates a state (``init_state``: keyring, named keys,
dev SEV-SNP chain, demo policy), generates ``--records`` synthetic partner records and seals
them as partners would (``seal_file``, a fresh DEK per ``--records-per-key`` records; timed
separately), starts the broker in this process on 127.0.0.1, and for each ``--batch-size``:

- runs the batch pipeline (``run_batch``) on FnApiRunner with batches of at most that size
  (``--max_batch_size``; each data-key group is cut into near-equal batches); records/s end
  to end and wall seconds;
- checks that the run reconciles (records in = out + dead letters, every record read) and
  that the outputs, opened as each region's reader, hold the rows the run reported; a failed
  check exits 1 and no table is printed;
- counts the broker calls the run made: the total from the job's ``broker_calls`` metric,
  and by kind (attest, release, generate, release-named) from the broker's audit ledger,
  per 1,000 records, and releases per sealed data key (1.0 = one release per key per worker);
- times the confidential step alone on the same envelopes outside Beam: one
  ``BatchProcessor`` with a fresh ``KeySession`` (the one ``ConfidentialProcess`` builds),
  chunks of the same batch size, one thread, no file reads or writes; the ratio of the two times is
  the Beam overhead (reading, parsing headers, batching, routing, writing, the runner);
- reads the peak RSS of each run (Linux VmHWM reset just before it; ``ru_maxrss``, the
  process's peak so far, where that is unavailable) and, at the end, ``ru_maxrss``. Every
  Beam run comes before the runs outside Beam, which hold all envelopes in memory.

With ``--baseline plaintext`` each batch size also gets ``--repeat`` rounds (default 3) of
three more FnApiRunner runs, after the others: the same pipeline on **record-stream** input
(record profile 2: the partner files sealed with ``seal_file(..., profile=2)``,
``--records-per-stream`` records a stream and the same DEKs per ``--records-per-key``), on
**sealed-batch** input (each partner file sealed as one batch envelope,
``seal_file(..., output_kind="batch")``) and the **plaintext baseline**
(``benchmarks/plaintext_baseline.py``: the same graph, spec, batching and output format on
the partners' plaintext JSONL, with the cryptography taken out). The three are interleaved,
each round starting one input later, so that a change in the machine's load falls on all
three alike; every run is checked like the others. The report prints the median and best
records/s of each input and each sealed input's ratio to plaintext: of the medians (the
figure to quote), of the best runs, and per round (JSON).

With ``--workers N`` (N >= 2) the pipeline also runs on FnApiRunner in multi-processing
mode (``--direct_running_mode=multi_processing``) with 1 and with N worker processes, at the
first batch size: records/s, the speed-up over one worker process, broker calls per 1,000
records and attestations (one per worker process that did confidential work).

The ledger's hash chain is verified at the end. Arrow is pinned to one CPU thread, as in the
other benchmarks. ``--json PATH`` also writes the numbers.

What it does not: no cloud, no real TEE (the worker is simulated and its keys are marked so),
one run per batch size outside ``--baseline`` (no repeats there: a 100,000-record run takes
most of a minute), and the broker shares this process (and its GIL) with the runner, as in
``sealbeam demo``.

    .venv/bin/python benchmarks/pipeline.py [--records 100000] [--files 2]
        [--batch-size 2000 ...] [--output-format sealed-arrow|parquet-pme]
        [--baseline plaintext] [--records-per-stream 1000] [--repeat 3] [--workers N]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import apache_beam
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions

# The repository root goes first so that ``import envelope`` finds the package, not
# benchmarks/envelope.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from enclave_workers.batch_processor import (
    OUTPUT_FORMATS,
    PARQUET_PME,
    SEALED_ARROW,
    BatchProcessor,
    DeadLetter,
    default_feature_spec,
)
from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT
from enclave_workers.features import compile_spec
from keybroker.config import BrokerSettings, init_state
from keybroker.kms.local import LocalKeyring
from keybroker.ledger import AuditLedger
from keybroker.service.server import RunningBroker, serve_in_thread
from pipelines import synthetic
from pipelines.batch import RunSummary, run_batch
from pipelines.errors import PipelineError
from pipelines.reading import open_outputs
from pipelines.sealing import DEFAULT_RECORDS_PER_STREAM, seal_file
from transforms.confidential import PME_OUTPUT_KEY_MAX_ENVELOPES
from transforms.read import MAX_LINE_BYTES, decode_line, iter_bounded_lines
from transforms.session import make_key_session
from transforms.tee import SIMULATED_SEV_SNP, SessionLimits, TeeSettings

try:  # as a script, this file's directory is on sys.path; as a module (tests), the package is
    from plaintext_baseline import run_plaintext_baseline
except ImportError:  # pragma: no cover - depends on how the benchmark was loaded
    from benchmarks.plaintext_baseline import run_plaintext_baseline

DEFAULT_RECORDS = 100_000
DEFAULT_FILES_PER_GROUP = 2
DEFAULT_RECORDS_PER_KEY = 500          # what ``sealbeam demo`` seals with
DEFAULT_BATCH_SIZES = (2000,)
# Ledger event -> the kind name ``KeySession.broker_calls`` uses (challenges and ledger-head
# fetches are not ledgered).
LEDGERED_KINDS = {"attest": "attest", "release": "release", "generate": "generate",
                  "release-named": "release_named"}


class BenchmarkCheckError(Exception):
    """A run's counts or outputs are wrong: its numbers would be meaningless."""


# -- peak memory ---------------------------------------------------------------------------
def proc_status_kib(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux), or None where there is none."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return proc_status_kib("VmHWM") is not None


def process_peak_rss_bytes() -> int:
    """``ru_maxrss``: the peak RSS of this process so far (KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def start_peak_rss_window() -> tuple[bool, int]:
    """Reset the peak mark where Linux allows; (whether it was reset, RSS now in bytes)."""
    was_reset = reset_peak_rss()
    return was_reset, (proc_status_kib("VmRSS") or 0) * 1024


def peak_rss_since(window: tuple[bool, int]) -> dict[str, object]:
    """The peak RSS since ``start_peak_rss_window`` (or of the process, where not reset)."""
    was_reset, rss_at_start = window
    if was_reset:
        peak, method = (proc_status_kib("VmHWM") or 0) * 1024, "VmHWM after clear_refs"
    else:
        peak, method = process_peak_rss_bytes(), "ru_maxrss (process peak so far)"
    return {"peak_rss_bytes": peak, "rss_at_start_bytes": rss_at_start,
            "peak_rss_method": method}


# -- inputs --------------------------------------------------------------------------------
def prepare_inputs(workdir: Path, records: int, files_per_group: int,
                   records_per_key: int) -> tuple[BrokerSettings, list[Path], dict[str, object]]:
    """The state, the sealed files and the sealing figures (generation is timed apart)."""
    settings = init_state(workdir / "state", regions=synthetic.REGIONS,
                          tenants=synthetic.PRODUCERS, allowed_measurements=(DEV_MEASUREMENT,))
    started = time.perf_counter()
    partner_files = synthetic.write_partner_files(workdir / "partner", records,
                                                  files_per_group=files_per_group)
    generate_seconds = time.perf_counter() - started
    keyring = LocalKeyring.open(settings.keyring_path)
    sealed_paths: list[Path] = []
    envelopes = data_keys = 0
    started = time.perf_counter()
    for partner_file in partner_files:
        target = workdir / "sealed" / f"{partner_file.path.stem}.sealed"
        report = seal_file(partner_file.path, target, keyring=keyring,
                           region=partner_file.region, producer_id=partner_file.producer_id,
                           records_per_key=records_per_key, profile=1)   # v1 records
        envelopes += report.envelopes
        data_keys += report.data_keys
        sealed_paths.append(target)
    seal_seconds = time.perf_counter() - started
    if envelopes != records:
        raise BenchmarkCheckError(f"sealed {envelopes} envelopes, expected {records}")
    return settings, sealed_paths, {
        "records": records,
        "files": len(sealed_paths),
        "records_per_key": records_per_key,
        "data_keys": data_keys,
        "sealed_bytes": sum(p.stat().st_size for p in sealed_paths),
        "generate_seconds": round(generate_seconds, 3),
        "seal_seconds": round(seal_seconds, 3),
        "seal_records_per_second": round(records / seal_seconds),
    }


def load_envelopes(paths: Iterable[Path]) -> tuple[list[bytes], list[DeadLetter]]:
    """Every sealed line of ``paths`` as envelope bytes, the way ``ReadSealedRecords`` frames
    them (framing failures become dead letters)."""
    envelopes: list[bytes] = []
    dead: list[DeadLetter] = []
    for path in paths:
        with path.open("rb") as stream:
            for line_no, line, length in iter_bounded_lines(stream, MAX_LINE_BYTES):
                if line is None:
                    raise BenchmarkCheckError(f"{path.name}:{line_no}: line of {length} bytes, "
                                              f"over {MAX_LINE_BYTES}")
                if not line.strip():
                    continue
                decoded = decode_line(line, f"{path.name}:{line_no}")
                (dead if isinstance(decoded, DeadLetter) else envelopes).append(decoded)
    return envelopes, dead


# -- ledger --------------------------------------------------------------------------------
def ledger_head(settings: BrokerSettings) -> int:
    with AuditLedger(settings.ledger_path, read_only=True) as ledger:
        return ledger.head()[0]


def ledger_calls_since(settings: BrokerSettings, after_seq: int) -> dict[str, int]:
    """Broker calls the ledger recorded after ``after_seq``, by event, and its new entries."""
    with AuditLedger(settings.ledger_path, read_only=True) as ledger:
        entries = [e for e in ledger.entries() if e.seq > after_seq]
    events = Counter(e.event for e in entries)
    denied = sum(1 for e in entries if e.decision == "denied")
    if denied:
        raise BenchmarkCheckError(f"the broker denied {denied} call(s) during the run")
    counts = {kind: events.get(event, 0) for event, kind in LEDGERED_KINDS.items()}
    counts["ledger_entries"] = len(entries)
    return counts


# -- one pipeline run ----------------------------------------------------------------------
def check_run_counts(summary: RunSummary, records: int, rows_opened: int,
                     envelopes: int | None = None) -> None:
    """Every problem with a run's counts at once; raises ``BenchmarkCheckError``.

    ``envelopes`` is the number of sealed-batch envelopes when the input is sealed batches
    (then records_in counts envelopes and every record must be a row out, suppressed or a
    dead-letter row); None for sealed records (one envelope per record, one row each).
    """
    problems = []
    if envelopes is not None:
        if summary.records_in != envelopes:
            problems.append(f"records_in={summary.records_in}, {envelopes} batches were sealed")
        rows = summary.rows_out + summary.rows_suppressed + summary.dead_letter_rows
        if summary.dead_letters == 0 and rows != records:
            problems.append(f"rows out {summary.rows_out} + suppressed "
                            f"{summary.rows_suppressed} + dead {summary.dead_letter_rows} "
                            f"!= {records} records sealed")
    elif summary.records_in != records:
        problems.append(f"records_in={summary.records_in}, {records} were sealed")
    if not summary.reconciled:
        problems.append(f"records_in={summary.records_in} != records_out="
                        f"{summary.records_out} + dead_letters={summary.dead_letters}")
    if envelopes is None and summary.rows_out + summary.rows_suppressed != summary.records_out:
        problems.append(f"each sealed record is one row, but rows_out={summary.rows_out} + "
                        f"rows_suppressed={summary.rows_suppressed} != records_out="
                        f"{summary.records_out}")
    if rows_opened != summary.rows_out:
        problems.append(f"the outputs hold {rows_opened} rows; the run reported "
                        f"{summary.rows_out}")
    if problems:
        raise BenchmarkCheckError("; ".join(problems))


def rows_in_outputs(out_dir: Path, keyring: LocalKeyring) -> int:
    """Rows in every region's outputs, opened as that region's reader."""
    rows = 0
    for region in synthetic.REGIONS:
        if (out_dir / region).is_dir():
            rows += open_outputs([out_dir / region], keyring=keyring, region=region).num_rows
    return rows


def per_thousand(calls: int, records: int) -> float:
    return round(calls * 1000 / records, 3)


def run_pipeline(settings: BrokerSettings, broker: RunningBroker, sealed_dir: Path,
                 out_dir: Path, batch_size: int, output_format: str,
                 inputs: dict[str, object], envelopes: int | None = None,
                 workers: int | None = None) -> dict[str, object]:
    """One batch-pipeline run on FnApiRunner, timed, checked and counted.

    ``envelopes``: the number of sealed-batch envelopes when ``sealed_dir`` holds those;
    ``workers`` runs it on that many worker processes (multi-processing) instead of in this
    process.
    """
    records = int(inputs["records"])
    processes = [] if workers is None else [f"--direct_num_workers={workers}",
                                            "--direct_running_mode=multi_processing"]
    options = PipelineOptions(flags=[*processes,
        f"--input={sealed_dir / '*.sealed'}",
        f"--output_root={out_dir}",
        f"--broker_url={broker.url}",
        f"--tee={SIMULATED_SEV_SNP}",
        f"--dev_tee_dir={settings.dev_chain_dir}",
        f"--regions={','.join(synthetic.REGIONS)}",
        f"--output_format={output_format}",
        f"--min_batch_size={batch_size}",
        f"--max_batch_size={batch_size}",
    ])
    before = ledger_head(settings)
    window = start_peak_rss_window()
    started, cpu_started = time.perf_counter(), time.process_time()
    summary = run_batch(options)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    memory = peak_rss_since(window)
    calls = ledger_calls_since(settings, before)
    keyring = LocalKeyring.open(settings.keyring_path)
    check_run_counts(summary, records, rows_in_outputs(out_dir, keyring), envelopes)
    by_kind = {kind: calls[kind] for kind in LEDGERED_KINDS.values()}
    return {
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "records_per_second": round(records / seconds),
        "records_in": summary.records_in,
        "records_out": summary.records_out,
        "dead_letters": summary.dead_letters,
        "reconciled": summary.reconciled,
        "rows_out": summary.rows_out,
        "rows_suppressed": summary.rows_suppressed,
        "output_files": summary.output_files,
        "broker_calls": summary.broker_calls,
        "broker_calls_by_kind": by_kind,
        "broker_calls_not_ledgered": summary.broker_calls - sum(by_kind.values()),
        "broker_calls_per_1000_records": per_thousand(summary.broker_calls, records),
        "releases_per_data_key": round(calls["release"] / int(
            inputs["data_keys"] if envelopes is None else envelopes), 3),
        "ledger_entries": calls["ledger_entries"],
        **memory,
    }


def run_worker_scaling(settings: BrokerSettings, broker: RunningBroker, workdir: Path,
                       batch_size: int, output_format: str, inputs: dict[str, object],
                       workers: int) -> dict[str, object]:
    """The pipeline on 1 and on ``workers`` worker processes: records/s and the speed-up."""
    # Worker processes must import this checkout, as this process does.
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])])
    runs = {}
    for count in (1, workers):
        before = ledger_head(settings)
        run = run_pipeline(settings, broker, workdir / "sealed", workdir / f"out-w{count}",
                           batch_size, output_format, inputs, workers=count)
        run["attestations"] = ledger_calls_since(settings, before)["attest"]
        runs[str(count)] = run
    one, many = runs["1"], runs[str(workers)]
    return {"batch_size": batch_size, "workers": workers, "runs": runs,
            "speed_up": round(one["seconds"] / many["seconds"], 3)}


def print_worker_scaling(scaling: dict[str, object]) -> None:
    print()
    print(f"{'workers':>8}{'seconds':>9}{'rec/s':>10}{'speed-up':>10}{'attest':>8}"
          f"{'release':>9}{'calls':>7}{'per 1k rec':>12}")
    runs = scaling["runs"]
    for count, run in runs.items():
        kinds = run["broker_calls_by_kind"]
        speed_up = runs["1"]["seconds"] / run["seconds"]
        print(f"{count:>8}{run['seconds']:>9.2f}{run['records_per_second']:>10,}"
              f"{speed_up:>9.2f}x{run['attestations']:>8}{kinds['release']:>9}"
              f"{run['broker_calls']:>7}{run['broker_calls_per_1000_records']:>12.2f}")
    print(f"(FnApiRunner multi_processing, batch size {scaling['batch_size']}; one "
          f"attestation per worker process that did confidential work)")


def run_standalone(settings: BrokerSettings, broker: RunningBroker, envelopes: list[bytes],
                   framing_dead: int, batch_size: int, output_format: str,
                   records: int) -> dict[str, object]:
    """The confidential step alone: one BatchProcessor, one fresh KeySession, one thread."""
    compiled = compile_spec(default_feature_spec())
    session = make_key_session(
        broker.url, TeeSettings(SIMULATED_SEV_SNP, str(settings.dev_chain_dir)),
        SessionLimits(), spec_fingerprint=compiled.fingerprint,
        output_key_max_envelopes=(PME_OUTPUT_KEY_MAX_ENVELOPES
                                  if output_format == PARQUET_PME else None))
    processor = BatchProcessor(session, compiled, output_format=output_format)
    before = ledger_head(settings)
    accounted = rows = suppressed = dead = outputs = 0
    window = start_peak_rss_window()
    try:
        started = time.perf_counter()
        for start in range(0, len(envelopes), batch_size):
            result = processor.process(envelopes[start:start + batch_size])
            outputs += len(result.outputs)
            accounted += sum(output.source_count for output in result.outputs)
            rows += sum(output.row_count for output in result.outputs)
            suppressed += result.rows_suppressed
            dead += len(result.dead_letters)
        seconds = time.perf_counter() - started
        memory = peak_rss_since(window)
        calls = dict(session.broker_calls)
    finally:
        processor.close()
        session.close()
    ledger_calls_since(settings, before)   # raises on a denial
    if accounted + dead + framing_dead != records:
        raise BenchmarkCheckError(f"outside Beam: {accounted} records in outputs + {dead} + "
                                  f"{framing_dead} dead letters != {records} sealed")
    if rows + suppressed != accounted:
        raise BenchmarkCheckError(f"outside Beam: {rows} rows + {suppressed} suppressed != "
                                  f"{accounted} records in outputs")
    total = sum(calls.values())
    return {
        "seconds": round(seconds, 3),
        "records_per_second": round(records / seconds),
        "records_out": accounted,
        "dead_letters": dead + framing_dead,
        "rows_out": rows,
        "rows_suppressed": suppressed,
        "outputs": outputs,
        "broker_calls": total,
        "broker_calls_by_kind": calls,
        "broker_calls_per_1000_records": per_thousand(total, records),
        **memory,
    }


# -- --baseline plaintext ------------------------------------------------------------------
def seal_batch_inputs(settings: BrokerSettings, workdir: Path) -> int:
    """Each partner file sealed as one batch envelope into ``workdir/sealed-batch``."""
    keyring = LocalKeyring.open(settings.keyring_path)
    envelopes = 0
    for path, (region, producer) in partner_origins(workdir).items():
        report = seal_file(workdir / "partner" / path, workdir / "sealed-batch" /
                           f"{Path(path).stem}.sealed", keyring=keyring, region=region,
                           producer_id=producer, output_kind="batch")
        envelopes += report.envelopes
    return envelopes


def partner_origins(workdir: Path) -> dict[str, tuple[str, str]]:
    """Partner file name -> (region, producer), from ``synthetic``'s file naming."""
    origins = {}
    for path in sorted((workdir / "partner").glob("*.jsonl")):
        matches = [(region, producer) for producer in synthetic.PRODUCERS
                   for region in synthetic.REGIONS
                   if path.name.startswith(f"{producer}-{region}-")]
        if len(matches) != 1:
            raise BenchmarkCheckError(f"cannot tell the origin of partner file {path.name}")
        origins[path.name] = matches[0]
    return origins


def run_baseline(workdir: Path, out_dir: Path, batch_size: int, output_format: str,
                 records: int) -> dict[str, object]:
    """The plaintext baseline graph, timed and checked like the sealed runs."""
    window = start_peak_rss_window()
    started, cpu_started = time.perf_counter(), time.process_time()
    summary = run_plaintext_baseline(str(workdir / "partner" / "*.jsonl"),
                                     partner_origins(workdir), str(out_dir), batch_size,
                                     output_format)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    memory = peak_rss_since(window)
    if summary.records_in != records or not summary.reconciled:
        raise BenchmarkCheckError(
            f"plaintext baseline: records_in={summary.records_in} (sealed {records}), "
            f"records_out={summary.records_out} + dead_letters={summary.dead_letters}")
    files = [p for p in out_dir.rglob("part-*") if p.is_file()]
    if len(files) != summary.output_files:
        raise BenchmarkCheckError(f"plaintext baseline: {len(files)} files written, "
                                  f"{summary.output_files} reported")
    return {"seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
            "records_per_second": round(records / seconds),
            "records_in": summary.records_in, "records_out": summary.records_out,
            "dead_letters": summary.dead_letters, "rows_out": summary.rows_out,
            "output_files": summary.output_files, **memory}


def seal_stream_inputs(settings: BrokerSettings, workdir: Path, records_per_key: int,
                       records_per_stream: int) -> dict[str, object]:
    """The partner files sealed as record streams (profile 2) into ``workdir/sealed-stream``;
    the sealing figures, with the bytes of overhead per record in the envelopes."""
    keyring = LocalKeyring.open(settings.keyring_path)
    envelopes = data_keys = records = 0
    started = time.perf_counter()
    for path, (region, producer) in partner_origins(workdir).items():
        report = seal_file(workdir / "partner" / path, workdir / "sealed-stream" /
                           f"{Path(path).stem}.sealed", keyring=keyring, region=region,
                           producer_id=producer, records_per_key=records_per_key, profile=2,
                           records_per_stream=records_per_stream)
        envelopes += report.envelopes
        data_keys += report.data_keys
        records += report.input_records
    seconds = time.perf_counter() - started
    plaintext = sum(len(line.strip()) for path in (workdir / "partner").glob("*.jsonl")
                    for line in path.read_bytes().splitlines() if line.strip())
    sealed, _ = load_envelopes(sorted((workdir / "sealed-stream").glob("*.sealed")))
    return {"records": records, "envelopes": envelopes, "data_keys": data_keys,
            "records_per_stream": records_per_stream, "seal_seconds": round(seconds, 3),
            "seal_records_per_second": round(records / seconds),
            "overhead_bytes_per_record": round((sum(map(len, sealed)) - plaintext) / records,
                                               1)}


BASELINE_KINDS = ("plaintext", "record_stream_beam", "sealed_batch_beam")
DEFAULT_REPEAT = 3


def repeated(runs: list[dict[str, object]]) -> dict[str, object]:
    """Runs of one input: the median and best records/s and seconds, and every run."""
    rates = [int(run["records_per_second"]) for run in runs]
    seconds = [float(run["seconds"]) for run in runs]
    cpu = [float(run["cpu_seconds"]) for run in runs]
    return {"median_records_per_second": round(statistics.median(rates)),
            "best_records_per_second": max(rates),
            "median_seconds": round(statistics.median(seconds), 3),
            "best_seconds": min(seconds),
            "median_cpu_seconds": round(statistics.median(cpu), 3),
            "repeats": len(runs),
            "runs": runs}


def add_baseline_runs(runs: list[dict[str, object]], settings: BrokerSettings,
                      broker: RunningBroker, workdir: Path, args: argparse.Namespace) -> None:
    """Per batch size, ``--repeat`` rounds of the plaintext, record-stream and sealed-batch
    runs, interleaved (each round starts one input later, so drift in the machine's load
    falls on all three alike), and the ratios of their medians and of their best runs."""
    stream_inputs = seal_stream_inputs(settings, workdir, args.records_per_key,
                                       args.records_per_stream)
    batch_envelopes = seal_batch_inputs(settings, workdir)
    batch_inputs = {"records": args.records, "data_keys": batch_envelopes}

    def one(kind: str, size: int, round_no: int) -> dict[str, object]:
        out = workdir / f"out-{kind}-{size}-{round_no}"
        if kind == "plaintext":
            return run_baseline(workdir, out, size, args.output_format, args.records)
        if kind == "record_stream_beam":
            return run_pipeline(settings, broker, workdir / "sealed-stream", out, size,
                                args.output_format, stream_inputs)
        return run_pipeline(settings, broker, workdir / "sealed-batch", out, size,
                            args.output_format, batch_inputs, envelopes=batch_envelopes)

    for run in runs:
        size = int(run["batch_size"])
        run["stream_inputs"] = stream_inputs
        rounds: dict[str, list[dict[str, object]]] = {kind: [] for kind in BASELINE_KINDS}
        for round_no in range(args.repeat):
            start = round_no % len(BASELINE_KINDS)
            for kind in BASELINE_KINDS[start:] + BASELINE_KINDS[:start]:
                rounds[kind].append(one(kind, size, round_no))
        for kind in BASELINE_KINDS:
            run[kind] = repeated(rounds[kind])
        plain = run["plaintext"]
        run["sealed_record_over_plaintext"] = round(
            run["beam"]["records_per_second"] / plain["median_records_per_second"], 3)
        for kind, name in (("record_stream_beam", "record_stream_over_plaintext"),
                           ("sealed_batch_beam", "sealed_batch_over_plaintext")):
            sealed = run[kind]
            run[name] = round(sealed["median_records_per_second"]
                              / plain["median_records_per_second"], 3)
            run[f"{name}_best"] = round(sealed["best_records_per_second"]
                                        / plain["best_records_per_second"], 3)
            # Records per CPU-second of this process (the in-process broker's included), as
            # a fraction of plaintext's: what a shared machine's load moves least.
            run[f"{name}_cpu"] = round(plain["median_cpu_seconds"]
                                       / sealed["median_cpu_seconds"], 3)
            # Each round's own ratio: the runs of one round are minutes apart at most.
            run[f"{name}_by_round"] = [
                round(int(s["records_per_second"]) / int(p["records_per_second"]), 3)
                for s, p in zip(sealed["runs"], plain["runs"], strict=True)]


def print_baseline(numbers: dict[str, object]) -> None:
    repeat = numbers["runs"][0]["plaintext"]["repeats"]
    print(f"records/s of the Beam runs (FnApiRunner), median (best) of {repeat} interleaved "
          f"run(s) each; x plain = ratio of the medians (of the best)")
    print(f"{'batch':>6}{'plaintext':>18}{'v1 records':>12}{'x plain':>8}"
          f"{'record streams':>18}{'x plain':>14}{'sealed batches':>18}{'x plain':>14}")
    for run in numbers["runs"]:
        plain = run["plaintext"]
        stream, batch = run["record_stream_beam"], run["sealed_batch_beam"]
        print(f"{run['batch_size']:>6}"
              f"{plain['median_records_per_second']:>9,} ({plain['best_records_per_second']:>6,})"
              f"{run['beam']['records_per_second']:>12,}"
              f"{run['sealed_record_over_plaintext']:>8.2f}"
              f"{stream['median_records_per_second']:>9,} ({stream['best_records_per_second']:>6,})"
              f"{run['record_stream_over_plaintext']:>7.2f} ("
              f"{run['record_stream_over_plaintext_best']:.2f})"
              f"{batch['median_records_per_second']:>9,} ({batch['best_records_per_second']:>6,})"
              f"{run['sealed_batch_over_plaintext']:>7.2f} ("
              f"{run['sealed_batch_over_plaintext_best']:.2f})")
    print(f"{'batch':>6}{'plaintext CPU s':>18}{'record streams CPU s':>24}{'x plain':>8}"
          f"{'sealed batches CPU s':>24}{'x plain':>8}   (medians; CPU of the whole process)")
    for run in numbers["runs"]:
        print(f"{run['batch_size']:>6}{run['plaintext']['median_cpu_seconds']:>18.2f}"
              f"{run['record_stream_beam']['median_cpu_seconds']:>24.2f}"
              f"{run['record_stream_over_plaintext_cpu']:>8.2f}"
              f"{run['sealed_batch_beam']['median_cpu_seconds']:>24.2f}"
              f"{run['sealed_batch_over_plaintext_cpu']:>8.2f}")
    streams = numbers["runs"][0]["stream_inputs"]
    print(f"(v1 records: one run, over the plaintext median; record streams: "
          f"{streams['envelopes']:,} streams of up to "
          f"{streams['records_per_stream']:,} records, {streams['data_keys']} DEKs, "
          f"{streams['overhead_bytes_per_record']} B of envelope overhead per record; "
          f"sealed at {streams['seal_records_per_second']:,} records/s)")


# -- report --------------------------------------------------------------------------------
def print_report(numbers: dict[str, object]) -> None:
    inputs = numbers["inputs"]
    print(f"sealing ({inputs['records']:,} records, {inputs['files']} files, "
          f"{inputs['data_keys']} DEKs): {inputs['seal_seconds']:.2f} s = "
          f"{inputs['seal_records_per_second']:,} records/s "
          f"(generating the JSONL: {inputs['generate_seconds']:.2f} s)")
    print()
    mib = 1 << 20
    print(f"{'batch':>6}{'Beam s':>9}{'Beam rec/s':>12}{'alone s':>9}{'alone rec/s':>13}"
          f"{'Beam/alone':>12}{'in':>9}{'out':>9}{'dead':>6}{'Beam RSS':>10}{'alone RSS':>11}")
    for run in numbers["runs"]:
        beam, alone = run["beam"], run["standalone"]
        print(f"{run['batch_size']:>6}{beam['seconds']:>9.2f}{beam['records_per_second']:>12,}"
              f"{alone['seconds']:>9.2f}{alone['records_per_second']:>13,}"
              f"{run['beam_over_standalone']:>11.2f}x{beam['records_in']:>9,}"
              f"{beam['records_out']:>9,}{beam['dead_letters']:>6,}"
              f"{beam['peak_rss_bytes'] / mib:>6,.0f} MiB"
              f"{alone['peak_rss_bytes'] / mib:>7,.0f} MiB")
    print()
    print(f"{'batch':>6}{'attest':>8}{'release':>9}{'generate':>10}{'named':>7}{'other':>7}"
          f"{'total':>7}{'per 1k rec':>12}{'rel/DEK':>9}{'alone total':>13}{'ledger':>8}")
    for run in numbers["runs"]:
        beam, kinds = run["beam"], run["beam"]["broker_calls_by_kind"]
        print(f"{run['batch_size']:>6}{kinds['attest']:>8}{kinds['release']:>9}"
              f"{kinds['generate']:>10}{kinds['release_named']:>7}"
              f"{beam['broker_calls_not_ledgered']:>7}{beam['broker_calls']:>7}"
              f"{beam['broker_calls_per_1000_records']:>12.2f}"
              f"{beam['releases_per_data_key']:>9.2f}{run['standalone']['broker_calls']:>13}"
              f"{beam['ledger_entries']:>8}")
    env, ledger = numbers["environment"], numbers["ledger"]
    print(f"(broker calls of the Beam run by kind from the audit ledger; 'other' = the job's "
          f"broker_calls metric minus those = challenges and ledger-head fetches; ledger: "
          f"{ledger['entries']} entries, "
          f"chain {'verified' if ledger['verified'] else 'BROKEN'})")
    if "plaintext" in numbers["runs"][0]:
        print()
        print_baseline(numbers)
    print(f"{numbers['output_format']}, FnApiRunner, Arrow CPU threads "
          f"{env['arrow_cpu_threads']}, {env['cpu_count']} CPUs on this machine, one run per "
          f"batch size (but --baseline's); peak RSS per run by "
          f"{numbers['runs'][0]['beam']['peak_rss_method']}, "
          f"of the process (ru_maxrss) {numbers['process_peak_rss_bytes'] / mib:,.0f} MiB")


def environment() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "apache_beam": apache_beam.__version__,
        "pyarrow": pa.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "arrow_cpu_threads": pa.cpu_count(),
        "runner": "FnApiRunner",
    }


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS,
                        help="synthetic records to seal and process")
    parser.add_argument("--files", type=int, default=DEFAULT_FILES_PER_GROUP,
                        help="sealed files per (producer, region); there are 4 such groups")
    parser.add_argument("--records-per-key", type=int, default=DEFAULT_RECORDS_PER_KEY,
                        help="records sealed under one DEK (as the demo does)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES),
                        help="records per confidential batch; several values make a sweep")
    parser.add_argument("--output-format", choices=OUTPUT_FORMATS, default=SEALED_ARROW)
    parser.add_argument("--baseline", choices=("plaintext",),
                        help="also run the pipeline on record-stream (profile 2) and "
                             "sealed-batch input and the same graph on the plaintext JSONL, "
                             "and print the ratios")
    parser.add_argument("--records-per-stream", type=int, default=DEFAULT_RECORDS_PER_STREAM,
                        help="records per record stream (profile 2) for the --baseline runs "
                             f"(default {DEFAULT_RECORDS_PER_STREAM})")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help="rounds of the --baseline runs (plaintext, record streams, "
                             f"sealed batches interleaved; default {DEFAULT_REPEAT}); the "
                             "report gives the median and best of each")
    parser.add_argument("--workers", type=int, default=1,
                        help="N >= 2: also run on 1 and on N worker processes "
                             "(multi-processing) and report the speed-up")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.records <= synthetic.MAX_RECORDS:
        parser.error(f"--records must be between 1 and {synthetic.MAX_RECORDS:,}")
    if args.files < 1 or args.records_per_key < 1 or args.records_per_stream < 1:
        parser.error("--files, --records-per-key and --records-per-stream must be at least 1")
    if min(args.batch_size) < 1:
        parser.error("--batch-size must be at least 1")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    settings, sealed_paths, inputs = prepare_inputs(workdir, args.records, args.files,
                                                    args.records_per_key)
    broker = serve_in_thread(settings)
    try:
        # Every Beam run first, so that the envelopes held for the runs outside Beam do not
        # count in the pipeline's memory.
        beam_runs = [run_pipeline(settings, broker, workdir / "sealed",
                                  workdir / f"out-{index}-{batch_size}", batch_size,
                                  args.output_format, inputs)
                     for index, batch_size in enumerate(args.batch_size)]
        scaling = (run_worker_scaling(settings, broker, workdir, args.batch_size[0],
                                      args.output_format, inputs, args.workers)
                   if args.workers > 1 else None)
        envelopes, framing_dead = load_envelopes(sealed_paths)
        standalone_runs = [run_standalone(settings, broker, envelopes, len(framing_dead),
                                          batch_size, args.output_format, args.records)
                           for batch_size in args.batch_size]
        del envelopes
        runs = [{"batch_size": batch_size, "beam": beam, "standalone": alone,
                 "beam_over_standalone": round(beam["seconds"] / alone["seconds"], 3)}
                for batch_size, beam, alone in zip(args.batch_size, beam_runs, standalone_runs,
                                                   strict=True)]
        if args.baseline == "plaintext":
            add_baseline_runs(runs, settings, broker, workdir, args)
    finally:
        broker.stop()
    with AuditLedger(settings.ledger_path, read_only=True) as ledger:
        verification = ledger.verify()
    if not verification.ok:
        raise BenchmarkCheckError(verification.summary())
    return {
        "environment": environment(),
        "output_format": args.output_format,
        "inputs": inputs,
        "runs": runs,
        **({"worker_scaling": scaling} if scaling is not None else {}),
        "ledger": {"entries": verification.entries, "verified": verification.ok},
        "process_peak_rss_bytes": process_peak_rss_bytes(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    try:
        with tempfile.TemporaryDirectory(prefix="sealbeam-pipeline-bench-") as workdir:
            numbers = benchmark(args, Path(workdir))
    except (BenchmarkCheckError, PipelineError) as error:
        print(f"pipeline benchmark: error: {error}", file=sys.stderr)
        return 1
    print_report(numbers)
    if "worker_scaling" in numbers:
        print_worker_scaling(numbers["worker_scaling"])
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
