"""The event loop's way to the audit ledger: entries committed in batches, one sync per batch.

Why: a grant must wait until its ledger entry is durable. Handing each request to a thread
pool to wait there cost more CPU than the release itself (a thread wake-up, a future chained
back to the loop, a condition wait per request), and a writer thread beside the loop still
paid two thread switches and a fight for the GIL per batch: at 1,000 releases/s spread
evenly over two processes its releases took more CPU and waited longer than with the
commit on the loop (benchmarks/README.md).

What it does: ``LedgerWriter.append`` is awaited on the loop. It checks the entry at once (a
LedgerError for bad details goes to that caller only) and queues it; the batch is committed
with ``append_prepared`` (one transaction, one sync):

- **on the loop** (``ledger.commits_locally``: the SQLite file): in a callback scheduled by
  the first entry of a loop iteration, so every request that reached its ledger write in
  that iteration shares the commit, and the loop blocks only for that one local
  transaction (Redis's ``appendfsync always`` does the same before it answers clients);
- **on a writer thread** (PostgreSQL, a network round trip that must not block the loop):
  the thread commits everything queued so far, then wakes each loop once per batch.

What it keeps: an entry's future is settled only after the transaction holding it
committed, or with the LedgerError that undid it (then every entry of that batch failed, as
in the ledger's own group commit). ``on_written`` (the broker's decision metrics) runs after
a commit, for each entry of it. ``close`` lets queued entries be written, then refuses more.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from keybroker.ledger_rows import LedgerEntry, LedgerError, append_details

__all__ = ["LedgerWriter", "PreparedLedger"]

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_SECONDS = 30.0

Observer = Callable[[str, str, Mapping[str, object]], None]


class PreparedLedger(Protocol):
    @property
    def commits_locally(self) -> bool: ...

    def append_prepared(self, appends: Sequence[tuple[str, str, str]]) -> list[LedgerEntry]: ...


class _Queued:
    __slots__ = ("decision", "details", "details_text", "event", "future", "loop")

    def __init__(self, event: str, decision: str, details: Mapping[str, object],
                 details_text: str, future: asyncio.Future[LedgerEntry],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.event = event
        self.decision = decision
        self.details = details
        self.details_text = details_text
        self.future = future
        self.loop = loop


class LedgerWriter:
    """Commits entries awaited on event loops, a batch per transaction (see module doc)."""

    def __init__(self, ledger: PreparedLedger, on_written: Observer | None = None) -> None:
        self._ledger = ledger
        self._on_written = on_written
        self._on_loop = ledger.commits_locally
        self._changed = threading.Condition()
        self._queue: list[_Queued] = []  # the writer thread's
        self._batches: dict[asyncio.AbstractEventLoop, list[_Queued]] = {}  # each loop's
        self._closed = False
        self._idle = False  # the writer thread waits for entries (so an append must wake it)
        self._thread: threading.Thread | None = None

    async def append(self, event: str, decision: str,
                     details: Mapping[str, object]) -> LedgerEntry:
        """The entry, once the transaction holding it committed."""
        details_text = append_details(event, decision, details)
        if self._closed:
            raise LedgerError("the ledger writer is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[LedgerEntry] = loop.create_future()
        queued = _Queued(event, decision, details, details_text, future, loop)
        if self._on_loop:
            batch = self._batches.get(loop)
            if batch is None:
                self._batches[loop] = [queued]
                loop.call_soon(self._commit_on_loop, loop)
            else:
                batch.append(queued)
        else:
            self._hand_to_thread(queued)
        return await future

    def close(self) -> None:
        """Refuse new entries; the writer thread writes what is queued, then stops."""
        with self._changed:
            self._closed = True
            self._changed.notify()
            thread = self._thread
        if thread is not None:
            thread.join(JOIN_TIMEOUT_SECONDS)

    # -- on the loop -------------------------------------------------------------------------

    def _commit_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._batches.pop(loop, [])
        entries, failure = self._commit(batch)
        _settle([(queued.future, None if entries is None else entries[index])
                 for index, queued in enumerate(batch)], failure)

    # -- on the writer thread ----------------------------------------------------------------

    def _hand_to_thread(self, queued: _Queued) -> None:
        with self._changed:
            if self._closed:
                raise LedgerError("the ledger writer is closed")
            self._queue.append(queued)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="keybroker-ledger-writer",
                                                daemon=True)
                self._thread.start()
            elif self._idle:
                self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closed:
                    self._idle = True
                    self._changed.wait()
                    self._idle = False
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            entries, failure = self._commit(batch)
            by_loop: dict[asyncio.AbstractEventLoop,
                          list[tuple[asyncio.Future[LedgerEntry], LedgerEntry | None]]] = {}
            for index, queued in enumerate(batch):
                by_loop.setdefault(queued.loop, []).append(
                    (queued.future, None if entries is None else entries[index]))
            for loop, settled in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_settle, settled, failure)
                except RuntimeError:
                    logger.warning("a ledger write finished after its event loop closed")

    # -- both --------------------------------------------------------------------------------

    def _commit(self, batch: list[_Queued]) -> tuple[list[LedgerEntry] | None,
                                                      BaseException | None]:
        """The batch's entries, or the LedgerError every entry of it gets."""
        try:
            entries = self._ledger.append_prepared(
                [(queued.event, queued.decision, queued.details_text) for queued in batch])
        except LedgerError as error:
            return None, error
        except Exception as error:  # every waiter must hear of it
            return None, LedgerError(f"cannot append to the ledger: {type(error).__name__}")
        if self._on_written is not None:
            for queued in batch:
                try:
                    self._on_written(queued.event, queued.decision, queued.details)
                except Exception as error:  # metrics never undo a commit
                    logger.error("a ledger observer failed: %s", type(error).__name__)
        return entries, None


def _settle(settled: list[tuple[asyncio.Future[LedgerEntry], LedgerEntry | None]],
            failure: BaseException | None) -> None:
    for future, entry in settled:
        if future.done():  # the awaiting request was cancelled; the entry stands
            continue
        if failure is not None:
            future.set_exception(failure)
        else:
            assert entry is not None
            future.set_result(entry)
