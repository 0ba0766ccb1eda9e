"""A second implementation opens what ``sealbeam seal`` writes, from docs/FORMAT.md alone.

The files are made by the real command (both kinds, several DEKs per file); everything after
that, from splitting the file to unwrapping each DEK with the keyring file and reading the
Arrow stream, is tests/envelope/independent_decoder.py, which imports nothing of sealbeam."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.synthetic import write_partner_files
from tests.envelope import independent_decoder as clean


def _partner_file(tmp_path: Path) -> tuple[Path, str, str, list[dict]]:
    [partner, *_] = write_partner_files(tmp_path / "partner", 30, files_per_group=1, seed=21)
    rows = [json.loads(line) for line in partner.path.read_bytes().splitlines() if line]
    return partner.path, partner.region, partner.producer_id, rows


def _keyring(state: Path) -> dict:
    return json.loads((state / "keyring.json").read_text(encoding="utf-8"))


def test_sealed_records_open_with_only_the_document(state: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    source, region, producer, rows = _partner_file(tmp_path)
    sealed = tmp_path / "records.sealed"
    assert cli.main(["seal", "--input", str(source), "--output", str(sealed), "--region", region,
                     "--producer", producer, "--state", str(state), "--profile", "1",
                     "--records-per-key", "7"]) == 0
    capsys.readouterr()
    keyring = _keyring(state)
    envelopes = clean.envelopes_in_file(sealed.read_bytes())
    assert len(envelopes) == len(rows) >= 8
    opened = [clean.open_with_keyring(envelope, keyring) for envelope in envelopes]
    assert [clean.record_object(d) for d in opened] == rows
    assert {d.context["sealbeam.kind"] for d in opened} == {"partner-records"}
    assert {(d.region, d.producer_id) for d in opened} == {(region, producer)}
    assert len({d.wrapped_key for d in opened}) == -(-len(rows) // 7)  # 7 records per key
    assert all(len(d.wrapped_key) == 65 and d.wrapped_key[:5] == b"SBLW\x01" for d in opened)
    fingerprint = "f52cb98bbf99aecb4df986b336a317cc50d71e5fa62229852747e4458186d97c"
    assert {d.schema_fingerprint.hex() for d in opened} == {fingerprint}  # FORMAT.md 10.1


def test_the_default_record_streams_open_with_only_the_document(
        state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``sealbeam seal`` writes record streams (profile 2) unless told ``--profile 1``."""
    source, region, producer, rows = _partner_file(tmp_path)
    sealed = tmp_path / "streams.sealed"
    assert cli.main(["seal", "--input", str(source), "--output", str(sealed), "--region", region,
                     "--producer", producer, "--state", str(state),
                     "--records-per-stream", "8"]) == 0
    capsys.readouterr()
    envelopes = clean.envelopes_in_file(sealed.read_bytes())
    assert len(envelopes) == -(-len(rows) // 8)
    opened = [clean.open_with_keyring(envelope, _keyring(state)) for envelope in envelopes]
    assert {d.kind for d in opened} == {3}
    plaintexts = [plaintext for d in opened for _, _, _, plaintext in d.records]
    assert [json.loads(p) for p in plaintexts] == rows


def test_a_sealed_batch_opens_with_only_the_document(state: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    source, region, producer, rows = _partner_file(tmp_path)
    sealed = tmp_path / "batch.sealed"
    assert cli.main(["seal", "--input", str(source), "--output", str(sealed), "--region", region,
                     "--producer", producer, "--state", str(state), "--kind", "batch"]) == 0
    capsys.readouterr()
    [envelope] = clean.envelopes_in_file(sealed.read_bytes())
    decoded = clean.open_with_keyring(envelope, _keyring(state))
    table = clean.batch_table(decoded)
    stated_time = decoded.context.pop("sealbeam.event_time")       # FORMAT.md 2.1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stated_time)
    assert decoded.context == {"sealbeam.kind": "partner-records",
                               "sealbeam.rows": str(len(rows))}
    assert table.column("customer_id").to_pylist() == [r["customer_id"] for r in rows]
    assert table.column("amount").to_pylist() == [r["amount"] for r in rows]


def test_the_second_implementation_refuses_another_keyring(state: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    source, region, producer, _ = _partner_file(tmp_path)
    sealed = tmp_path / "records.sealed"
    assert cli.main(["seal", "--input", str(source), "--output", str(sealed), "--region", region,
                     "--producer", producer, "--state", str(state), "--profile", "1"]) == 0
    capsys.readouterr()
    keyring = _keyring(state)
    [uri] = [u for u, kek in keyring["keks"].items() if kek["region"] == region]
    keyring["keks"][uri]["versions"]["1"]["material"] = "A" * 43 + "="  # another 32-byte key
    with pytest.raises(clean.AuthFailed):
        clean.open_with_keyring(clean.envelopes_in_file(sealed.read_bytes())[0], keyring)
