"""Smoke test of benchmarks/streaming_pubsub.py on the real Pub/Sub emulator: a tiny run
publishes, streams until idle, reconciles and writes every number it promises; without
``PUBSUB_EMULATOR_HOST`` it refuses to start. Correctness only: no timing is asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.support import assert_positive, run_benchmark
from tests.support.pubsub_emulator import (  # noqa: F401  (a fixture)
    PubsubEmulator,
    client_env,
    pubsub_emulator,
)

pytest.importorskip("google.cloud.pubsub_v1", reason="the pubsub extra")


def test_a_tiny_run_reconciles_and_reports_its_batches(
        repo_root: Path, pubsub_emulator: PubsubEmulator,  # noqa: F811
        tmp_path: Path) -> None:
    with client_env(pubsub_emulator):
        stdout, numbers = run_benchmark(
            repo_root, "streaming_pubsub.py",
            ["--records", "40", "--until-idle-s", "2", "--max-batch-duration-s", "1"],
            tmp_path / "bench.json")
    assert numbers["records"] == 40 and numbers["reconciled"] is True
    assert_positive(numbers, ("publish_seconds", "run_seconds", "records_per_second",
                              "output_files", "rows_per_output_file",
                              "broker_calls_per_1000_records"))
    assert "records_per_second" in stdout


def test_it_needs_an_emulator(repo_root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PUBSUB_EMULATOR_HOST"}
    completed = subprocess.run(
        [sys.executable, str(repo_root / "benchmarks" / "streaming_pubsub.py")],
        capture_output=True, text=True, check=False, timeout=120, env=env, cwd=repo_root)
    assert completed.returncode == 2 and "PUBSUB_EMULATOR_HOST" in completed.stderr
