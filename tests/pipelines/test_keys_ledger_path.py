"""``sealbeam keys rotate | rewrap | shred`` write to the ledger (and use the keyring) that the
state's broker.yaml names, so the ``kek-*`` events sit in the broker's own hash chain even
when ``ledger`` points outside the state directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from keybroker.kms.local import LocalKeyring
from keybroker.ledger import AuditLedger
from pipelines.commands import keys as keys_commands
from tests.keybroker.rewrap_support import EU_KEK, kek_versions, write_record_file
from tests.pipelines.keys_cli_support import keys_main

main = keys_main


def point_settings_elsewhere(state: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Move the keyring out of the state and aim broker.yaml's ledger at another folder."""
    keyring = tmp_path / "vault" / "broker-keyring.json"
    keyring.parent.mkdir(mode=0o700)
    shutil.move(state / "keyring.json", keyring)
    ledger = tmp_path / "audit" / "broker-ledger.sqlite"
    ledger.parent.mkdir()
    settings_path = state / "broker.yaml"
    document = yaml.safe_load(settings_path.read_text("utf-8"))
    document["keyring"] = str(keyring)
    document["ledger"] = "../audit/broker-ledger.sqlite"  # relative to broker.yaml
    settings_path.write_text(yaml.safe_dump(document), "utf-8")
    return keyring, ledger


def events(ledger_path: Path) -> list[tuple[str, str]]:
    with AuditLedger(ledger_path, read_only=True) as ledger:
        assert ledger.verify().ok
        return [(entry.event, entry.decision) for entry in ledger.entries()]


def test_kek_events_land_in_the_ledger_broker_yaml_names(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keyring_path, ledger_path = point_settings_elsewhere(state, tmp_path)
    assert keys_commands.state_ledger_path(state) == ledger_path.resolve()
    with AuditLedger(ledger_path) as ledger:  # the broker was here first
        ledger.append("broker-start", "info", {"rules": ["r"]})
    sealed = write_record_file(tmp_path / "data" / "p.sealed", LocalKeyring.open(keyring_path),
                               records=2)
    assert sealed

    assert main(["keys", "rotate", "--state", str(state), "--kek", EU_KEK]) == 0
    assert json.loads(capsys.readouterr().out)["new_version"] == "2"
    assert main(["keys", "rewrap", "--state", str(state), "--kek", EU_KEK,
                 str(tmp_path / "data")]) == 0
    assert main(["keys", "shred", "--state", str(state), "--kek", EU_KEK, "--version", "1",
                 "--yes"]) == 0

    assert events(ledger_path) == [("broker-start", "info"), ("kek-rotate", "granted"),
                                   ("kek-rewrap", "info"), ("kek-shred", "granted")]
    assert not (state / "ledger.sqlite").exists()
    assert not (state / "keyring.json").exists()
    assert LocalKeyring.open(keyring_path).versions(EU_KEK) == {"1": "destroyed",
                                                               "2": "enabled"}
    assert set(kek_versions(tmp_path / "data" / "p.sealed")) == {"2"}


def test_a_state_without_broker_yaml_keeps_its_own_files(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (state / "broker.yaml").unlink()
    assert keys_commands.state_ledger_path(state) == state / "ledger.sqlite"
    assert main(["keys", "rotate", "--state", str(state), "--kek", EU_KEK]) == 0
    assert events(state / "ledger.sqlite") == [("kek-rotate", "granted")]
    assert LocalKeyring.open(state / "keyring.json").versions(EU_KEK)["2"] == "enabled"
    capsys.readouterr()
    assert main(["keys", "rotate", "--state", str(state), "--kek",
                 "gcp-kms://projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k"]) == 2
    assert "no broker settings at" in capsys.readouterr().err


def test_unreadable_broker_yaml_is_one_line_and_writes_nothing(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (state / "broker.yaml").write_text("version: 1\nledger: [not, a, path]\n", "utf-8")
    assert main(["keys", "rotate", "--state", str(state), "--kek", EU_KEK]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sealbeam: error: ") and error.count("\n") == 1
    assert not (state / "ledger.sqlite").exists()
    assert LocalKeyring.open(state / "keyring.json").versions(EU_KEK) == {"1": "enabled"}
