"""Benchmark: CPU per v1 record of the header read outside the TEE and of the confidential step.

What it does, in a temporary directory: creates the embedded default state, seals
``--records`` synthetic partner records as v1 records (record profile 1, a fresh DEK per
``--records-per-key``), starts the key broker on loopback in this process, and times on this
thread's CPU clock (``RUSAGE_THREAD``: the broker's threads are not counted):

- ``read_sealed``: what ``ParseSealed`` does per envelope outside the TEE (for v1 records,
  the routing peek, the digest and the ``SealedEnvelope``);
- ``BatchProcessor.process``: the confidential step alone, in chunks of ``--batch-size``,
  with one ``KeySession`` whose keys were released in an untimed warm-up run (so the figure
  is parsing, opening, featurizing and resealing, not the broker round trips).

Each is run ``--repeat`` times; the minimum and median µs per record are printed. Every
timed run must reconcile (outputs' source counts + dead letters = records) or the script
exits 1. CPU time, not wall time, because the machines these run on are shared.

What it does not: no Beam, no file I/O in the timed part, no record streams or batches
(``benchmarks/pipeline.py`` runs those end to end).

    .venv/bin/python benchmarks/confidential_cpu.py [--records 20000] [--repeat 5]
        [--batch-size 2000] [--records-per-key 500] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from enclave_workers.batch_processor import BatchProcessor, default_feature_spec
from enclave_workers.features import compile_spec
from transforms.parse import read_sealed
from transforms.session import make_key_session
from transforms.tee import SIMULATED_SEV_SNP, SessionLimits, TeeSettings

try:  # as a script, this file's directory is on sys.path; as a module, the package is
    from pipeline import BenchmarkCheckError, load_envelopes, prepare_inputs, serve_in_thread
except ImportError:  # pragma: no cover - depends on how the benchmark was loaded
    from benchmarks.pipeline import (
        BenchmarkCheckError,
        load_envelopes,
        prepare_inputs,
        serve_in_thread,
    )


def thread_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def cpu_runs(repeat: int, run: Callable[[], None], records: int) -> dict[str, float]:
    """µs of this thread's CPU per record: min and median of ``repeat`` runs."""
    per_record = []
    for _ in range(repeat):
        started = thread_cpu_seconds()
        run()
        per_record.append((thread_cpu_seconds() - started) / records * 1e6)
    return {"min_us_per_record": round(min(per_record), 2),
            "median_us_per_record": round(statistics.median(per_record), 2)}


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    settings, paths, inputs = prepare_inputs(workdir, args.records, 2, args.records_per_key)
    broker = serve_in_thread(settings)
    try:
        envelopes, framing_dead = load_envelopes(paths)
        if framing_dead or len(envelopes) != args.records:
            raise BenchmarkCheckError(f"read {len(envelopes)} envelopes, "
                                      f"{len(framing_dead)} framing dead letters")

        def read_all() -> None:
            for envelope in envelopes:
                read_sealed(envelope)

        read_all()
        outside = cpu_runs(args.repeat, read_all, args.records)
        compiled = compile_spec(default_feature_spec())
        session = make_key_session(
            broker.url, TeeSettings(SIMULATED_SEV_SNP, str(settings.dev_chain_dir)),
            SessionLimits(), spec_fingerprint=compiled.fingerprint)
        processor = BatchProcessor(session, compiled)
        try:
            def process_all() -> None:
                accounted = 0
                for start in range(0, len(envelopes), args.batch_size):
                    result = processor.process(envelopes[start:start + args.batch_size])
                    accounted += (sum(o.source_count for o in result.outputs)
                                  + sum(d.records for d in result.dead_letters))
                if accounted != args.records:
                    raise BenchmarkCheckError(f"{accounted} records accounted, "
                                              f"{args.records} sealed")

            process_all()   # warm-up: attests and releases every DEK once
            inside = cpu_runs(args.repeat, process_all, args.records)
        finally:
            processor.close()
            session.close()
    finally:
        broker.stop()
    return {"inputs": inputs, "batch_size": args.batch_size, "repeat": args.repeat,
            "read_sealed": outside, "batch_processor": inside}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--records-per-key", type=int, default=500)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if min(args.records, args.repeat, args.batch_size, args.records_per_key) < 1:
        parser.error("every count must be at least 1")
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    try:
        with tempfile.TemporaryDirectory(prefix="sealbeam-confidential-cpu-") as workdir:
            numbers = benchmark(args, Path(workdir))
    except BenchmarkCheckError as error:
        print(f"confidential_cpu benchmark: error: {error}", file=sys.stderr)
        return 1
    print(f"v1 records, {args.records:,} ({args.records_per_key} per DEK), batches of "
          f"{args.batch_size}; this thread's CPU, µs per record, min / median of {args.repeat}")
    for name, title in (("read_sealed", "read_sealed (outside the TEE)"),
                        ("batch_processor", "BatchProcessor.process (keys released)")):
        figures = numbers[name]
        print(f"  {title:42} {figures['min_us_per_record']:8.2f} / "
              f"{figures['median_us_per_record']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
