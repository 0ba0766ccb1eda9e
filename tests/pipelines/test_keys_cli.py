"""``sealbeam keys rotate | rewrap | shred`` (and ``keys init`` still working), end to end through
the real command line: help texts, JSON outputs, ledger entries, exit codes, and the
"key destroyed" failure of what was not rewrapped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envelope import open_batch, open_record
from keybroker.kms.local import LocalKeyring
from keybroker.ledger import AuditLedger
from pipelines.errors import PipelineError
from pipelines.reading import open_output
from tests.keybroker.rewrap_support import (
    EU_KEK,
    envelopes_in,
    kek_versions,
    split,
    unwrap_key,
    write_batch_file,
    write_record_file,
)
from tests.pipelines.keys_cli_support import keys_main

main = keys_main


def ledger_events(state: Path) -> list[tuple[str, str, dict]]:
    with AuditLedger(state / "ledger.sqlite") as ledger:
        assert ledger.verify().ok
        return [(e.event, e.decision, dict(e.details)) for e in ledger.entries()]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("rotate", ["--state", "--kek", "new version"]),
        ("rewrap", ["--state", "--kek", "--to-version", "--journal", "--report", "PATH",
                    "payload bytes stay identical"]),
        ("shred", ["--state", "--kek", "--version", "--yes", "--force", "key destroyed"]),
        ("init", ["--state", "--regions", "--tenants", "--force"]),
    ],
)
def test_help_of_each_subcommand(
    command: str, expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["keys", command, "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in expected:
        assert fragment in text, fragment


def test_the_real_cli_lists_the_new_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main as sealbeam_main

    with pytest.raises(SystemExit):
        sealbeam_main(["keys", "--help"])
    text = capsys.readouterr().out
    for command in ("init", "rotate", "rewrap", "shred"):
        assert command in text


def test_rotate_rewrap_shred_end_to_end(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keyring = LocalKeyring.open(state / "keyring.json")
    data = tmp_path / "data"
    records = write_record_file(data / "partner.sealed", keyring, records=4)
    batch = write_batch_file(data / "eu" / "part-1.sbatch", keyring, size=3000)
    stranded = tmp_path / "elsewhere" / "part-2.sbatch"
    write_batch_file(stranded, keyring)
    before = {path: envelopes_in(path) for path in (data / "partner.sealed",
                                                     data / "eu" / "part-1.sbatch")}
    capsys.readouterr()

    assert main(["keys", "rotate", "--state", str(state), "--kek", EU_KEK]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "kek": EU_KEK, "previous_version": "1", "new_version": "2"
    }

    report_file = tmp_path / "rewrap-report.json"
    assert main(["keys", "rewrap", "--state", str(state), "--kek", EU_KEK,
                 "--report", str(report_file), str(data)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(report_file.read_text())
    assert (report["target_version"], report["envelopes_rewrapped"]) == ("2", 5)
    assert len(report["files_changed"]) == 2 and report["files_failed"] == []
    assert (state / "rewrap-journal.jsonl").is_file()
    for path, envelopes in before.items():
        assert set(kek_versions(path)) == {"2"}
        for old, new in zip(envelopes, envelopes_in(path), strict=True):
            assert split(old)[2] == split(new)[2]  # the payload frames, byte for byte

    assert main(["keys", "shred", "--state", str(state), "--kek", EU_KEK,
                 "--version", "1"]) == 2
    assert "pass --yes to confirm" in capsys.readouterr().err
    assert main(["keys", "shred", "--state", str(state), "--kek", EU_KEK,
                 "--version", "2", "--yes"]) == 2
    assert "version 2 is the primary version" in capsys.readouterr().err
    assert main(["keys", "shred", "--state", str(state), "--kek", EU_KEK,
                 "--version", "1", "--yes"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "kek": EU_KEK, "destroyed_version": "1", "rotated_to": None
    }

    keyring = LocalKeyring.open(state / "keyring.json")
    assert keyring.versions(EU_KEK) == {"1": "destroyed", "2": "enabled"}
    opened = [open_record(e, unwrap_key(keyring, e)) for e in envelopes_in(data / "partner.sealed")]
    assert opened == records
    (rewrapped_batch,) = envelopes_in(data / "eu" / "part-1.sbatch")
    assert open_batch(rewrapped_batch, unwrap_key(keyring, rewrapped_batch)) == batch
    # What was not rewrapped is gone: `sealbeam open`'s reader says so, typed.
    with pytest.raises(PipelineError, match="cannot unwrap its data key: KeyDestroyedError"):
        open_output(stranded, keyring=keyring, region="eu")
    assert main(["keys", "rewrap", "--state", str(state), "--kek", EU_KEK,
                 str(stranded)]) == 1
    late = json.loads(capsys.readouterr().out)
    assert late["files_failed"][0]["reason"].startswith("key destroyed:")

    events = [(event, decision) for event, decision, _ in ledger_events(state)]
    assert events[-5:] == [
        ("kek-rotate", "granted"), ("kek-rewrap", "info"), ("kek-shred", "denied"),
        ("kek-shred", "granted"), ("kek-rewrap", "info"),
    ]


def test_shred_force_rotates_first(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "shred", "--state", str(state), "--kek", EU_KEK, "--version", "1",
                 "--yes", "--force"]) == 0
    assert json.loads(capsys.readouterr().out)["rotated_to"] == "2"
    assert LocalKeyring.open(state / "keyring.json").primary_version(EU_KEK) == "2"


def test_user_errors_are_one_line(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "rotate", "--state", str(state),
                 "--kek", "local://keyring/mars/kek-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sealbeam: error: KEK local://keyring/mars/kek-1 is not in keyring")
    assert err.count("\n") == 1
    assert main(["keys", "rewrap", "--state", str(state), "--kek", EU_KEK,
                 "--to-version", "7", str(state)]) == 2
    assert "version 7 is not the primary version" in capsys.readouterr().err
    assert main(["keys", "rotate", "--state", str(state),
                 "--kek", "vault://somewhere/kek"]) == 2
    assert "sealbeam: error:" in capsys.readouterr().err
