"""The anchored ledger: signed checkpoints catch truncation and consistent rewrites.

Issue 9's attacks are run on a real SQLite ledger: drop the triggers and delete the newest
rows; delete a grant and recompute the whole chain so that it verifies in itself. Both pass
``sealbeam audit verify`` alone and both fail with ``--anchor`` (a saved checkpoint, the
broker's checkpoints file, or a run summary carrying ``ledger_head``). The broker writes
checkpoints at an interval and at shutdown, and signs its head on ``GET /v1/ledger/head``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from pathlib import Path

import pytest

from keybroker.checkpoints import check_anchor, verify_checkpoint
from keybroker.client import BrokerClient
from keybroker.identity import IDENTITY_PUBLIC_KEY_FILE, BrokerIdentity, BrokerPublicKey
from keybroker.ledger import GENESIS_HASH, AuditLedger, entry_hash
from keybroker.service.checkpointer import Checkpointer
from pipelines.commands import audit
from tests.support.broker import attest_simulated_worker, start_broker


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="sealbeam")
    audit.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def anchored(tmp_path: Path) -> tuple[Path, Path]:
    """A ledger of 10 entries beside the broker's key, and a checkpoint file of its head."""
    identity = BrokerIdentity.create(tmp_path / "broker-identity.pem")
    ledger_path = tmp_path / "ledger.sqlite"
    with AuditLedger(ledger_path) as ledger:
        for n in range(10):
            event = "release" if n % 2 else "attest"
            ledger.append(event, "granted", {"n": n, "key_id": f"k{n}"})
        checkpoint = Checkpointer(ledger, identity, tmp_path / "cp.jsonl", 60, time.time)
        envelope = checkpoint.write("test")
    anchor = tmp_path / "checkpoint.json"
    anchor.write_text(json.dumps(envelope))
    return ledger_path, anchor


def _sql(path: Path, *statements: str) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            connection.execute(statement)
    finally:
        connection.close()


def _recompute_chain(path: Path) -> None:
    """What an attacker with write access does after deleting rows: renumber and rehash."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in _DROP_TRIGGERS:
            connection.execute(statement.replace("DROP TRIGGER", "DROP TRIGGER IF EXISTS"))
        rows = connection.execute(
            "SELECT time, event, decision, details FROM ledger ORDER BY seq"
        ).fetchall()
        connection.execute("DELETE FROM ledger")
        previous = GENESIS_HASH
        for seq, (time_text, event, decision, details) in enumerate(rows, start=1):
            digest = entry_hash(seq, time_text, event, decision, details, previous)
            connection.execute(
                "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seq, time_text, event, decision, details, previous, digest),
            )
            previous = digest
    finally:
        connection.close()


_DROP_TRIGGERS = (
    "DROP TRIGGER ledger_append_only_update",
    "DROP TRIGGER ledger_append_only_delete",
)


def test_an_untouched_ledger_matches_its_anchor(
    anchored: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ledger_path, anchor = anchored
    assert run_cli("audit", "verify", "--ledger", str(ledger_path), "--anchor", str(anchor)) == 0
    assert "anchors ok: 1 signed checkpoint(s), the newest at entry 10" in capsys.readouterr().out


def test_truncation_passes_the_chain_but_not_the_anchor(
    anchored: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ledger_path, anchor = anchored
    _sql(ledger_path, *_DROP_TRIGGERS, "DELETE FROM ledger WHERE seq > 7")
    assert run_cli("audit", "verify", "--ledger", str(ledger_path)) == 0
    capsys.readouterr()
    code = run_cli("audit", "verify", "--ledger", str(ledger_path), "--anchor", str(anchor))
    assert code == audit.CHAIN_BROKEN_EXIT
    assert "cut off the end" in capsys.readouterr().err


def test_a_consistent_rewrite_passes_the_chain_but_not_the_anchor(
    anchored: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ledger_path, anchor = anchored
    # Delete two grants, append two harmless entries so the length is unchanged, rehash all.
    _sql(ledger_path, *_DROP_TRIGGERS, "DELETE FROM ledger WHERE seq IN (4, 6)")
    with AuditLedger(ledger_path) as ledger:
        ledger.append("info-note", "info", {"n": 100})
        ledger.append("info-note", "info", {"n": 101})
    _recompute_chain(ledger_path)
    assert run_cli("audit", "verify", "--ledger", str(ledger_path)) == 0
    capsys.readouterr()
    code = run_cli("audit", "verify", "--ledger", str(ledger_path), "--anchor", str(anchor))
    assert code == audit.CHAIN_BROKEN_EXIT
    assert "were rewritten" in capsys.readouterr().err


def test_a_replaced_ledger_is_caught_at_its_first_entry(
    anchored: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ledger_path, anchor = anchored
    _sql(ledger_path, *_DROP_TRIGGERS, "UPDATE ledger SET details = '{\"n\":-1}' WHERE seq = 1")
    _recompute_chain(ledger_path)
    assert run_cli("audit", "verify", "--ledger", str(ledger_path)) == 0
    capsys.readouterr()
    code = run_cli("audit", "verify", "--ledger", str(ledger_path), "--anchor", str(anchor))
    assert code == audit.CHAIN_BROKEN_EXIT
    assert "entry 1 is not the one" in capsys.readouterr().err


def test_an_anchor_signed_by_another_key_is_an_error(
    anchored: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger_path, anchor = anchored
    other = BrokerIdentity.create(tmp_path / "other" / "broker-identity.pem")
    code = run_cli("audit", "verify", "--ledger", str(ledger_path), "--anchor", str(anchor),
                   "--broker-key", str(tmp_path / "other" / IDENTITY_PUBLIC_KEY_FILE))
    assert code == audit.USER_ERROR_EXIT
    assert "not signed by the pinned broker key" in capsys.readouterr().err
    assert other.key_id


def test_a_run_summary_with_ledger_head_is_an_anchor(
    anchored: tuple[Path, Path], tmp_path: Path
) -> None:
    ledger_path, anchor = anchored
    summary = tmp_path / "run-summary.json"
    summary.write_text(json.dumps({"records_in": 3, "ledger_head": json.loads(anchor.read_text())}))
    assert run_cli("audit", "verify", "--ledger", str(ledger_path), "--anchor", str(summary)) == 0
    _sql(ledger_path, *_DROP_TRIGGERS, "DELETE FROM ledger WHERE seq = 10")
    code = run_cli("audit", "verify", "--ledger", str(ledger_path), "--anchor", str(summary))
    assert code == audit.CHAIN_BROKEN_EXIT


def test_the_broker_checkpoints_at_an_interval_at_shutdown_and_on_request(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    with start_broker(state, settings_changes={"checkpoint_interval_seconds": 1}) as broker:
        key = BrokerPublicKey.load(state / IDENTITY_PUBLIC_KEY_FILE)
        checkpoints = broker.settings.checkpoint_file
        deadline = time.monotonic() + 10
        while not checkpoints.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        interval_lines = checkpoints.read_text().splitlines()
        assert json.loads(interval_lines[0])["payloadType"].endswith("ledger-checkpoint+json")
        with BrokerClient(broker.url, broker_identity=key) as client:
            attest_simulated_worker(client, broker.settings)
            head = client.ledger_head()
    lines = checkpoints.read_text().splitlines()
    last = verify_checkpoint(key, json.loads(lines[-1]))
    assert last.reason == "shutdown" and len(lines) >= 2
    with AuditLedger(broker.settings.ledger_path, read_only=True) as ledger:
        assert ledger.head() == (last.entries, last.head)
        assert head.entries <= last.entries
        assert check_anchor(ledger, head).ok
    assert run_cli("audit", "verify", "--ledger", str(broker.settings.ledger_path),
                   "--anchor", str(checkpoints)) == 0


def test_audit_checkpoint_saves_a_verified_head_that_later_anchors_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    key_path = state / IDENTITY_PUBLIC_KEY_FILE
    with start_broker(state) as broker:
        with BrokerClient(broker.url, broker_identity=BrokerPublicKey.load(key_path)) as client:
            attest_simulated_worker(client, broker.settings)
        capsys.readouterr()
        assert run_cli("audit", "checkpoint", "--broker-url", broker.url,
                       "--broker-key", str(key_path)) == 0
        saved = tmp_path / "saved-checkpoint.json"
        saved.write_text(capsys.readouterr().out)
        other = BrokerIdentity.create(tmp_path / "other" / "broker-identity.pem")
        assert run_cli("audit", "checkpoint", "--broker-url", broker.url, "--broker-key",
                       str(tmp_path / "other" / IDENTITY_PUBLIC_KEY_FILE)) == 2
        assert "not signed by the pinned broker key" in capsys.readouterr().err
        assert other.key_id
    ledger_path = broker.settings.ledger_path
    assert run_cli("audit", "verify", "--ledger", str(ledger_path), "--anchor", str(saved)) == 0
    _sql(ledger_path, *_DROP_TRIGGERS, "DELETE FROM ledger WHERE seq > 1")
    code = run_cli("audit", "verify", "--ledger", str(ledger_path), "--anchor", str(saved))
    assert code == audit.CHAIN_BROKEN_EXIT
