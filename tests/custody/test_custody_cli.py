"""``sealbeam custody verify|show``: one JSON verdict, a table, and the exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT
from pipelines.cli import main

from .conftest import DemoRun


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_verify_prints_one_json_verdict_and_exits_0(demo_run: DemoRun, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "custody-policy.yaml"
    policy.write_text(f"measurements: [{DEV_MEASUREMENT}]\nallow_simulated: true\n"
                      f"spec_fingerprints: [{demo_run.summary['spec_fingerprint']}]\n")
    output = demo_run.outputs()[0]
    code, out, _ = _run(["custody", "verify", str(output), "--broker-key",
                         str(demo_run.broker_key_path), "--policy", str(policy), "--anchor",
                         str(demo_run.state / "ledger-checkpoints.jsonl"), "--ledger",
                         str(demo_run.state / "ledger.sqlite")], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1
    verdict = json.loads(lines[0])
    assert verdict["ok"] is True and verdict["checks"]["policy"] is True


def test_verify_exits_1_with_the_reason_when_refused(demo_run: DemoRun, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / demo_run.outputs()[0].name
    shutil.copyfile(demo_run.outputs()[1], output)          # another output's bytes
    statement = demo_run.outputs()[0].with_name(demo_run.outputs()[0].name + ".intoto.json")
    code, out, _ = _run(["custody", "verify", str(output), "--statement", str(statement),
                         "--broker-key", str(demo_run.broker_key_path)], capsys)
    assert code == 1
    verdict = json.loads(out)
    assert verdict["ok"] is False and verdict["checks"]["digest"] is False


def test_show_prints_a_table_and_run_mode(demo_run: DemoRun,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["custody", "show", "--run", str(demo_run.out), "--broker-key",
                         str(demo_run.broker_key_path)], capsys)
    assert code == 0
    assert "verdict" in out and "REFUSED" not in out and "input_lines" in out
    code, out, _ = _run(["custody", "show", str(demo_run.outputs()[0]), "--broker-key",
                         str(demo_run.broker_key_path)], capsys)
    assert code == 0 and "check chain" in out and "not checked" in out


def test_unreadable_inputs_are_one_line_errors(demo_run: DemoRun, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["custody", "verify", str(demo_run.outputs()[0]), "--broker-key",
                           str(tmp_path / "missing.pem")], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    code, _, err = _run(["custody", "verify", "--broker-key", str(demo_run.broker_key_path)],
                        capsys)
    assert code == 2 and "OUTPUT or --run" in err
