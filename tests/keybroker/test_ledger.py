"""The audit ledger: the hash chain, its tamper cases, concurrency, and ``audit verify``."""

from __future__ import annotations

import argparse
import itertools
import sqlite3
import threading
from pathlib import Path

import pytest

from keybroker.ledger import GENESIS_HASH, AuditLedger, LedgerError, entry_hash
from pipelines.commands import audit


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite"
    with AuditLedger(path, clock=iter(range(1_700_000_000, 1_800_000_000)).__next__) as ledger:
        for index in range(5):
            ledger.append("release", "granted", {"index": index, "region": "eu"})
    return path


def tamper(path: Path, *statements: str) -> None:
    """Change the file behind the ledger's back (the triggers only stop honest mistakes)."""
    connection = sqlite3.connect(path)
    connection.execute("DROP TRIGGER ledger_append_only_update")
    connection.execute("DROP TRIGGER ledger_append_only_delete")
    for statement in statements:
        connection.execute(statement)
    connection.commit()
    connection.close()


def verify(path: Path, expect_head: str | None = None):
    with AuditLedger(path, read_only=True) as ledger:
        return ledger.verify(expect_head=expect_head)


def test_chain_links_and_verifies(ledger_path: Path) -> None:
    with AuditLedger(ledger_path) as ledger:
        entries = list(ledger.entries())
        assert [entry.seq for entry in entries] == [1, 2, 3, 4, 5]
        assert entries[0].prev_hash == GENESIS_HASH
        for previous, current in itertools.pairwise(entries):
            assert current.prev_hash == previous.hash
        first = entries[0]
        assert first.time == "2023-11-14T22:13:20.000000Z"
        assert first.hash == entry_hash(
            1, first.time, "release", "granted", '{"index":0,"region":"eu"}', GENESIS_HASH
        )
        result = ledger.verify()
        assert result.ok and result.entries == 5 and result.head == entries[-1].hash
        assert ledger.head() == (5, entries[-1].hash)
        assert result.summary() == f"ledger ok: 5 entries, head {entries[-1].hash}"


def test_empty_ledger_verifies(tmp_path: Path) -> None:
    with AuditLedger(tmp_path / "ledger.sqlite") as ledger:
        result = ledger.verify()
    assert result.ok and result.entries == 0 and result.head == GENESIS_HASH


@pytest.mark.parametrize(
    ("statements", "bad_seq", "problem"),
    [
        (["UPDATE ledger SET decision = 'denied' WHERE seq = 3"], 3, "hash does not match"),
        (["UPDATE ledger SET details = '{\"index\":9}' WHERE seq = 2"], 2, "hash does not match"),
        (["UPDATE ledger SET time = '2020-01-01T00:00:00.000000Z' WHERE seq = 5"], 5, "altered"),
        (["UPDATE ledger SET hash = '" + "ab" * 32 + "' WHERE seq = 4"], 4, "altered"),
        (["DELETE FROM ledger WHERE seq = 3"], 4, "expected sequence number 3"),
        (
            [  # swap rows 2 and 3: each whole row moves to the other's place in the order
                "UPDATE ledger SET seq = 100 WHERE seq = 2",
                "UPDATE ledger SET seq = 2 WHERE seq = 3",
                "UPDATE ledger SET seq = 3 WHERE seq = 100",
            ],
            2,
            "prev_hash does not match the hash of entry 1",
        ),
        (
            [  # swap only the details of rows 2 and 3, leaving their hashes in place
                "CREATE TABLE t AS SELECT seq, details FROM ledger WHERE seq IN (2, 3)",
                "UPDATE ledger SET details = (SELECT details FROM t WHERE t.seq = 5 - ledger.seq)"
                " WHERE seq IN (2, 3)",
            ],
            2,
            "hash does not match the entry's content",
        ),
        (["UPDATE ledger SET prev_hash = '" + "00" * 32 + "' WHERE seq = 2"], 2, "prev_hash"),
        (["DELETE FROM ledger WHERE seq = 1"], 2, "expected sequence number 1"),
    ],
    ids=[
        "alter-decision",
        "alter-details",
        "alter-time",
        "alter-hash",
        "delete-middle",
        "swap-rows",
        "swap-details",
        "alter-prev-hash",
        "delete-first",
    ],
)
def test_tampering_is_detected_at_the_first_bad_entry(
    ledger_path: Path, statements: list[str], bad_seq: int, problem: str
) -> None:
    assert verify(ledger_path).ok
    tamper(ledger_path, *statements)
    result = verify(ledger_path)
    assert not result.ok
    assert result.first_bad_seq == bad_seq
    assert problem in (result.problem or "")
    assert f"entry {bad_seq}:" in result.summary()


def test_a_cut_off_tail_is_caught_only_with_an_anchor(ledger_path: Path) -> None:
    anchored_head = verify(ledger_path).head
    tamper(ledger_path, "DELETE FROM ledger WHERE seq = 5")
    assert verify(ledger_path).ok  # the chain alone cannot tell
    result = verify(ledger_path, expect_head=anchored_head)
    assert not result.ok and result.first_bad_seq is None
    assert "anchored head" in (result.problem or "")


def test_an_anchor_from_earlier_still_verifies_after_growth(ledger_path: Path) -> None:
    anchored_head = verify(ledger_path).head
    with AuditLedger(ledger_path) as ledger:
        ledger.append("attest", "denied", {"reason": "debug enabled"})
    assert verify(ledger_path, expect_head=anchored_head).ok


def test_triggers_refuse_updates_and_deletes(ledger_path: Path) -> None:
    connection = sqlite3.connect(ledger_path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        connection.execute("UPDATE ledger SET decision = 'x'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        connection.execute("DELETE FROM ledger")
    connection.close()


def test_append_refuses_bytes_and_bad_fields(tmp_path: Path) -> None:
    with AuditLedger(tmp_path / "ledger.sqlite") as ledger:
        with pytest.raises(LedgerError, match="bytes are refused"):
            ledger.append("release", "granted", {"dek": b"\x00" * 32})
        with pytest.raises(LedgerError, match="decision"):
            ledger.append("release", "maybe", {})
        with pytest.raises(LedgerError, match="event"):
            ledger.append("Release Keys", "granted", {})
        with pytest.raises(LedgerError, match="over the limit"):
            ledger.append("release", "granted", {"x": "y" * 70_000})
        assert ledger.head()[0] == 0


def test_read_only_ledger_refuses_appends_and_missing_files(
    ledger_path: Path, tmp_path: Path
) -> None:
    with (
        AuditLedger(ledger_path, read_only=True) as ledger,
        pytest.raises(LedgerError, match="read-only"),
    ):
        ledger.append("release", "granted", {})
    with pytest.raises(LedgerError, match="does not exist"):
        AuditLedger(tmp_path / "absent.sqlite", read_only=True)
    not_a_ledger = tmp_path / "other.sqlite"
    not_a_ledger.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="cannot open"):
        AuditLedger(not_a_ledger, read_only=True)


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    with AuditLedger(tmp_path / "ledger.sqlite") as ledger:

        def append_many(worker: int) -> None:
            for index in range(25):
                ledger.append("release", "granted", {"worker": worker, "index": index})

        threads = [threading.Thread(target=append_many, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        result = ledger.verify()
    assert result.ok and result.entries == 100


def test_group_commit_returns_each_caller_its_own_stored_entry(tmp_path: Path) -> None:
    """16 threads at once: appends share transactions, each caller gets its entry back."""
    returned: dict[tuple[int, int], object] = {}
    lock = threading.Lock()
    with AuditLedger(tmp_path / "ledger.sqlite") as ledger:
        start = threading.Barrier(16)

        def append_many(worker: int) -> None:
            start.wait()
            for index in range(30):
                entry = ledger.append("release", "granted", {"worker": worker, "index": index})
                with lock:
                    returned[(worker, index)] = entry

        threads = [threading.Thread(target=append_many, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stored = {entry.seq: entry for entry in ledger.entries()}
        assert ledger.verify().ok
    assert len(stored) == len(returned) == 480
    for (worker, index), entry in returned.items():
        assert stored[entry.seq] == entry  # what the caller was told is what is stored
        assert entry.details == {"worker": worker, "index": index}
    for worker in range(16):  # a caller's appends stay in its order
        seqs = [returned[(worker, index)].seq for index in range(30)]
        assert seqs == sorted(seqs)


def test_a_failed_group_commit_fails_every_caller_in_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with AuditLedger(path) as ledger:
        ledger.append("broker-start", "info", {})
        blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds SQLite's write lock
        ledger._connection.execute("PRAGMA busy_timeout = 50")
        failures: list[Exception] = []

        def append_one(worker: int) -> None:
            try:
                ledger.append("release", "granted", {"worker": worker})
            except LedgerError as error:
                failures.append(error)

        threads = [threading.Thread(target=append_one, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(failures) == 6  # none was told it was recorded
        blocker.execute("ROLLBACK")
        blocker.close()
        assert ledger.append("release", "granted", {"after": True}).seq == 2
        assert ledger.verify().entries == 2


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="sealbeam")
    audit.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_audit_verify_cli_exit_codes(
    ledger_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("audit", "verify", "--ledger", str(ledger_path)) == 0
    head = verify(ledger_path).head
    assert head in capsys.readouterr().out
    assert run_cli("audit", "verify", "--ledger", str(ledger_path), "--expect-head", head) == 0

    tamper(ledger_path, "UPDATE ledger SET details = '{}' WHERE seq = 2")
    assert run_cli("audit", "verify", "--ledger", str(ledger_path)) == audit.CHAIN_BROKEN_EXIT
    err = capsys.readouterr().err
    assert err.startswith("sealbeam: error: ledger broken: entry 2:")

    assert run_cli("audit", "verify", "--ledger", str(tmp_path / "absent.sqlite")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_cli("audit", "verify", "--ledger", str(ledger_path), "--expect-head", "zz") == 2


def test_audit_verify_cli_catches_a_cut_tail_with_expect_head(
    ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = verify(ledger_path).head
    tamper(ledger_path, "DELETE FROM ledger WHERE seq = 5")
    assert run_cli("audit", "verify", "--ledger", str(ledger_path)) == 0
    code = run_cli("audit", "verify", "--ledger", str(ledger_path), "--expect-head", head)
    assert code == audit.CHAIN_BROKEN_EXIT
    assert "anchored head" in capsys.readouterr().err
