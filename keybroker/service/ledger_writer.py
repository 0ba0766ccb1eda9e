"""The event loop's way to the audit ledger: entries committed on one thread, a batch per sync.

Why: a grant must wait until its ledger entry is durable, and that wait (a transaction and
its sync) cannot run on the event loop. Handing each request to a thread pool to wait there
cost more CPU than the release itself (a thread wake-up, a future chained back to the loop,
a condition wait per request). ``LedgerWriter.append`` is awaited on the loop instead: it
checks the entry at once (a LedgerError for bad details goes to that caller only), queues
it, and one writer thread commits everything queued so far in one transaction
(``append_prepared``), then wakes each loop once per batch to settle its futures.

What it keeps: an entry's future is settled only after the transaction holding it
committed, or with the LedgerError that undid it (then every entry of that batch failed, as
in the ledger's own group commit). ``on_written`` (the broker's decision metrics) runs on the
writer thread after a commit, for each entry of it. ``close`` writes what is queued, then
stops the thread; an append after ``close`` is refused.
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
    """Commits entries awaited on event loops from one thread (see module doc)."""

    def __init__(self, ledger: PreparedLedger, on_written: Observer | None = None) -> None:
        self._ledger = ledger
        self._on_written = on_written
        self._changed = threading.Condition()
        self._queue: list[_Queued] = []
        self._closed = False
        self._idle = False  # the writer waits for entries (so an append must wake it)
        self._thread: threading.Thread | None = None

    async def append(self, event: str, decision: str,
                     details: Mapping[str, object]) -> LedgerEntry:
        """The entry, once the transaction holding it committed."""
        details_text = append_details(event, decision, details)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[LedgerEntry] = loop.create_future()
        with self._changed:
            if self._closed:
                raise LedgerError("the ledger writer is closed")
            self._queue.append(_Queued(event, decision, details, details_text, future, loop))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="keybroker-ledger-writer",
                                                daemon=True)
                self._thread.start()
            elif self._idle:
                self._changed.notify()
        return await future

    def close(self) -> None:
        """Write what is queued, then stop the writer thread (idempotent)."""
        with self._changed:
            self._closed = True
            self._changed.notify()
            thread = self._thread
        if thread is not None:
            thread.join(JOIN_TIMEOUT_SECONDS)

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
            self._commit(batch)

    def _commit(self, batch: list[_Queued]) -> None:
        entries: list[LedgerEntry] | None = None
        failure: BaseException | None = None
        try:
            entries = self._ledger.append_prepared(
                [(queued.event, queued.decision, queued.details_text) for queued in batch])
        except LedgerError as error:
            failure = error
        except Exception as error:  # every waiter must hear of it
            failure = LedgerError(f"cannot append to the ledger: {type(error).__name__}")
        if entries is not None and self._on_written is not None:
            for queued in batch:
                try:
                    self._on_written(queued.event, queued.decision, queued.details)
                except Exception as error:  # metrics never undo a commit
                    logger.error("a ledger observer failed: %s", type(error).__name__)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[LedgerEntry],
                                                            LedgerEntry | None]]] = {}
        for index, queued in enumerate(batch):
            by_loop.setdefault(queued.loop, []).append(
                (queued.future, None if entries is None else entries[index]))
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, settled, failure)
            except RuntimeError:
                logger.warning("a ledger write finished after its event loop closed")


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
