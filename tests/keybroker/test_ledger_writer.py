"""The event loop's ledger writer, committing on the loop (a local SQLite file) or on a
writer thread (PostgreSQL): batches per sync, durable before an await returns, and failures
that reach exactly the entries they undid."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from keybroker.ledger import AuditLedger
from keybroker.ledger_rows import LedgerEntry, LedgerError
from keybroker.service.ledger_writer import LedgerWriter


class CountingLedger:
    """A real SQLite ledger that counts its transactions and can be made to fail or wait."""

    def __init__(self, path: Path, commits_locally: bool) -> None:
        self.ledger = AuditLedger(path)
        self.commits_locally = commits_locally
        self.batches: list[int] = []
        self.failed_batches: list[int] = []
        self.fail_next = False
        self.gate: threading.Event | None = None

    def append_prepared(self, appends: Sequence[tuple[str, str, str]]) -> list[LedgerEntry]:
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        if self.fail_next:
            self.fail_next = False
            self.failed_batches.append(len(appends))
            raise LedgerError("the disk is full")
        entries = self.ledger.append_prepared(appends)
        self.batches.append(len(entries))
        return entries


@pytest.fixture(params=["on the loop", "on a thread"])
def counting(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[CountingLedger]:
    ledger = CountingLedger(tmp_path / "ledger.db", commits_locally=request.param == "on the loop")
    yield ledger
    ledger.ledger.close()


async def settle_queue(counting: CountingLedger) -> None:
    """Let the tasks just created queue their entries, and no more: on the loop, one step
    (their commit runs in the iteration after); on a thread, a moment (held at the gate)."""
    await asyncio.sleep(0 if counting.commits_locally else 0.05)


def hold(counting: CountingLedger) -> threading.Event:
    """Hold the writer thread's first batch until the event is set, so the rest queue behind
    it (on the loop, a batch is what one loop iteration queued, and nothing is held)."""
    gate = threading.Event()
    if not counting.commits_locally:
        counting.gate = gate
    return gate


def test_concurrent_appends_share_transactions_and_each_gets_its_durable_entry(
    counting: CountingLedger,
) -> None:
    observed: list[tuple[str, str, int]] = []
    writer = LedgerWriter(counting, on_written=lambda event, decision, details:
                          observed.append((event, decision, int(details["n"]))))
    gate = hold(counting)

    async def run() -> list[LedgerEntry]:
        tasks = [asyncio.ensure_future(writer.append("release", "granted", {"n": n}))
                 for n in range(50)]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*tasks)

    entries = asyncio.run(run())
    writer.close()
    assert [entry.details["n"] for entry in entries] == list(range(50))
    assert sorted(entry.seq for entry in entries) == list(range(1, 51))
    assert sum(counting.batches) == 50 and len(counting.batches) < 50
    if counting.commits_locally:
        assert counting.batches == [50]  # one loop iteration queued them all
    stored = list(counting.ledger.entries())
    assert [(entry.seq, entry.hash) for entry in stored] == [
        (entry.seq, entry.hash) for entry in sorted(entries, key=lambda e: e.seq)]
    assert counting.ledger.verify().ok
    assert sorted(n for _event, _decision, n in observed) == list(range(50))


def test_bad_details_fail_their_caller_only(counting: CountingLedger) -> None:
    writer = LedgerWriter(counting)

    async def run() -> list[object]:
        return await asyncio.gather(
            writer.append("release", "granted", {"n": 1}),
            writer.append("release", "granted", {"dek": b"\x00" * 32}),  # bytes refused
            writer.append("release", "maybe", {}),  # not a decision
            writer.append("release", "granted", {"n": 2}),
            return_exceptions=True)

    outcomes = asyncio.run(run())
    writer.close()
    assert isinstance(outcomes[1], LedgerError) and isinstance(outcomes[2], LedgerError)
    assert [entry.details["n"] for entry in outcomes if isinstance(entry, LedgerEntry)] == [1, 2]
    assert [entry.details for entry in counting.ledger.entries()] == [{"n": 1}, {"n": 2}]


def test_a_failed_commit_fails_exactly_the_entries_of_its_batch(
    counting: CountingLedger,
) -> None:
    writer = LedgerWriter(counting)
    gate = hold(counting)
    counting.fail_next = True  # the first batch fails, whatever it holds

    async def run() -> tuple[list[object], LedgerEntry]:
        queued = [asyncio.ensure_future(writer.append("release", "granted", {"n": n}))
                  for n in range(20)]
        await asyncio.sleep(0.05)
        gate.set()
        outcomes = await asyncio.gather(*queued, return_exceptions=True)
        return outcomes, await writer.append("release", "granted", {"n": "after"})

    outcomes, after = asyncio.run(run())
    writer.close()
    failed = [n for n, outcome in enumerate(outcomes) if isinstance(outcome, LedgerError)]
    assert {str(outcomes[n]) for n in failed} == {"the disk is full"}
    assert len(failed) == counting.failed_batches[0] >= 1
    written = [entry.details["n"] for entry in counting.ledger.entries()]
    assert written == [n for n in range(20) if n not in failed] + ["after"]
    assert [outcome.details["n"] for outcome in outcomes
            if isinstance(outcome, LedgerEntry)] == written[:-1]
    assert after.seq == len(written) and counting.ledger.verify().ok


def test_a_cancelled_wait_still_records_its_entry(counting: CountingLedger) -> None:
    writer = LedgerWriter(counting)
    gate = hold(counting)

    async def run() -> None:
        task = asyncio.ensure_future(writer.append("release", "granted", {"n": 1}))
        await settle_queue(counting)  # queued, not committed yet
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await writer.append("release", "granted", {"n": 2})  # the writer goes on

    asyncio.run(run())
    writer.close()
    assert [entry.details for entry in counting.ledger.entries()] == [{"n": 1}, {"n": 2}]


def test_close_writes_what_is_queued_then_refuses(counting: CountingLedger) -> None:
    writer = LedgerWriter(counting)
    gate = hold(counting)

    async def run() -> None:
        queued = [asyncio.ensure_future(writer.append("release", "granted", {"n": n}))
                  for n in range(3)]
        await settle_queue(counting)  # queued, not committed yet
        closing = threading.Thread(target=writer.close)
        closing.start()
        gate.set()
        await asyncio.gather(*queued)
        closing.join(10)
        with pytest.raises(LedgerError, match="closed"):
            await writer.append("release", "granted", {"n": "late"})

    asyncio.run(run())
    assert [entry.details["n"] for entry in counting.ledger.entries()] == [0, 1, 2]


def test_an_observer_failure_does_not_undo_a_commit(counting: CountingLedger) -> None:
    def broken(_event: str, _decision: str, _details: object) -> None:
        raise RuntimeError("metrics are down")

    writer = LedgerWriter(counting, on_written=broken)
    entry = asyncio.run(writer.append("release", "granted", {"n": 1}))
    writer.close()
    assert entry.seq == 1 and len(list(counting.ledger.entries())) == 1


def test_append_prepared_chains_a_batch_in_order(tmp_path: Path) -> None:
    with AuditLedger(tmp_path / "ledger.db") as ledger:
        ledger.append("broker-start", "info", {})
        batch = ledger.append_prepared([("release", "granted", '{"n":1}'),
                                        ("release", "denied", '{"n":2}')])
        assert [(entry.seq, entry.details) for entry in batch] == [(2, {"n": 1}), (3, {"n": 2})]
        assert batch[1].prev_hash == batch[0].hash
        assert ledger.append_prepared([]) == []
        assert ledger.verify().ok
    with AuditLedger(tmp_path / "ledger.db", read_only=True) as reader, \
            pytest.raises(LedgerError, match="read-only"):
        reader.append_prepared([("release", "granted", "{}")])
