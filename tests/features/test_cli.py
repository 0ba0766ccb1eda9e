"""``sealbeam features check`` / ``run`` on small files, through ``register(subparsers)``."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from enclave_workers.features import FINGERPRINT_METADATA_KEY, FeatureSpec, compile_spec
from pipelines.commands import features as features_command

KEY_HEX = "11" * 32


def _sealbeam(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="sealbeam")
    features_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def transactions_spec(repo_root):
    return repo_root / "examples" / "features" / "transactions.yaml"


def test_check_prints_fingerprint_and_output_schema(transactions_spec, capsys):
    assert _sealbeam("features", "check", str(transactions_spec)) == 0
    out = capsys.readouterr().out
    fingerprint = compile_spec(FeatureSpec.load(transactions_spec)).fingerprint
    assert f"fingerprint {fingerprint}" in out
    assert "  country__oov: int8" in out and "  t_hour: int32" in out


def test_check_reports_a_bad_spec_on_one_line_per_problem(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ninput:\n  columns: []\nfeatures: []\n")
    assert _sealbeam("features", "check", str(bad)) == 2
    err = capsys.readouterr().err
    assert err.startswith("sealbeam: error: ")
    assert "line 3: input.columns" in err and "Traceback" not in err


def test_every_example_spec_checks(repo_root):
    for spec in sorted((repo_root / "examples" / "features").glob("*.yaml")):
        assert _sealbeam("features", "check", str(spec)) == 0, spec


def test_run_jsonl_to_parquet_with_violations(transactions_spec, tmp_path, capsys):
    rows = [
        {"email": "a@x.org", "amount": 120.5, "country": "DE",
         "event_time": "2024-05-06T10:00:00Z"},
        {"email": "b@x.org", "amount": "lots", "country": "FR",
         "event_time": "2024-05-06T11:00:00Z"},
        {"email": None, "amount": 5, "country": "XX", "event_time": "2024-05-07T00:30:00+02:00"},
        {"email": "c@x.org", "country": "US", "event_time": "2024-05-06T11:00:00Z"},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out, violations = tmp_path / "out.parquet", tmp_path / "violations.jsonl"
    assert _sealbeam("features", "run", str(transactions_spec), "--in", str(source), "--out",
                     str(out), "--key", f"tenant={KEY_HEX}", "--violations",
                     str(violations)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows_in"] == 4 and summary["rows_out"] == 2
    assert summary["violating_rows"] == 2 and summary["suppressed_rows"] == 0
    table = pq.read_table(out)
    assert table.schema.metadata[FINGERPRINT_METADATA_KEY].decode() == summary["fingerprint"]
    key = bytes.fromhex(KEY_HEX)
    assert table["user"].to_pylist() == [
        hmac.new(key, b"a@x.org", hashlib.sha256).hexdigest(), None]
    assert table["amount_band"].to_pylist() == [2, 0]
    assert table["country__oov"].to_pylist() == [0, 1]
    assert table["t_hour"].to_pylist() == [10, 22]
    written = [json.loads(line) for line in violations.read_text().splitlines()]
    assert written == [
        {"row_index": 1, "column": "amount", "reason": "wrong type: expected float64"},
        {"row_index": 3, "column": "amount", "reason": "null in a non-nullable column"}]


def test_run_parquet_in(transactions_spec, tmp_path, capsys):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({
        "email": ["a@x"], "amount": [1.0], "country": ["US"],
        "event_time": pa.array([0], pa.timestamp("ns", tz="UTC")), "unused": [1]}), source)
    out = tmp_path / "out.parquet"
    assert _sealbeam("features", "run", str(transactions_spec), "--in", str(source), "--out",
                     str(out), "--key", f"tenant={KEY_HEX}") == 0
    assert pq.read_table(out)["t_year"].to_pylist() == [1970]


@pytest.mark.parametrize(("keys", "fragment"), [
    ([], "needs key 'tenant'"),
    (["tenant=zz"], "--key tenant: the value is not hex"),
    (["tenant=0011"], "must be 16 to 1024 bytes"),
    (["=00"], "NAME=HEX"),
])
def test_run_refuses_bad_keys_without_echoing_them(transactions_spec, tmp_path, capsys, keys,
                                                    fragment):
    source = tmp_path / "in.jsonl"
    source.write_text('{"email": "a", "amount": 1, "country": "DE", "event_time": null}\n')
    argv = ["features", "run", str(transactions_spec), "--in", str(source), "--out",
            str(tmp_path / "o.parquet")]
    for key in keys:
        argv += ["--key", key]
    assert _sealbeam(*argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "zz" not in err.replace(fragment, "")


def test_run_refuses_unknown_format_and_bad_jsonl(transactions_spec, tmp_path, capsys):
    for name, text, fragment in (("in.csv", "a,b\n", "unknown input format"),
                                 ("in.jsonl", "[1, 2]\n", "line 1: not a JSON object")):
        source = tmp_path / name
        source.write_text(text)
        assert _sealbeam("features", "run", str(transactions_spec), "--in", str(source),
                         "--out", str(tmp_path / "o.parquet"), "--key",
                         f"tenant={KEY_HEX}") == 2
        assert fragment in capsys.readouterr().err
