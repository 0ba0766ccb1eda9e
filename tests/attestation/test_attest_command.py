"""``sealbeam attest verify`` / ``attest collect`` through their argparse handlers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from keybroker.attestation.snp import parse_report
from pipelines.commands import attest


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sealbeam")
    attest.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_collect_then_verify_simulated(tmp_path: Path, milan_chain: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    report_data = "ab" * 64
    evidence = tmp_path / "evidence.bin"
    endorsements = tmp_path / "endorsements"
    assert _run(["attest", "collect", "--provider", "simulated-snp", "--chain-dir",
                 str(milan_chain), "--report-data", report_data, "--version", "3",
                 "--out", str(evidence), "--endorsements-dir", str(endorsements)]) == 0
    collected = json.loads(capsys.readouterr().out)
    assert collected["simulated"] is True and len(collected["endorsements"]) == 3
    argv = ["attest", "verify", "--type", "sev-snp", "--evidence", str(evidence),
            "--vcek", str(endorsements / "vcek.der"), "--ask", str(endorsements / "ask.der"),
            "--ark", str(endorsements / "ark.der"), "--report-data", report_data]
    assert _run([*argv, "--dev-chain", str(milan_chain), "--allow-simulated"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verified"] is True and result["claims"]["simulated"] is True
    assert _run(argv) == 1  # the dev root is not trusted without --allow-simulated
    result = json.loads(capsys.readouterr().out)
    assert result["verified"] is False and "not a pinned AMD root" in result["reason"]
    assert result["claims"] is None


def test_verify_real_vector(snp_vectors: Path, amd_roots_dir: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    folder = snp_vectors / "milan-goguest"
    argv = ["attest", "verify", "--type", "sev-snp", "--evidence", str(folder / "report.bin"),
            "--vcek", str(folder / "vcek.der"), "--roots", str(amd_roots_dir)]
    assert _run([*argv, "--at", "2025-06-01T00:00:00Z"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["claims"]["debug"] is True and "not checked" in result["reason"]
    assert _run([*argv, "--at", "2030-01-01T00:00:00Z"]) == 1
    assert "expired" in json.loads(capsys.readouterr().out)["reason"]
    wrong = "00" * 64
    assert parse_report((folder / "report.bin").read_bytes()).report_data.hex() != wrong
    assert _run([*argv, "--at", "2025-06-01T00:00:00Z", "--report-data", wrong]) == 1
    assert "ReportDataMismatchError" in json.loads(capsys.readouterr().out)["reason"]


def test_bad_inputs_are_one_line_errors(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    missing = ["attest", "verify", "--type", "sev-snp", "--evidence", str(tmp_path / "nope")]
    assert _run(missing) == 2
    error = capsys.readouterr().err
    assert error.startswith("sealbeam: error: cannot read evidence file") and error.count("\n") == 1
    (tmp_path / "junk").write_bytes(b"junk")
    assert _run(["attest", "verify", "--type", "sev-snp", "--evidence",
                 str(tmp_path / "junk")]) == 1
    assert "EvidenceFormatError" in json.loads(capsys.readouterr().out)["reason"]
    assert _run(["attest", "verify", "--type", "sev-snp", "--evidence", str(tmp_path / "junk"),
                 "--at", "yesterday"]) == 2
    assert _run(["attest", "collect", "--provider", "simulated-snp", "--chain-dir",
                 str(tmp_path), "--out", str(tmp_path / "e.bin")]) == 2
    assert "missing" in capsys.readouterr().err
