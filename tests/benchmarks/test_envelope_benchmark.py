"""Smoke test of benchmarks/envelope.py: it runs at --quick sizes, checks its round trips,
and writes every number it promises. Correctness only: no timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.support import assert_positive, load_benchmark, run_benchmark

OPERATIONS = {"seal_batch", "BatchSealer->file", "iter_open_batch", "open_batch",
              "open_batch_into"}
STREAMING = {"BatchSealer->file", "iter_open_batch"}
ARROW_BUFFER = {"open_batch_into"}  # its output lives in Arrow's pool, not Python's heap
RAW = "raw AES-GCM"


@pytest.fixture(scope="module")
def quick_results(repo_root: Path, tmp_path_factory: pytest.TempPathFactory):
    json_path = tmp_path_factory.mktemp("envelope-bench") / "envelope.json"
    return run_benchmark(repo_root, "envelope.py", ["--quick", "--repeat", "2"], json_path)


def test_quick_run_writes_every_section(quick_results) -> None:
    stdout, numbers = quick_results
    assert set(numbers) == {"environment", "records", "batches", "memory", "arrow"}
    assert numbers["environment"]["quick"] is True
    assert numbers["environment"]["repeat"] == 2
    assert numbers["environment"]["arrow_cpu_threads"] == 1
    assert numbers["environment"]["clock"] == "wall"
    assert "MiB/s" in stdout and "rows/s" in stdout


def test_record_rows_are_positive(quick_results) -> None:
    _, numbers = quick_results
    assert [row["payload_bytes"] for row in numbers["records"]] == [100, 200, 1024, 16384]
    for row in numbers["records"]:
        assert row["envelope_bytes"] > row["payload_bytes"]
        assert_positive(row, tuple(
            f"{op}_{measure}" for op in ("seal", "open", "seal_records", "open_records",
                                         "open_records_parsed", "parse_envelope",
                                         "seal_record_stream", "open_record_stream",
                                         "read_record_stream")
            for measure in (
                "records_per_second", "best_records_per_second", "us_per_record",
                "min_us_per_record")))


def test_record_stream_rows_report_the_exact_overhead(quick_results) -> None:
    """Quick runs hold 200 records, all in one stream: 44 bytes a record plus the header's
    share (docs/FORMAT.md section 13.1), the header being the v1 record's (same fields)."""
    stdout, numbers = quick_results
    assert "record streams (record profile 2" in stdout
    for row in numbers["records"]:
        assert row["stream_records"] == 200
        header = row["envelope_bytes"] - row["payload_bytes"] - 4 - 16  # v1: length and tag
        assert row["stream_overhead_per_record"] == pytest.approx(44 + header / 200)


def test_batch_rows_cover_every_operation_size_and_segment(quick_results) -> None:
    _, numbers = quick_results
    cases = {(row["operation"], row["batch_bytes"], row["segment_size"])
             for row in numbers["batches"]}
    sizes = {row["batch_bytes"] for row in numbers["batches"]}
    segments = {row["segment_size"] for row in numbers["batches"]}
    assert len(sizes) >= 2 and len(segments) >= 2
    assert cases == {(op, size, seg) for op in OPERATIONS | {RAW}
                     for size in sizes for seg in segments}
    for row in numbers["batches"]:
        assert row["min_seconds"] <= row["median_seconds"]
        assert_positive(row, ("median_seconds", "min_seconds", "mib_per_second",
                              "best_mib_per_second", "fraction_of_raw"))
        if row["operation"] == RAW:
            assert row["fraction_of_raw"] == 1.0


def test_memory_rows_show_streaming_holds_segments_not_batches(quick_results) -> None:
    """tracemalloc counts allocations, not time: streaming stays near a few segments, the
    whole-buffer calls hold at least one batch more than their input."""
    _, numbers = quick_results
    assert {row["operation"] for row in numbers["memory"]} == OPERATIONS
    for row in numbers["memory"]:
        assert_positive(row, ("tracemalloc_peak_bytes", "tracemalloc_peak_in_segments",
                              "tracemalloc_peak_in_batches"))
        assert row["subprocess_peak_rss_delta_bytes"] >= 0  # page-granular; may read 0
        assert row["subprocess_peak_rss_method"] in {"VmHWM after clear_refs", "ru_maxrss"}
        if row["operation"] in STREAMING:
            assert row["tracemalloc_peak_in_segments"] < 4
        elif row["operation"] in ARROW_BUFFER:  # no Python-heap copy of the plaintext
            assert row["tracemalloc_peak_in_batches"] < 0.5
        else:
            assert row["tracemalloc_peak_in_batches"] >= 1


def test_arrow_round_trip_numbers(quick_results) -> None:
    _, numbers = quick_results
    arrow = numbers["arrow"]
    assert arrow["rows"] == 10_000
    assert arrow["envelope_bytes"] > arrow["ipc_bytes"]
    assert_positive(arrow, ("ipc_bytes", "serialize_seconds", "seal_seconds", "open_seconds",
                            "read_seconds", "end_to_end_seconds", "end_to_end_min_seconds",
                            "rows_per_second", "best_rows_per_second"))


def test_help_and_bad_repeat(repo_root: Path) -> None:
    script = str(repo_root / "benchmarks" / "envelope.py")
    shown = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                           check=False)
    assert shown.returncode == 0 and "--quick" in shown.stdout
    assert "--memory-probe" not in shown.stdout
    refused = subprocess.run([sys.executable, script, "--repeat", "0"], capture_output=True,
                             text=True, check=False)
    assert refused.returncode == 2 and "--repeat must be at least 1" in refused.stderr


def test_only_runs_the_chosen_sections(repo_root: Path, tmp_path: Path) -> None:
    stdout, numbers = run_benchmark(repo_root, "envelope.py",
                                    ["--quick", "--repeat", "1", "--only", "records",
                                     "--clock", "cpu"],
                                    tmp_path / "records.json")
    assert set(numbers) == {"environment", "records"}
    assert numbers["environment"]["clock"] == "cpu"
    assert "records/s" in stdout and "MiB/s" not in stdout


def test_round_trip_check_rejects_changed_bytes(repo_root: Path) -> None:
    benchmark = load_benchmark(repo_root, "envelope.py")
    benchmark.require_equal("same", b"abc", b"abc")
    with pytest.raises(benchmark.BenchmarkCheckError, match="round trip changed the bytes"):
        benchmark.require_equal("changed", b"abc", b"abd")
