"""The ``sealbeam`` command line: help for every subcommand, seal -> run batch -> open."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import cli
from pipelines.synthetic import write_partner_files
from tests.enclave_workers.broker_env import BrokerEnv

OWN_SUBCOMMANDS = ("seal", "open", "run", "demo")


def test_help_lists_every_registered_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in OWN_SUBCOMMANDS:
        assert f"    {name} " in text or f"    {name}\n" in text
    for name in cli.COMMAND_MODULES:
        module = f"pipelines.commands.{name}"
        if Path(cli.__file__).with_name("commands").joinpath(f"{name}.py").exists():
            assert f"    {name}" in text, f"{module} is present but not listed"


@pytest.mark.parametrize("argv", [["seal"], ["open"], ["run"], ["run", "batch"], ["demo"]])
def test_each_subcommand_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "usage: sealbeam" in capsys.readouterr().out


def test_the_installed_entry_point_runs_as_a_process(repo_root: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], cwd=repo_root,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0
    assert "seal" in done.stdout and "demo" in done.stdout


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["seal", "--input", str(tmp_path / "missing.jsonl"), "--output",
                     str(tmp_path / "o.sealed"), "--region", "eu", "--producer", "acme",
                     "--state", str(tmp_path / "nostate")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("sealbeam: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_seal_run_open_round_trip(broker: BrokerEnv, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    files = write_partner_files(tmp_path / "partner", 120, files_per_group=1, seed=3)
    for partner_file in files:
        assert cli.main(["seal", "--input", str(partner_file.path), "--output",
                         str(tmp_path / "sealed" / f"{partner_file.path.stem}.sealed"),
                         "--region", partner_file.region, "--producer", partner_file.producer_id,
                         "--state", str(broker.state_dir), "--records-per-key", "25"]) == 0
    seal_reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(r["input_records"] for r in seal_reports) == 120

    code = cli.main(["run", "batch", f"--input={tmp_path / 'sealed' / '*.sealed'}",
                     f"--output_root={tmp_path / 'out'}", f"--broker_url={broker.url}",
                     f"--dev_tee_dir={broker.dev_tee_dir}"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert (summary["records_in"], summary["records_out"], summary["dead_letters"]) == (120, 120, 0)
    assert summary["reconciled"] is True
    assert summary["rows_out"] + summary["rows_suppressed"] == 120

    assert cli.main(["open", str(tmp_path / "out" / "eu"), "--region", "eu",
                     "--state", str(broker.state_dir), "--output",
                     str(tmp_path / "eu.parquet")]) == 0
    table = pq.read_table(tmp_path / "eu.parquet")
    assert "email" not in table.column_names and "name" not in table.column_names
    opened = json.loads(capsys.readouterr().out)
    assert opened["rows"] == table.num_rows
    assert opened["spec_fingerprint"] == summary["spec_fingerprint"]

    assert cli.main(["open", str(tmp_path / "out" / "us"), "--region", "us",
                     "--state", str(broker.state_dir)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) + table.num_rows == summary["rows_out"]
    assert all(len(r["customer_pseudonym"]) == 64 for r in rows)

    code = cli.main(["open", str(tmp_path / "out" / "us"), "--region", "eu",
                     "--state", str(broker.state_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "belongs to region 'us'" in err


def test_parquet_pme_through_the_cli_with_a_features_only_reader(
        broker: BrokerEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_partner_files(tmp_path / "partner", 60, files_per_group=1, seed=5)
    for partner_file in files:
        assert cli.main(["seal", "--input", str(partner_file.path), "--output",
                         str(tmp_path / "sealed" / f"{partner_file.path.stem}.sealed"),
                         "--region", partner_file.region, "--producer", partner_file.producer_id,
                         "--state", str(broker.state_dir)]) == 0
    code = cli.main(["run", "batch", f"--input={tmp_path / 'sealed' / '*.sealed'}",
                     f"--output_root={tmp_path / 'out'}", f"--broker_url={broker.url}",
                     f"--dev_tee_dir={broker.dev_tee_dir}", "--output_format=parquet-pme"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and summary["output_format"] == "parquet-pme"
    assert list((tmp_path / "out" / "eu").glob("part-*.parquet"))

    assert cli.main(["open", str(tmp_path / "out" / "eu"), "--region", "eu", "--state",
                     str(broker.state_dir), "--roles", "features", "--columns",
                     "amount_z,region"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert rows and all(set(r) == {"amount_z", "region"} for r in rows)

    code = cli.main(["open", str(tmp_path / "out" / "eu"), "--region", "eu", "--state",
                     str(broker.state_dir), "--roles", "features", "--columns",
                     "customer_pseudonym"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "PmeKeyScopeError" in err


def test_a_bad_feature_spec_is_one_line_naming_the_problem(
        broker: BrokerEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\ninput: {columns: [{name: a, type: string}]}\n"
                    "features: [{name: b, op: standardize, input: a, mean: 0, std: 1}]\n")
    (tmp_path / "in.sealed").write_text("")
    code = cli.main(["run", "batch", f"--input={tmp_path / 'in.sealed'}",
                     f"--output_root={tmp_path / 'out'}", f"--broker_url={broker.url}",
                     f"--dev_tee_dir={broker.dev_tee_dir}", f"--feature_spec={spec}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "features[0]" in err and "line 3" in err
