"""Progress of long commands on stderr: a bar on a terminal, a periodic status line otherwise.

What it does: ``track(label, total=None, unit=...)`` returns a counter that the command's work
loop advances (``update(n)``). When stderr is a terminal it draws a ``tqdm`` bar; when it is
not (a log file, a pipe, CI), it prints at most one line every ``interval`` seconds
(``sealbeam: seal: 120000 records, 40000/s``), so a ten-minute run in a log still shows it is
alive, while a run of a few seconds prints nothing. ``--progress never`` (or
``SEALBEAM_PROGRESS=never``) silences both; ``always`` draws the bar even without a terminal.

What it does not: it never prints content, only counts; it writes nothing to stdout (where
commands put their JSON result or rows).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO, TypeVar

__all__ = ["MODES", "Progress", "configure", "track", "with_heartbeat"]

T = TypeVar("T")

MODES = ("auto", "always", "never")
DEFAULT_INTERVAL_SECONDS = 10.0

_settings: dict[str, object] = {"mode": "auto", "interval": DEFAULT_INTERVAL_SECONDS}


def configure(mode: str = "auto", interval: float = DEFAULT_INTERVAL_SECONDS) -> None:
    """Set the process-wide progress mode (the CLI's ``--progress``)."""
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {', '.join(MODES)}")
    if not interval > 0:
        raise ValueError("progress interval must be positive")
    _settings.update(mode=mode, interval=float(interval))


class Progress:
    """A counter shown as a bar (terminal) or a periodic status line (anything else)."""

    def __init__(self, label: str, *, total: int | None = None, unit: str = "records",
                 stream: TextIO | None = None, mode: str | None = None,
                 interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._label = label
        self._unit = unit
        self._stream = stream if stream is not None else sys.stderr
        self._mode = mode or str(_settings["mode"])
        self._interval = float(interval if interval is not None else _settings["interval"])
        self._clock = clock
        self._started = clock()
        self._last_line = self._started
        self.count = 0
        self._bar = None
        if self._mode == "always" or (self._mode == "auto" and _is_terminal(self._stream)):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=f"sealbeam: {label}", unit=f" {unit}",
                             file=self._stream, ncols=_size(self._stream)[0],
                             nrows=_size(self._stream)[1], leave=True,
                             mininterval=0.2, unit_scale=True)

    def update(self, amount: int = 1) -> None:
        self.count += amount
        if self._bar is not None:
            self._bar.update(amount)
            return
        if self._mode == "never":
            return
        now = self._clock()
        if now - self._last_line >= self._interval:
            self._last_line = now
            self._status_line(now)

    def set_total(self, total: int) -> None:
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def _status_line(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-9)
        rate = self.count / elapsed
        print(f"sealbeam: {self._label}: {self.count} {self._unit}, {rate:.0f}/s, "
              f"{elapsed:.0f}s", file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def track(label: str, *, total: int | None = None, unit: str = "records") -> Progress:
    """A ``Progress`` under the process-wide settings."""
    return Progress(label, total=total, unit=unit)


def _size(stream: TextIO) -> tuple[int, int]:
    """The terminal's (columns, lines); 80 x 24 where it reports none (a fresh
    pseudo-terminal says 0 x 0, and tqdm draws nothing on a terminal of 0 lines)."""
    try:
        size = os.get_terminal_size(stream.fileno())
        columns, lines = size.columns, size.lines
    except (AttributeError, OSError, ValueError):
        columns = lines = 0
    return (columns if columns >= 20 else 80), (lines if lines >= 2 else 24)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def with_heartbeat(label: str, work: Callable[[], T]) -> T:
    """Run ``work`` while the progress of ``label`` counts elapsed seconds.

    For steps that report nothing while they run (a Beam job on a local runner, one KMS
    operation, the demo's stages): the bar or status line shows that the command is alive and
    for how long; the command's own output then gives the counts.
    """
    done = threading.Event()
    with track(label, unit="s") as progress:

        def beat() -> None:
            while not done.wait(1.0):
                progress.update(1)

        thread = threading.Thread(target=beat, name="sealbeam-progress", daemon=True)
        thread.start()
        try:
            return work()
        finally:
            done.set()
            thread.join(2.0)
