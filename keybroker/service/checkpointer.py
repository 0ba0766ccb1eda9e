"""Writes the broker's signed ledger checkpoints: at an interval while it runs, and at shutdown.

What it does: a daemon thread wakes every ``interval`` seconds and, when the ledger's head
moved since the last checkpoint, appends a checkpoint signed by the broker's identity key
(``keybroker.checkpoints``) as one JSON line to the checkpoints file, flushed and fsynced.
``close()`` stops the thread and writes a last checkpoint (reason ``shutdown``). ``current``
signs the head as it is now, for ``GET /v1/ledger/head``, without writing anything (so an
unauthenticated caller cannot grow the file).

Several broker processes on one state (``broker serve --workers N``) share one checkpoints
file: a write holds an exclusive ``flock`` on the file while it reads the ledger head and
appends, so the file's checkpoints never go backwards, and a head the file's last line
already states is not written again by another process.

What it does not: it does not verify the ledger, and a failure to write a checkpoint is
logged, never raised into a key release: checkpoints anchor the ledger, the ledger itself
is what fails closed.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from keybroker.checkpoints import sign_checkpoint
from keybroker.identity import BrokerIdentity

__all__ = ["Checkpointer"]

logger = logging.getLogger("keybroker.checkpoints")


class _Ledger(Protocol):
    def head(self) -> tuple[int, str]: ...

    def first_hash(self) -> str: ...


class Checkpointer:
    """Signs and files checkpoints of one ledger's head. Thread-safe."""

    def __init__(
        self,
        ledger: _Ledger,
        identity: BrokerIdentity,
        path: Path,
        interval: float,
        clock: Callable[[], float],
    ) -> None:
        self._ledger = ledger
        self._identity = identity
        self._path = Path(path)
        self._interval = float(interval)
        self._clock = clock
        self._lock = threading.Lock()
        self._last_written: tuple[int, str] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="keybroker-checkpoints", daemon=True
            )
            self._thread.start()

    def current(self, reason: str = "request") -> dict[str, Any]:
        """A checkpoint of the head as it is now (signed, not written)."""
        entries, head = self._ledger.head()
        first = self._ledger.first_hash()
        return sign_checkpoint(self._identity, entries, head, first, self._clock(), reason)

    def write(self, reason: str) -> dict[str, Any] | None:
        """Append a checkpoint to the file when the head moved; return it (None: unchanged)."""
        with self._lock:
            if self._last_written == self._ledger.head():
                return None
            self._path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(
                self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)  # other broker processes wait here
                entries, head = self._ledger.head()  # read under the lock: never backwards
                if _last_head(descriptor) == (entries, head):
                    self._last_written = (entries, head)
                    return None
                envelope = sign_checkpoint(
                    self._identity, entries, head, self._ledger.first_hash(), self._clock(),
                    reason,
                )
                line = json.dumps(envelope, sort_keys=True, separators=(",", ":")) + "\n"
                os.write(descriptor, line.encode("ascii"))
                os.fsync(descriptor)
            finally:
                os.close(descriptor)  # releases the lock
            self._last_written = (entries, head)
            return envelope

    def close(self) -> None:
        """Stop the interval thread and write the shutdown checkpoint."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._interval + 5)
        self._write_logged("shutdown")

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._write_logged("interval")

    def _write_logged(self, reason: str) -> None:
        try:
            self.write(reason)
        except Exception as error:  # a checkpoint must never take a release down with it
            logger.error("could not write a %s ledger checkpoint: %s", reason, error)


_TAIL_BYTES = 16 * 1024


def _last_head(descriptor: int) -> tuple[int, str] | None:
    """(entries, head) the file's last checkpoint states; None when unreadable or empty.

    Only to skip a duplicate: the file is this broker's own, so nothing here is trusted to
    verify anything (``sealbeam audit verify --anchor`` checks signatures).
    """
    size = os.fstat(descriptor).st_size
    if size == 0:
        return None
    tail = os.pread(descriptor, min(size, _TAIL_BYTES), max(0, size - _TAIL_BYTES))
    lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
    try:
        envelope = json.loads(lines[-1])
        document = json.loads(base64.b64decode(envelope["payload"], validate=True))
        return int(document["entries"]), str(document["head"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
