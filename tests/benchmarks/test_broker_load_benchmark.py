"""Smoke test of benchmarks/broker_load.py: a real broker (`broker serve --workers 2`), real
simulated evidence, three clients for a fraction of a second per operation. It checks that
every phase ran, that no call failed and that the figures are consistent; never how fast
anything was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.support import assert_positive, run_benchmark


@pytest.fixture(scope="module")
def load_results(repo_root: Path, tmp_path_factory: pytest.TempPathFactory):
    json_path = tmp_path_factory.mktemp("broker-load") / "load.json"
    return run_benchmark(repo_root, "broker_load.py",
                         ["--clients", "3", "--seconds", "0.3", "--processes", "2",
                          "--broker-workers", "2",
                          "--operations", "attest", "release", "generate", "challenge"],
                         json_path)


def test_every_operation_ran_at_every_client_count(load_results) -> None:
    stdout, numbers = load_results
    cases = {(row["operation"], row["clients"]) for row in numbers["phases"]}
    assert cases == {(op, 3) for op in ("attest", "release", "generate", "challenge")}
    assert "calls/s" in stdout and "broker CPU" in stdout and "--workers 2" in stdout
    assert numbers["environment"]["broker_workers"] == 2
    assert numbers["environment"]["client"] == "lean"
    for row in numbers["phases"]:
        assert row["failures"] == 0
        assert row["client_processes"] == 2  # three clients over two processes
        assert_positive(row, ("calls", "calls_per_second", "p50_ms", "p95_ms", "p99_ms",
                              "mean_ms", "broker_cpu_percent", "broker_cpu_ms_per_call",
                              "client_cpu_percent"))
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["calls_per_second"] == pytest.approx(row["calls"] / row["seconds"])


def test_help_and_bad_arguments(repo_root: Path) -> None:
    script = str(repo_root / "benchmarks" / "broker_load.py")
    shown = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                           check=False, cwd=repo_root)
    assert shown.returncode == 0 and "--clients" in shown.stdout
    refused = subprocess.run([sys.executable, script, "--clients", "0"], capture_output=True,
                             text=True, check=False, cwd=repo_root)
    assert refused.returncode == 2 and "at least 1" in refused.stderr
    refused = subprocess.run([sys.executable, script, "--broker-workers", "0"],
                             capture_output=True, text=True, check=False, cwd=repo_root)
    assert refused.returncode == 2 and "at least 1" in refused.stderr


def test_percentile_is_nearest_rank(repo_root: Path) -> None:
    from tests.benchmarks.support import load_benchmark

    benchmark = load_benchmark(repo_root, "broker_load.py")
    values = [float(v) for v in range(1, 101)]
    assert benchmark.percentile(values, 0.50) == 50.0
    assert benchmark.percentile(values, 0.99) == 99.0
    assert benchmark.percentile([7.0], 0.99) == 7.0
