"""Smoke test of benchmarks/key_transport.py: it runs with a tiny count, checks each
operation's result, and writes every number it promises. No timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.support import assert_positive, load_benchmark, run_benchmark

OPERATIONS = ["TeeKeyPair.generate", "report_data_binding", "release_info", "seal_to_tee",
              "TeeKeyPair.open", "open_record 1024 B"]


def test_tiny_run_writes_every_operation(repo_root: Path, tmp_path: Path) -> None:
    stdout, numbers = run_benchmark(repo_root, "key_transport.py",
                                    ["--count", "5", "--repeat", "2"], tmp_path / "kt.json")
    assert set(numbers) == {"environment", "operations", "comparison"}
    assert numbers["environment"]["suite"] == "MLKEM768-X25519"
    assert (numbers["environment"]["count"], numbers["environment"]["repeat"]) == (5, 2)
    assert [row["operation"] for row in numbers["operations"]] == OPERATIONS
    for row in numbers["operations"]:
        assert row["count"] == 5
        assert row["min_seconds"] <= row["median_seconds"]
        assert_positive(row, ("median_seconds", "min_seconds", "per_second", "best_per_second",
                              "us_per_operation", "min_us_per_operation"))
    assert_positive(numbers["comparison"], ("release_transport_us", "record_open_us",
                                            "record_opens_per_release", "worker_start_us"))
    assert "seal_to_tee" in stdout and "opens of a 1024 B record" in stdout


def test_bad_count_is_refused(repo_root: Path) -> None:
    refused = subprocess.run(
        [sys.executable, str(repo_root / "benchmarks" / "key_transport.py"), "--count", "0"],
        capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "must be at least 1" in refused.stderr


class _PairThatOpensToSomethingElse:
    """A key pair whose open returns other bytes: the benchmark must refuse to time it."""

    def __init__(self) -> None:
        from envelope import TeeKeyPair

        self._real = TeeKeyPair.generate()

    def public_bytes(self) -> bytes:
        return self._real.public_bytes()

    def open(self, sealed: bytes, info: bytes) -> bytes:
        return bytes(32)


def test_transport_check_rejects_a_wrong_opening(repo_root: Path) -> None:
    benchmark = load_benchmark(repo_root, "key_transport.py")
    from envelope import TeeKeyPair, release_info

    info = release_info("dek-release", "k" * 64)
    sealed = benchmark.check_transport(TeeKeyPair.generate(), b"\x07" * 32, info)
    assert len(sealed) == 1120 + 32 + 16
    with pytest.raises(benchmark.BenchmarkCheckError, match="did not return the sealed secret"):
        benchmark.check_transport(_PairThatOpensToSomethingElse(), b"\x07" * 32, info)
