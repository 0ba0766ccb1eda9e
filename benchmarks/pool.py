"""Benchmark: the confidential step in-process vs remote on 1 and 2 attested pool workers.

What it does, in a temporary directory: creates a state (``init_state``: keyring, named keys,
dev SEV-SNP chain, demo policy), seals ``--records`` synthetic partner records (a fresh DEK
per ``--records-per-key``), starts the broker in this process on 127.0.0.1, and runs the
batch pipeline on FnApiRunner with batches of exactly ``--batch-size``:

- ``in-process``: ``ConfidentialProcess`` in the Beam worker (this process);
- ``remote x1`` and ``remote x2``: ``ConfidentialProcessRemote`` against 1 and 2 pool workers
  (``python -m enclave_workers.pool``, i.e. ``sealbeam worker serve``, simulated SEV-SNP,
  each its own process on loopback, started before the timer).

For each: records/s and wall seconds of the run, and the bytes each side sent per record,
from the run's metrics (``pool_bytes_sent``: Beam worker -> pool, request bodies and
attestation requests; ``pool_bytes_received``: pool -> Beam worker, sealed responses and
attestation answers; HTTP headers not counted), next to the sealed input's bytes per record
(base64 lines on disk). Every run must reconcile and its outputs, opened as each region's
reader, must hold the same number of rows as the in-process run's; otherwise it exits 1 and
prints no table. ``--json PATH`` also writes the numbers.

What it does not: no cloud, no real TEE, no TLS; the machine's cores are shared by the broker,
the runner and the pool workers, so the remote figures measure overhead, not scale-out.

    .venv/bin/python benchmarks/pool.py [--records 20000] [--batch-size 500] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import apache_beam
import pyarrow as pa
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT
from keybroker.config import BrokerSettings, init_state
from keybroker.kms.local import LocalKeyring
from keybroker.service.server import serve_in_thread
from pipelines import synthetic
from pipelines.batch import build_batch_pipeline, summarize_run
from pipelines.options import SealbeamOptions
from pipelines.reading import open_outputs
from pipelines.sealing import seal_file
from transforms.metrics import NAMESPACE

REPO_ROOT = Path(__file__).resolve().parent.parent


class BenchmarkCheckError(Exception):
    """A run that did not reconcile or whose outputs differ from the in-process run."""


def prepare(workdir: Path, records: int, records_per_key: int
            ) -> tuple[BrokerSettings, int]:
    settings = init_state(workdir / "state", regions=synthetic.REGIONS,
                          tenants=synthetic.PRODUCERS, allowed_measurements=(DEV_MEASUREMENT,))
    keyring = LocalKeyring.open(settings.keyring_path)
    sealed_bytes = 0
    for partner_file in synthetic.write_partner_files(workdir / "partner", records,
                                                      files_per_group=1):
        target = workdir / "sealed" / f"{partner_file.path.stem}.sealed"
        seal_file(partner_file.path, target, keyring=keyring, region=partner_file.region,
                  producer_id=partner_file.producer_id, records_per_key=records_per_key,
                  profile=1)                                          # v1 records
        sealed_bytes += target.stat().st_size
    return settings, sealed_bytes


def start_pool_worker(broker_url: str, dev_tee_dir: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "enclave_workers.pool", "--broker_url", broker_url,
         "--dev_tee_dir", str(dev_tee_dir), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise BenchmarkCheckError("a pool worker did not start")
    return process, json.loads(line)["url"]


def counter(result: object, name: str) -> int:
    counters = result.metrics().query(   # type: ignore[attr-defined]
        MetricsFilter().with_namespace(NAMESPACE).with_name(name))["counters"]
    return sum(int(c.committed or 0) for c in counters)


def rows_in(out_dir: Path, keyring: LocalKeyring) -> int:
    return sum(open_outputs([out_dir / r], keyring=keyring, region=r).num_rows
               for r in synthetic.REGIONS if (out_dir / r).is_dir())


def run(workdir: Path, settings: BrokerSettings, broker_url: str, name: str,
        batch_size: int, pool_urls: Sequence[str]) -> dict[str, object]:
    out_dir = workdir / f"out-{name}"
    flags = {"input": str(workdir / "sealed" / "*.sealed"), "output_root": str(out_dir),
             "broker_url": broker_url, "tee": "simulated-sev-snp",
             "dev_tee_dir": str(settings.dev_chain_dir), "regions": ",".join(synthetic.REGIONS),
             "min_batch_size": str(batch_size), "max_batch_size": str(batch_size)}
    if pool_urls:
        flags |= {"pool_endpoints": ",".join(pool_urls),
                  "pool_policy": str(settings.policy_path)}
    options = PipelineOptions(flags=[f"--{k}={v}" for k, v in flags.items()])
    started = time.perf_counter()
    pipeline = apache_beam.Pipeline(runner=FnApiRunner(), options=options)
    built = build_batch_pipeline(pipeline, options)
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - started
    summary = summarize_run(result, options.view_as(SealbeamOptions), built, started)
    if not summary.reconciled:
        raise BenchmarkCheckError(f"{name}: the run does not reconcile")
    return {"mode": name, "pool_workers": len(pool_urls), "records": summary.records_in,
            "seconds": round(seconds, 3), "records_per_second": round(summary.records_in / seconds),
            "rows_out": rows_in(out_dir, LocalKeyring.open(settings.keyring_path)),
            "beam_to_pool_bytes": counter(result, "pool_bytes_sent"),
            "pool_to_beam_bytes": counter(result, "pool_bytes_received"),
            "pool_failovers": counter(result, "pool_failovers")}


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    settings, sealed_bytes = prepare(workdir, args.records, args.records_per_key)
    broker = serve_in_thread(settings)
    pools: list[subprocess.Popen[str]] = []
    try:
        runs = [run(workdir, settings, broker.url, "in-process", args.batch_size, [])]
        urls: list[str] = []
        for count in (1, 2):
            while len(urls) < count:
                process, url = start_pool_worker(broker.url, Path(str(settings.dev_chain_dir)))
                pools.append(process)
                urls.append(url)
            runs.append(run(workdir, settings, broker.url, f"remote x{count}", args.batch_size,
                            list(urls)))
    finally:
        for process in pools:
            process.kill()
            process.wait(timeout=10)
        broker.stop()
    reference = runs[0]["rows_out"]
    for row in runs:
        if row["rows_out"] != reference or row["records"] != args.records:
            raise BenchmarkCheckError(f"{row['mode']}: {row['rows_out']} rows, in-process "
                                      f"{reference}")
        row["beam_to_pool_bytes_per_record"] = round(int(row["beam_to_pool_bytes"])
                                                     / args.records, 1)
        row["pool_to_beam_bytes_per_record"] = round(int(row["pool_to_beam_bytes"])
                                                     / args.records, 1)
    return {"records": args.records, "batch_size": args.batch_size,
            "records_per_key": args.records_per_key,
            "sealed_input_bytes_per_record": round(sealed_bytes / args.records, 1),
            "runs": runs, "environment": {
                "python": platform.python_version(), "apache_beam": apache_beam.__version__,
                "pyarrow": pa.__version__, "cpu_count": os.cpu_count(),
                "runner": "FnApiRunner"}}


def print_report(numbers: dict[str, object]) -> None:
    print(f"records={numbers['records']} batch_size={numbers['batch_size']} sealed input "
          f"{numbers['sealed_input_bytes_per_record']} B/record (base64 lines)")
    print(f"{'mode':<12} {'workers':>7} {'records/s':>10} {'seconds':>8} "
          f"{'beam->pool B/rec':>17} {'pool->beam B/rec':>17}")
    for row in numbers["runs"]:   # type: ignore[attr-defined]
        print(f"{row['mode']:<12} {row['pool_workers']:>7} {row['records_per_second']:>10} "
              f"{row['seconds']:>8} {row['beam_to_pool_bytes_per_record']:>17} "
              f"{row['pool_to_beam_bytes_per_record']:>17}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--records-per-key", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    pa.set_cpu_count(1)
    with tempfile.TemporaryDirectory(prefix="sealbeam-pool-bench-") as workdir:
        try:
            numbers = benchmark(args, Path(workdir))
        except BenchmarkCheckError as exc:
            print(f"benchmark check failed: {exc}", file=sys.stderr)
            return 1
    print_report(numbers)
    if args.json is not None:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
