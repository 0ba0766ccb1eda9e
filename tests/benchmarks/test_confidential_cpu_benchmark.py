"""``benchmarks/confidential_cpu.py`` runs, reconciles and writes its figures (no timing)."""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks.support import assert_positive, run_benchmark


def test_confidential_cpu_benchmark_writes_both_figures(repo_root: Path, tmp_path: Path) -> None:
    stdout, numbers = run_benchmark(
        repo_root, "confidential_cpu.py",
        ["--records", "40", "--repeat", "1", "--batch-size", "20", "--records-per-key", "10"],
        tmp_path / "cpu.json")
    assert "BatchProcessor.process" in stdout and "read_sealed" in stdout
    assert numbers["inputs"]["records"] == 40 and numbers["inputs"]["data_keys"] >= 4
    assert_positive(numbers["inputs"], ("records", "data_keys"))
    for name in ("read_sealed", "batch_processor"):
        figures = numbers[name]
        # 40 records can take less than the CPU clock's tick: zero is possible, not negative.
        assert 0 <= figures["min_us_per_record"] <= figures["median_us_per_record"]
