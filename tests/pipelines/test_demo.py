"""``sealbeam demo`` end to end (smaller than the default so the suite stays fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import cli


@pytest.mark.slow
def test_demo_prints_one_reconciled_json_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["demo", "--records", "600", "--workdir", str(tmp_path / "demo")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["records_in"] == 600
    assert summary["records_in"] == summary["records_out"] + summary["dead_letters"]
    assert summary["ledger_verified"] is True
    assert summary["simulated_tee"] is True
    assert set(summary["outputs_by_region"]) == {"eu", "us"}
    assert all(count > 0 for count in summary["outputs_by_region"].values())
    assert summary["broker_releases"] >= 600 // 500 + 2
    assert summary["rows_suppressed"] >= 0
    assert summary["rows_out"] + summary["rows_suppressed"] == summary["records_out"]
    assert len(summary["spec_fingerprint"]) == 64
    assert summary["output_format"] == "sealed-arrow"


@pytest.mark.slow
def test_demo_with_parquet_pme_outputs(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["demo", "--records", "300", "--workdir", str(tmp_path / "demo"),
                     "--output-format", "parquet-pme"])
    summary = json.loads(capsys.readouterr().out.strip())
    assert code == 0
    assert summary["output_format"] == "parquet-pme"
    assert summary["records_in"] == summary["records_out"] + summary["dead_letters"] == 300
    assert list((tmp_path / "demo" / "out" / "eu").glob("part-*.parquet"))
