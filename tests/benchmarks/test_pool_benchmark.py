"""Smoke test of benchmarks/pool.py: a tiny run in-process and on 1 and 2 pool workers writes
every number it promises, with equal rows in every mode. Correctness only: no timing."""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks.support import assert_positive, run_benchmark


def test_tiny_run_compares_in_process_and_remote(repo_root: Path, tmp_path: Path) -> None:
    stdout, numbers = run_benchmark(
        repo_root, "pool.py", ["--records", "240", "--records-per-key", "60",
                               "--batch-size", "60"], tmp_path / "pool.json")
    runs = numbers["runs"]
    assert [(r["mode"], r["pool_workers"]) for r in runs] == [
        ("in-process", 0), ("remote x1", 1), ("remote x2", 2)]
    assert len({r["rows_out"] for r in runs}) == 1 and runs[0]["rows_out"] > 0
    assert runs[0]["beam_to_pool_bytes"] == runs[0]["pool_to_beam_bytes"] == 0
    for row in runs[1:]:
        assert_positive(row, ("records_per_second", "seconds", "beam_to_pool_bytes_per_record",
                              "pool_to_beam_bytes_per_record"))
    assert "beam->pool B/rec" in stdout and "remote x2" in stdout
