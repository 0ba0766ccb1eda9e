"""``sealbeam unseal``: round trips for every layout and output format, refusals, the ledger."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from keybroker.kms.local import LocalKeyring
from keybroker.ledger import AuditLedger
from pipelines import cli
from pipelines.synthetic import write_partner_files

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sealed(state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
           ) -> tuple[Path, Path, list[dict]]:
    """(record file, batch file, the rows) sealed for eu/acme under ``state``."""
    files = write_partner_files(tmp_path / "partner", 40, files_per_group=1, seed=8)
    partner = max(files, key=lambda f: len(f.path.read_bytes().splitlines()))
    rows = [json.loads(line) for line in partner.path.read_bytes().splitlines() if line]
    assert len(rows) >= 8
    common = ["--region", partner.region, "--producer", partner.producer_id,
              "--state", str(state)]
    records, batch = tmp_path / "records.sealed", tmp_path / "batch.sealed"
    assert cli.main(["seal", "--input", str(partner.path), "--output", str(records),
                     "--profile", "1", "--records-per-key", "6", *common]) == 0
    assert cli.main(["seal", "--input", str(partner.path), "--output", str(batch),
                     "--kind", "batch", *common]) == 0
    capsys.readouterr()
    return records, batch, rows


def _ledger_entries(state: Path) -> list:
    with AuditLedger(state / "ledger.sqlite", read_only=True) as ledger:
        assert ledger.verify().ok
        return [entry for entry in ledger.entries() if entry.event == "unseal"]


def test_records_to_jsonl_on_stdout(sealed: tuple, state: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    records, _, rows = sealed
    assert cli.main(["unseal", str(records), "--state", str(state)]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line) for line in captured.out.splitlines()] == rows
    report = json.loads(captured.err.strip().splitlines()[-1])
    assert (report["envelopes"], report["records"], report["data_keys"]) == (
        len(rows), len(rows), -(-len(rows) // 6))
    [entry] = _ledger_entries(state)
    assert entry.decision == "granted" and entry.details["envelopes"] == len(rows)


def test_record_streams_to_jsonl(state: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    files = write_partner_files(tmp_path / "partner", 40, files_per_group=1, seed=8)
    partner = max(files, key=lambda f: len(f.path.read_bytes().splitlines()))
    rows = [json.loads(line) for line in partner.path.read_bytes().splitlines() if line]
    streams = tmp_path / "streams.sealed"
    assert cli.main(["seal", "--input", str(partner.path), "--output", str(streams),
                     "--region", partner.region, "--producer", partner.producer_id,
                     "--state", str(state), "--profile", "2",
                     "--records-per-stream", "3"]) == 0
    capsys.readouterr()
    assert cli.main(["unseal", str(streams), "--state", str(state)]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line) for line in captured.out.splitlines()] == rows
    report = json.loads(captured.err.strip().splitlines()[-1])
    assert (report["envelopes"], report["records"]) == (-(-len(rows) // 3), len(rows))


def test_batch_to_parquet_and_arrow(sealed: tuple, state: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    _, batch, rows = sealed
    parquet, arrow = tmp_path / "rows.parquet", tmp_path / "rows.arrow"
    assert cli.main(["unseal", str(batch), "--state", str(state), "-o", str(parquet)]) == 0
    assert cli.main(["unseal", str(batch), "--state", str(state), "-o", str(arrow)]) == 0
    capsys.readouterr()
    table = pq.read_table(parquet)
    assert table.column("customer_id").to_pylist() == [r["customer_id"] for r in rows]
    assert ipc.open_stream(arrow.read_bytes()).read_all().equals(table)


def test_raw_sbatch_and_standard_input(sealed: tuple, state: Path, tmp_path: Path) -> None:
    """A raw envelope file and '-' for standard input, through the real process."""
    import base64

    _, batch, rows = sealed
    raw = tmp_path / "out.sbatch"
    raw.write_bytes(base64.b64decode(batch.read_bytes()))
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "unseal", "-", "--state", str(state)],
        input=raw.read_bytes(), capture_output=True, cwd=REPO, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["customer_id"] for line in done.stdout.splitlines()] == [
        r["customer_id"] for r in rows]


def test_refused_without_the_key_in_one_line_and_recorded(
        sealed: tuple, state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records, _, _ = sealed
    other = tmp_path / "other-state"
    other.mkdir()
    LocalKeyring.create(other / "keyring.json", ["eu", "us"])
    output = tmp_path / "rows.jsonl"
    code = cli.main(["unseal", str(records), "--state", str(other), "-o", str(output)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("sealbeam: error: ")
    assert "access refused" in err and "KmsUnwrapError" in err
    assert not output.exists()
    [entry] = _ledger_entries(other)
    assert entry.decision == "denied" and "access refused" in entry.details["reason"]


def test_refused_after_the_kek_version_is_destroyed(sealed: tuple, state: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    records, _, _ = sealed
    import base64

    from envelope import read_header

    header, _ = read_header(base64.b64decode(records.read_bytes().splitlines()[0]))
    keyring = LocalKeyring.open(state / "keyring.json")
    kek = keyring.kek_for_region(header.region)
    keyring.rotate(kek)
    keyring.destroy_version(kek, "1")
    assert cli.main(["unseal", str(records), "--state", str(state)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing written before the refusal
    assert "KeyDestroyedError" in captured.err


def test_a_damaged_envelope_fails_without_a_partial_file(
        sealed: tuple, state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import base64

    records, _, _ = sealed
    lines = records.read_bytes().splitlines()
    envelope = bytearray(base64.b64decode(lines[3]))
    envelope[-1] ^= 1
    lines[3] = base64.b64encode(bytes(envelope))
    damaged = tmp_path / "damaged.sealed"
    damaged.write_bytes(b"\n".join(lines) + b"\n")
    output = tmp_path / "rows.jsonl"
    assert cli.main(["unseal", str(damaged), "--state", str(state), "-o", str(output)]) == 2
    assert "damaged.sealed:4: envelope authentication failed" in capsys.readouterr().err
    assert not output.exists()


def test_not_a_sealed_file(state: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"a": 1}\n', encoding="utf-8")
    assert cli.main(["unseal", str(plain), "--state", str(state)]) == 2
    assert "not a sealed file" in capsys.readouterr().err
