"""Smoke test of benchmarks/pipeline.py: a tiny end-to-end run (state, sealing, broker on
loopback, FnApiRunner, the confidential step alone) writes every number it promises, and its
checks refuse counts that do not reconcile. Correctness only: no timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.batch import RunSummary
from tests.benchmarks.support import assert_positive, load_benchmark, run_benchmark

RECORDS = 120
BATCH_SIZES = [40, 120]
KINDS = {"attest", "release", "generate", "release_named"}


@pytest.fixture(scope="module")
def tiny_results(repo_root: Path, tmp_path_factory: pytest.TempPathFactory):
    json_path = tmp_path_factory.mktemp("pipeline-bench") / "pipeline.json"
    return run_benchmark(
        repo_root, "pipeline.py",
        ["--records", str(RECORDS), "--files", "1", "--records-per-key", "25",
         "--batch-size", *map(str, BATCH_SIZES)], json_path)


def test_tiny_run_writes_every_section(tiny_results) -> None:
    stdout, numbers = tiny_results
    assert set(numbers) == {"environment", "output_format", "inputs", "runs", "ledger",
                            "process_peak_rss_bytes"}
    assert numbers["output_format"] == "sealed-arrow"
    assert numbers["environment"]["runner"] == "FnApiRunner"
    assert numbers["environment"]["arrow_cpu_threads"] == 1
    assert numbers["ledger"]["verified"] is True
    assert numbers["process_peak_rss_bytes"] > 0
    assert "Beam rec/s" in stdout and "per 1k rec" in stdout


def test_sealing_figures(tiny_results) -> None:
    _, numbers = tiny_results
    inputs = numbers["inputs"]
    assert inputs["records"] == RECORDS and inputs["records_per_key"] == 25
    assert inputs["files"] >= 1
    # Each sealed file starts a fresh DEK, so there are at least records / 25 keys.
    assert inputs["data_keys"] >= RECORDS // 25
    assert_positive(inputs, ("sealed_bytes", "generate_seconds", "seal_seconds",
                             "seal_records_per_second"))


def test_each_batch_size_reconciles_and_counts_broker_calls(tiny_results) -> None:
    _, numbers = tiny_results
    assert [run["batch_size"] for run in numbers["runs"]] == BATCH_SIZES
    for run in numbers["runs"]:
        beam, alone = run["beam"], run["standalone"]
        assert beam["records_in"] == RECORDS and beam["reconciled"] is True
        assert beam["records_out"] + beam["dead_letters"] == RECORDS
        assert beam["rows_out"] + beam["rows_suppressed"] == beam["records_out"]
        assert alone["records_out"] + alone["dead_letters"] == RECORDS
        assert_positive(beam, ("seconds", "records_per_second", "broker_calls",
                               "broker_calls_per_1000_records", "releases_per_data_key",
                               "ledger_entries", "peak_rss_bytes", "output_files"))
        assert_positive(alone, ("seconds", "records_per_second", "broker_calls",
                                "broker_calls_per_1000_records", "peak_rss_bytes", "outputs"))
        for measured in (beam, alone):
            assert measured["peak_rss_method"] in {"VmHWM after clear_refs",
                                                   "ru_maxrss (process peak so far)"}
            assert measured["rss_at_start_bytes"] >= 0   # 0 where /proc is absent
            if measured["peak_rss_method"] == "VmHWM after clear_refs":
                assert measured["peak_rss_bytes"] >= measured["rss_at_start_bytes"]
        assert_positive(run, ("beam_over_standalone",))
        assert set(beam["broker_calls_by_kind"]) == KINDS
        assert set(alone["broker_calls_by_kind"]) == KINDS | {"challenge"}
        assert beam["broker_calls_by_kind"]["attest"] >= 1
        # Every sealed DEK must be released at least once to be opened.
        assert beam["broker_calls_by_kind"]["release"] >= numbers["inputs"]["data_keys"]
        assert alone["broker_calls_by_kind"]["release"] >= numbers["inputs"]["data_keys"]
        assert beam["broker_calls"] == (sum(beam["broker_calls_by_kind"].values())
                                        + beam["broker_calls_not_ledgered"])


def test_help_and_bad_arguments(repo_root: Path) -> None:
    script = str(repo_root / "benchmarks" / "pipeline.py")
    shown = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                           check=False)
    assert shown.returncode == 0
    assert "--batch-size" in shown.stdout and "--output-format" in shown.stdout
    for arguments, message in ((["--records", "0"], "--records must be between"),
                               (["--batch-size", "100", "0"], "--batch-size must be at least"),
                               (["--files", "0"], "must be at least 1")):
        refused = subprocess.run([sys.executable, script, *arguments], capture_output=True,
                                 text=True, check=False)
        assert refused.returncode == 2 and message in refused.stderr, arguments


def _summary(**changes: int) -> RunSummary:
    counts = {"records_in": 10, "records_out": 9, "dead_letters": 1, "rows_out": 8,
              "output_files": 2, "broker_calls": 5, "rows_suppressed": 1}
    counts.update(changes)
    return RunSummary(**counts)


def test_run_check_accepts_reconciled_counts(repo_root: Path) -> None:
    benchmark = load_benchmark(repo_root, "pipeline.py")
    benchmark.check_run_counts(_summary(), records=10, rows_opened=8)


@pytest.mark.parametrize(("changes", "records", "rows_opened", "message"), [
    ({"records_out": 8}, 10, 8, "records_in=10 != records_out=8 + dead_letters=1"),
    ({}, 11, 8, "records_in=10, 11 were sealed"),
    ({}, 10, 7, "the outputs hold 7 rows; the run reported 8"),
    ({"rows_suppressed": 0}, 10, 8, "rows_suppressed=0 != records_out=9"),
])
def test_run_check_refuses_counts_that_do_not_add_up(repo_root: Path, changes, records,
                                                     rows_opened, message) -> None:
    benchmark = load_benchmark(repo_root, "pipeline.py")
    with pytest.raises(benchmark.BenchmarkCheckError, match=message.replace("+", r"\+")):
        benchmark.check_run_counts(_summary(**changes), records=records,
                                   rows_opened=rows_opened)
