"""Benchmark: the per-worker and per-key costs of key transport to a TEE, next to the
per-record cost of opening an envelope, to show why a worker asks for each key once.

What it does, on one thread: times ``TeeKeyPair.generate`` (once per worker),
``report_data_binding`` (once per attestation), ``release_info``, ``seal_to_tee`` (the
broker, once per released key) and ``TeeKeyPair.open`` (the worker, once per released key)
for a 32-byte DEK under the ML-KEM-768 + X25519 HPKE suite, and, as the unit of comparison,
``open_record`` of a 1 KiB record. Each operation runs ``--count`` times per timed run;
the median and minimum of ``--repeat`` runs (after one warm-up run) are reported. Every
result is checked (the opened key equals the sealed one, the binding is 64 bytes and
changes with the key) before anything is timed. ``--json PATH`` also writes the numbers.

What it does not: no broker, no network, no attestation verification, no KMS unwrap; a
real release also pays those, so the transport figures here are a lower bound on what
caching a released key per worker saves.

    .venv/bin/python benchmarks/key_transport.py [--count 1000] [--repeat 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cryptography

# The repository root goes first so that ``import envelope`` finds the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envelope import (
    TEE_KEY_ALGORITHM,
    DataKey,
    KeyReference,
    TeeKeyPair,
    WrappedKey,
    open_record,
    release_info,
    report_data_binding,
    seal_record,
    seal_to_tee,
)

RECORD_PAYLOAD_BYTES = 1024
WRAPPED_KEY = WrappedKey(KeyReference("local://keyring/eu/kek-1", "1"), os.urandom(60))


class BenchmarkCheckError(Exception):
    """An operation gave a wrong result: the numbers would be meaningless."""


def check_transport(pair: TeeKeyPair, secret: bytes, info: bytes) -> bytes:
    """Seal and open once, and fail unless the same secret comes back; returns the sealed key."""
    sealed = seal_to_tee(pair.public_bytes(), secret, info)
    if not hmac.compare_digest(pair.open(sealed, info), secret):
        raise BenchmarkCheckError("TeeKeyPair.open did not return the sealed secret")
    return sealed


def check_binding(nonce: bytes, pair: TeeKeyPair) -> None:
    binding = report_data_binding(nonce, pair.public_bytes())
    other = report_data_binding(nonce, TeeKeyPair.generate().public_bytes())
    if len(binding) != 64 or hmac.compare_digest(binding, other):
        raise BenchmarkCheckError("report_data_binding is not a 64-byte key-dependent digest")


def operations(count: int) -> list[tuple[str, str, Callable[[], object]]]:
    """(name, how often a real system pays it, the run of ``count`` calls), checked first."""
    pair = TeeKeyPair.generate()
    public_key = pair.public_bytes()
    dek = DataKey.generate()
    info = release_info("dek-release", WRAPPED_KEY.key_id)
    nonce = os.urandom(32)
    sealed = check_transport(pair, dek.secret_bytes(), info)
    check_binding(nonce, pair)
    payload = os.urandom(RECORD_PAYLOAD_BYTES)
    record = seal_record(payload, data_key=dek, wrapped_key=WRAPPED_KEY, region="eu",
                         producer_id="acme",
                         schema_fingerprint=hashlib.sha256(b"schema").digest(),
                         context={"dataset": "payments"})
    if not hmac.compare_digest(open_record(record, dek), payload):
        raise BenchmarkCheckError("open_record did not return the sealed payload")

    def repeat_call(call: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(count):
                call()
        return run

    return [
        ("TeeKeyPair.generate", "per worker", repeat_call(TeeKeyPair.generate)),
        ("report_data_binding", "per attestation",
         repeat_call(lambda: report_data_binding(nonce, public_key))),
        ("release_info", "per key",
         repeat_call(lambda: release_info("dek-release", WRAPPED_KEY.key_id))),
        ("seal_to_tee", "per key (broker)",
         repeat_call(lambda: seal_to_tee(public_key, dek.secret_bytes(), info))),
        ("TeeKeyPair.open", "per key (worker)", repeat_call(lambda: pair.open(sealed, info))),
        (f"open_record {RECORD_PAYLOAD_BYTES} B", "per record",
         repeat_call(lambda: open_record(record, dek))),
    ]


def timed_runs(repeat: int, run: Callable[[], object]) -> tuple[float, float]:
    """Median and minimum seconds of ``repeat`` runs, after one untimed warm-up run."""
    run()
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), min(seconds)


def measure(count: int, repeat: int) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    for name, paid, run in operations(count):
        median_seconds, min_seconds = timed_runs(repeat, run)
        results.append({
            "operation": name,
            "paid": paid,
            "count": count,
            "median_seconds": median_seconds,
            "min_seconds": min_seconds,
            "per_second": count / median_seconds,
            "best_per_second": count / min_seconds,
            "us_per_operation": median_seconds / count * 1e6,
            "min_us_per_operation": min_seconds / count * 1e6,
        })
    return results


def comparison(results: list[dict[str, object]]) -> dict[str, float]:
    """One key release's transport crypto, expressed in record opens."""
    us = {row["operation"]: float(row["us_per_operation"]) for row in results}
    release_us = us["seal_to_tee"] + us["TeeKeyPair.open"]
    record_us = us[f"open_record {RECORD_PAYLOAD_BYTES} B"]
    return {
        "release_transport_us": release_us,
        "record_open_us": record_us,
        "record_opens_per_release": release_us / record_us,
        "worker_start_us": us["TeeKeyPair.generate"] + us["report_data_binding"],
    }


def print_report(numbers: dict[str, object]) -> None:
    print(f"{'operation':26}{'paid':20}{'ops/s':>12}{'µs/op':>11}{'best µs/op':>12}")
    for row in numbers["operations"]:
        print(f"{row['operation']:26}{row['paid']:20}{row['per_second']:>12,.0f}"
              f"{row['us_per_operation']:>11.1f}{row['min_us_per_operation']:>12.1f}")
    summary = numbers["comparison"]
    environment = numbers["environment"]
    print(f"one release's HPKE transport (seal_to_tee + open) = "
          f"{summary['release_transport_us']:.0f} µs = "
          f"{summary['record_opens_per_release']:.1f} opens of a "
          f"{RECORD_PAYLOAD_BYTES} B record; {environment['suite']}, one thread, "
          f"{environment['cpu_count']} CPUs on this machine, median and min of "
          f"{environment['repeat']} runs of {environment['count']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="calls per timed run")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed runs per operation after one warm-up; median and min")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeat < 1:
        parser.error("--count and --repeat must be at least 1")
    try:
        results = measure(args.count, args.repeat)
    except BenchmarkCheckError as error:
        print(f"key transport benchmark: error: {error}", file=sys.stderr)
        return 1
    numbers = {
        "environment": {
            "suite": TEE_KEY_ALGORITHM,
            "python": platform.python_version(),
            "cryptography": cryptography.__version__,
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": 1,
            "count": args.count,
            "repeat": args.repeat,
        },
        "operations": results,
        "comparison": comparison(results),
    }
    print_report(numbers)
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
