"""The batch pipeline on FnApiRunner with a real broker: a corrupted input file, a feature spec
whose constraints some rows break, and Parquet Modular Encryption output."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.batch import RunSummary, check_reconciled, run_batch
from pipelines.errors import PipelineError, ReconciliationError
from pipelines.reading import open_outputs
from pipelines.synthetic import REGIONS
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import assert_no_plaintext, plaintext_probes, sealed_partner_files

RECORDS = 300


def _options(broker: BrokerEnv, input_pattern: str, output_root: Path, **extra: str
             ) -> PipelineOptions:
    flags = {"input": input_pattern, "output_root": str(output_root), "broker_url": broker.url,
             "tee": "simulated-sev-snp", "dev_tee_dir": str(broker.dev_tee_dir),
             "regions": ",".join(REGIONS), **extra}
    return PipelineOptions(flags=[f"--{k}={v}" for k, v in flags.items()])


def _corrupt_copy(source: Path, target: Path) -> list[str]:
    """Copy a sealed file, damaging four of its lines; returns the expected dead-letter stages."""
    lines = source.read_bytes().splitlines()
    flipped = bytearray(base64.b64decode(lines[0]))
    flipped[-3] ^= 0x40                                       # ciphertext byte: auth fails
    lines[0] = base64.b64encode(bytes(flipped))
    truncated = lines[1][: (len(lines[1]) // 2) // 4 * 4]     # still base64, half an envelope
    lines[1] = truncated
    lines[2] = b"%%% this line is not base64 %%%"
    lines[3] = base64.b64encode(b"SEALBEAM? no, random bytes of the wrong shape")
    target.write_bytes(b"\n".join(lines) + b"\n")
    return ["open", "parse", "framing", "parse"]   # a truncated envelope fails its framing


@pytest.fixture(scope="module")
def corrupted_run(broker: BrokerEnv, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("pipeline")
    files, sealed = sealed_partner_files(broker, work, RECORDS)
    victim = sealed[0]
    stages = _corrupt_copy(victim, victim.with_name("corrupted.sealed"))
    victim.unlink()
    summary = run_batch(_options(broker, str(work / "sealed" / "*.sealed"), work / "out"))
    return work, files, summary, stages


def test_the_run_completes_and_reconciles_with_bad_records_as_dead_letters(corrupted_run
                                                                           ) -> None:
    work, _, summary, stages = corrupted_run
    assert summary.records_in == RECORDS
    assert summary.dead_letters == len(stages)
    assert summary.records_out == RECORDS - len(stages)
    assert summary.reconciled
    check_reconciled(summary)
    dead = [json.loads(line) for f in (work / "out" / "dead-letter").glob("*.jsonl")
            for line in f.read_bytes().splitlines()]
    assert sorted(d["stage"] for d in dead) == sorted(stages)
    assert all(d["reason"] for d in dead)
    assert [d["sealed_b64"] for d in dead if d["stage"] in ("framing", "parse")] == [""] * 3
    assert any("truncated" in d["reason"] or "length" in d["reason"] for d in dead)


def test_outputs_open_per_region_with_every_good_row(corrupted_run, broker: BrokerEnv) -> None:
    work, _, summary, _ = corrupted_run
    rows = 0
    for region in REGIONS:
        table = open_outputs([work / "out" / region], keyring=broker.keyring, region=region)
        assert set(table.column("region").to_pylist()) == {region}
        rows += table.num_rows
    assert rows == summary.rows_out
    assert summary.rows_out + summary.rows_suppressed == summary.records_out  # a row per record
    assert summary.outputs_by_region and sum(summary.outputs_by_region.values()) == \
        summary.output_files


def test_no_plaintext_identifier_appears_in_any_output_or_dead_letter(corrupted_run) -> None:
    work, files, _, _ = corrupted_run
    probes = plaintext_probes(files)
    assert len(probes) >= 3 * RECORDS - 100           # names may repeat; ids and e-mails do not
    assert assert_no_plaintext(work / "out", probes) >= 3


def test_broker_calls_are_one_per_key_not_per_record(corrupted_run) -> None:
    _, files, summary, _ = corrupted_run
    data_keys = sum(-(-f.records // 40) for f in files)
    assert summary.broker_calls < RECORDS / 5
    assert summary.broker_calls >= data_keys + 2          # + challenge + attest


def test_reconciliation_failure_is_reported() -> None:
    broken = RunSummary(records_in=10, records_out=7, dead_letters=2, rows_out=7,
                        output_files=1, broker_calls=4, rows_suppressed=1)
    assert not broken.reconciled
    with pytest.raises(ReconciliationError, match="records_in=10"):
        check_reconciled(broken)


def test_missing_options_are_user_errors(broker: BrokerEnv, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="--input"):
        run_batch(PipelineOptions(flags=[f"--output_root={tmp_path}"]))
    with pytest.raises(PipelineError, match="region"):
        run_batch(_options(broker, str(tmp_path / "*.sealed"), tmp_path, regions="EU"))
    with pytest.raises(PipelineError, match="features"):
        run_batch(_options(broker, str(tmp_path / "*.sealed"), tmp_path,
                           feature_spec=str(_bad_spec(tmp_path))))
    with pytest.raises(PipelineError, match="cannot read spec file"):
        run_batch(_options(broker, str(tmp_path / "*.sealed"), tmp_path,
                           feature_spec=str(tmp_path / "missing.yaml")))


def _bad_spec(directory: Path) -> Path:
    path = directory / "bad.yaml"
    path.write_text("version: 1\ninput: {columns: [{name: a, type: string}]}\n"
                    "features: [{name: a2, op: standardize, input: nowhere, mean: 0, std: 1}]\n")
    return path


def test_the_run_summary_carries_the_signed_ledger_head_as_an_anchor(
        corrupted_run, broker: BrokerEnv) -> None:
    from keybroker.checkpoints import check_anchor, verify_checkpoint
    from keybroker.identity import IDENTITY_PUBLIC_KEY_FILE, BrokerPublicKey
    from keybroker.ledger import AuditLedger

    _, _, summary, _ = corrupted_run
    key = BrokerPublicKey.load(broker.state_dir / IDENTITY_PUBLIC_KEY_FILE)
    head = verify_checkpoint(key, json.loads(json.dumps(summary.to_json()["ledger_head"])))
    with AuditLedger(broker.settings.ledger_path, read_only=True) as ledger:
        assert check_anchor(ledger, head).ok
        generates = [e for e in ledger.entries() if e.event == "generate" and e.seq <= head.entries]
    assert generates, "the head was taken after the run's grants"
