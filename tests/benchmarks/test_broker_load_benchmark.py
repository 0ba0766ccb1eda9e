"""Smoke test of benchmarks/broker_load.py: a real broker (`broker serve --workers 2`), real
simulated evidence, three clients for a fraction of a second per operation, closed loop and
open loop (``--rate``). It checks that every phase ran, that no call failed and that the
figures are consistent; never how fast anything was. The open loop's schedule is checked
with a fake clock."""

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


@pytest.fixture(scope="module")
def open_results(repo_root: Path, tmp_path_factory: pytest.TempPathFactory):
    json_path = tmp_path_factory.mktemp("broker-load-open") / "load.json"
    return run_benchmark(repo_root, "broker_load.py",
                         ["--clients", "3", "--seconds", "0.5", "--processes", "2",
                          "--operations", "release", "challenge", "--rate", "30", "60"],
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
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["calls_per_second"] == pytest.approx(row["calls"] / row["seconds"])
        assert row["mode"] == "closed" and "dropped" not in row
    assert numbers["environment"]["rates"] == []


def test_open_loop_offers_the_rate_and_accounts_for_every_call(open_results) -> None:
    stdout, numbers = open_results
    cases = {(row["operation"], row["offered_per_second"]) for row in numbers["phases"]}
    assert cases == {(op, rate) for op in ("release", "challenge") for rate in (30.0, 60.0)}
    assert "offered/s" in stdout and "dropped" in stdout and "scheduled time" in stdout
    assert numbers["environment"]["rates"] == [30.0, 60.0]
    for row in numbers["phases"]:
        assert row["mode"] == "open" and row["clients"] == 3
        # Each client calls every 3/rate s for 0.5 s: rate / 2 calls in all, none dropped
        # at these rates, every one answered.
        assert row["scheduled"] == round(row["offered_per_second"] * 0.5)
        assert row["calls"] + row["failures"] + row["dropped"] == row["scheduled"]
        assert row["failures"] == 0 and row["dropped"] == 0
        assert 0 <= row["late"] <= row["scheduled"]
        assert_positive(row, ("calls", "calls_per_second", "p50_ms", "p99_ms", "max_ms",
                              "broker_cpu_percent", "broker_cpu_ms_per_call"))
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["calls_per_second"] == pytest.approx(row["calls"] / row["seconds"])


class FakeClock:
    """Time that moves only when the open loop sleeps or a call takes its duration."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


def test_open_loop_counts_the_wait_behind_a_slow_call(repo_root: Path) -> None:
    from tests.benchmarks.support import load_benchmark

    benchmark = load_benchmark(repo_root, "broker_load.py")
    clock = FakeClock()
    durations = iter([0.25] + [0.01] * 20)

    def call() -> float:
        clock.now += next(durations)
        return 0.0

    outcome = benchmark.open_loop(call, 0.0, 1.0, 0.1, clock=clock, sleep=clock.sleep)
    # Scheduled at 0.0, 0.1, ..., 0.9. The first takes 0.25 s: the calls due at 0.1 and
    # 0.2 leave late (at 0.25, 0.26) and their latency counts from 0.1 and 0.2.
    assert outcome.scheduled == 10 and outcome.dropped == 0 and outcome.failures == 0
    assert outcome.late == 2
    assert outcome.latencies[:4] == pytest.approx([0.25, 0.16, 0.07, 0.01])
    assert outcome.latencies[4:] == pytest.approx([0.01] * 6)


def test_open_loop_drops_what_it_cannot_send_in_time(repo_root: Path) -> None:
    from tests.benchmarks.support import load_benchmark

    benchmark = load_benchmark(repo_root, "broker_load.py")
    clock = FakeClock()

    def stuck() -> float:
        clock.now += 5.0  # one call outlasts the phase and its drain
        return 5.0

    outcome = benchmark.open_loop(stuck, 0.0, 1.0, 0.1, clock=clock, sleep=clock.sleep,
                                  drain=1.0)
    assert outcome.scheduled == 10 and len(outcome.latencies) == 1
    assert outcome.latencies == [pytest.approx(5.0)] and outcome.dropped == 9


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
    refused = subprocess.run([sys.executable, script, "--rate", "0"],
                             capture_output=True, text=True, check=False, cwd=repo_root)
    assert refused.returncode == 2 and "--rate must be positive" in refused.stderr
    refused = subprocess.run([sys.executable, script, "--rate", "100", "--operations",
                              "attest"], capture_output=True, text=True, check=False,
                             cwd=repo_root)
    assert refused.returncode == 2 and "closed loop only" in refused.stderr


def test_percentile_is_nearest_rank(repo_root: Path) -> None:
    from tests.benchmarks.support import load_benchmark

    benchmark = load_benchmark(repo_root, "broker_load.py")
    values = [float(v) for v in range(1, 101)]
    assert benchmark.percentile(values, 0.50) == 50.0
    assert benchmark.percentile(values, 0.99) == 99.0
    assert benchmark.percentile([7.0], 0.99) == 7.0
