"""``benchmarks/pipeline.py --baseline plaintext`` and the baseline graph itself.

The run must add, per batch size, a reconciled sealed-batch run and a reconciled plaintext
run, and ratios that are those runs' records/s over the baseline's. The baseline graph,
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


@pytest.fixture(scope="module")
def baseline_results(repo_root: Path, tmp_path_factory: pytest.TempPathFactory):
    json_path = tmp_path_factory.mktemp("pipeline-baseline") / "pipeline.json"
    return run_benchmark(
        repo_root, "pipeline.py",
        ["--records", str(RECORDS), "--files", "1", "--batch-size", "60",
         "--baseline", "plaintext", "--records-per-stream", "10"], json_path)


def test_baseline_runs_reconcile_and_ratios_follow(baseline_results) -> None:
    stdout, numbers = baseline_results
    assert "sealed-batch rec/s" in stdout and "plaintext rec/s" in stdout
    assert "record-stream rec/s" in stdout
    (run,) = numbers["runs"]
    plain, batch = run["plaintext"], run["sealed_batch_beam"]
    stream, stream_inputs = run["record_stream_beam"], run["stream_inputs"]
    # Record streams count records, not envelopes; every record is a row out or suppressed.
    assert stream["records_in"] == RECORDS and stream["reconciled"] is True
    assert stream["dead_letters"] == 0
    assert stream["rows_out"] + stream["rows_suppressed"] == stream["records_out"] == RECORDS
    assert stream_inputs["records"] == RECORDS
    assert stream_inputs["envelopes"] >= RECORDS // 10
    assert 0 < stream_inputs["overhead_bytes_per_record"] < 213
    assert plain["records_in"] == RECORDS
    assert plain["records_out"] + plain["dead_letters"] == RECORDS
    assert plain["output_files"] >= 1 and plain["rows_out"] >= 1
    # One batch envelope per partner file: 2 producers x 2 regions x 1 file.
    assert batch["records_in"] == len(synthetic.PRODUCERS) * len(synthetic.REGIONS)
    assert batch["reconciled"] is True and batch["dead_letters"] == 0
    assert batch["rows_out"] + batch["rows_suppressed"] == RECORDS
    for name, sealed in (("sealed_record_over_plaintext", run["beam"]),
                         ("record_stream_over_plaintext", stream),
                         ("sealed_batch_over_plaintext", batch)):
        assert run[name] == pytest.approx(
            sealed["records_per_second"] / plain["records_per_second"], rel=1e-2)
    assert_positive(plain, ("seconds", "records_per_second", "peak_rss_bytes"))


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
