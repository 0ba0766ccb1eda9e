"""``benchmarks/pipeline.py --baseline plaintext`` and the baseline graph itself.

The run must add, per batch size, ``--repeat`` reconciled runs of each input (plaintext,
record streams, sealed batches), their medians and best, and ratios that are those figures
over the baseline's. The baseline graph,
run directly, must write Arrow IPC (or Parquet) files of the spec's output schema holding
the rows it reports. Correctness only: no timing is asserted."""

from __future__ import annotations

import importlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from enclave_workers.batch_processor import PARQUET_PME, SEALED_ARROW, default_feature_spec
from enclave_workers.features import compile_spec
from pipelines import synthetic
from tests.benchmarks.support import assert_positive, run_benchmark

RECORDS = 120
REPEAT = 2


@pytest.fixture(scope="module")
def baseline_results(repo_root: Path, tmp_path_factory: pytest.TempPathFactory):
    json_path = tmp_path_factory.mktemp("pipeline-baseline") / "pipeline.json"
    return run_benchmark(
        repo_root, "pipeline.py",
        ["--records", str(RECORDS), "--files", "1", "--batch-size", "60",
         "--baseline", "plaintext", "--records-per-stream", "10", "--repeat", str(REPEAT)],
        json_path)


def test_baseline_runs_reconcile_and_ratios_follow(baseline_results) -> None:
    stdout, numbers = baseline_results
    assert "plaintext" in stdout and "record streams" in stdout
    assert "sealed batches" in stdout and f"of {REPEAT} interleaved" in stdout
    assert "record streams CPU s" in stdout
    (run,) = numbers["runs"]
    plain, batch = run["plaintext"], run["sealed_batch_beam"]
    stream, stream_inputs = run["record_stream_beam"], run["stream_inputs"]
    for repeated in (plain, batch, stream):
        assert repeated["repeats"] == len(repeated["runs"]) == REPEAT
        rates = sorted(r["records_per_second"] for r in repeated["runs"])
        assert repeated["best_records_per_second"] == rates[-1]
        assert repeated["median_records_per_second"] == pytest.approx(
            (rates[0] + rates[-1]) / 2, abs=1)
        assert repeated["best_seconds"] == min(r["seconds"] for r in repeated["runs"])
        cpu = sorted(r["cpu_seconds"] for r in repeated["runs"])
        assert repeated["median_cpu_seconds"] == pytest.approx((cpu[0] + cpu[-1]) / 2, abs=1e-3)
        assert cpu[0] > 0
    # Record streams count records, not envelopes; every record is a row out or suppressed.
    for one in stream["runs"]:
        assert one["records_in"] == RECORDS and one["reconciled"] is True
        assert one["dead_letters"] == 0
        assert one["rows_out"] + one["rows_suppressed"] == one["records_out"] == RECORDS
    assert stream_inputs["records"] == RECORDS
    assert stream_inputs["envelopes"] >= RECORDS // 10
    assert 0 < stream_inputs["overhead_bytes_per_record"] < 213
    for one in plain["runs"]:
        assert one["records_in"] == RECORDS
        assert one["records_out"] + one["dead_letters"] == RECORDS
        assert one["output_files"] >= 1 and one["rows_out"] >= 1
        assert_positive(one, ("seconds", "records_per_second", "peak_rss_bytes"))
    # One batch envelope per partner file: 2 producers x 2 regions x 1 file.
    for one in batch["runs"]:
        assert one["records_in"] == len(synthetic.PRODUCERS) * len(synthetic.REGIONS)
        assert one["reconciled"] is True and one["dead_letters"] == 0
        assert one["rows_out"] + one["rows_suppressed"] == RECORDS
    assert run["sealed_record_over_plaintext"] == pytest.approx(
        run["beam"]["records_per_second"] / plain["median_records_per_second"], rel=1e-2)
    for name, sealed in (("record_stream_over_plaintext", stream),
                         ("sealed_batch_over_plaintext", batch)):
        assert run[name] == pytest.approx(
            sealed["median_records_per_second"] / plain["median_records_per_second"], rel=1e-2)
        assert run[f"{name}_best"] == pytest.approx(
            sealed["best_records_per_second"] / plain["best_records_per_second"], rel=1e-2)
        assert run[f"{name}_cpu"] == pytest.approx(
            plain["median_cpu_seconds"] / sealed["median_cpu_seconds"], rel=1e-2)
        assert run[f"{name}_by_round"] == pytest.approx(
            [s["records_per_second"] / p["records_per_second"]
             for s, p in zip(sealed["runs"], plain["runs"], strict=True)], rel=1e-2)


@pytest.mark.parametrize("output_format", [SEALED_ARROW, PARQUET_PME])
def test_baseline_graph_writes_the_rows_it_reports(repo_root: Path, tmp_path: Path,
                                                   output_format: str) -> None:
    baseline = importlib.import_module("benchmarks.plaintext_baseline")
    files = synthetic.write_partner_files(tmp_path / "partner", 90, files_per_group=1)
    origins = {f.path.name: (f.region, f.producer_id) for f in files}
    summary = baseline.run_plaintext_baseline(str(tmp_path / "partner" / "*.jsonl"), origins,
                                              str(tmp_path / "out"), 30, output_format)
    assert summary.records_in == 90 and summary.reconciled
    written = sorted((tmp_path / "out").rglob("part-*"))
    assert len(written) == summary.output_files >= 1
    assert {path.parent.name for path in written} <= set(synthetic.REGIONS)
    schema = compile_spec(default_feature_spec()).output_schema
    rows = 0
    for path in written:
        if output_format == PARQUET_PME:
            assert path.suffix == ".parquet"
            table = pq.read_table(path)
        else:
            assert path.suffix == ".arrow"
            table = pa.ipc.open_stream(path.read_bytes()).read_all()
        assert table.schema.names == schema.names
        rows += table.num_rows
    assert rows == summary.rows_out
