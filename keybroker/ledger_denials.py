"""How denials reach the audit ledger: never dropped, truncated to a cap, aggregated when anonymous.

``fit_details`` shrinks a details mapping until its canonical JSON fits a byte cap: the
longest strings are cut first (marked with an ellipsis), and the result carries
``truncated: true`` and ``original_bytes``; if cutting strings is not enough (too many
keys), only the status, error and a cut reason are kept, with the names of the dropped
fields. So an over-long denial is still a row, and a probe cannot hide behind its size.

``DenialAggregator`` bounds what callers without credentials can make the broker write:
per interval and source address, the first ``in_full`` denials get a row each and the rest
are counted; when the interval ends one ``denials-summary`` row per source records the
count by event and error code, the first and last time, and one sample reason. At most
``max_sources`` sources are tracked per interval; the rest are only counted, under ``other``
(so an interval writes at most ``max_sources * in_full`` rows plus the summaries).
A background thread (``start``) flushes due intervals; ``close`` flushes everything.

This module decides nothing about which denial is anonymous: the service says so.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["SUMMARY_EVENT", "DenialAggregator", "canonical_size", "fit_details"]

SUMMARY_EVENT = "denials-summary"
OTHER_SOURCES = "other"
_ELLIPSIS = "…"
_KEPT_WHEN_DROPPING = ("status", "error", "reason", "session", "tee", "source")

logger = logging.getLogger("keybroker.ledger_denials")

Append = Callable[[str, str, Mapping[str, object]], object]


def canonical_size(details: Mapping[str, object]) -> int:
    """Bytes of the canonical JSON the ledger stores (sorted keys, ASCII escapes)."""
    return len(
        json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                   allow_nan=False, default=_refuse)
    )


def _refuse(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not plain JSON")


def _cut_strings(value: object, limit: int) -> object:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + _ELLIPSIS
    if isinstance(value, Mapping):
        return {key: _cut_strings(item, limit) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_cut_strings(item, limit) for item in value]
    return value


def fit_details(details: Mapping[str, object], cap: int) -> dict[str, object]:
    """``details`` unchanged if its canonical JSON fits ``cap`` bytes, else a marked cut."""
    size = canonical_size(details)
    if size <= cap:
        return dict(details)
    marker: dict[str, object] = {"truncated": True, "original_bytes": size}
    longest = max(_string_lengths(details), default=0)
    low, high, best = 0, longest, None
    while low <= high:  # the largest string length that still fits
        middle = (low + high) // 2
        candidate = {**_cut_strings(details, middle), **marker}  # type: ignore[dict-item]
        if canonical_size(candidate) <= cap:
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    if best is not None and low > 16:
        return best
    kept = {key: details[key] for key in _KEPT_WHEN_DROPPING if key in details}
    dropped = sorted(str(key) for key in details if key not in kept)
    minimal: dict[str, object] = {**marker, "dropped_fields": dropped[:32]}
    for limit in (1024, 256, 64, 16):
        candidate = {**_cut_strings(kept, limit), **minimal}  # type: ignore[dict-item]
        if canonical_size(candidate) <= cap:
            return candidate
    return {**marker, "dropped_fields": ["*"]}


def _string_lengths(value: object) -> list[int]:
    if isinstance(value, str):
        return [len(value)]
    if isinstance(value, Mapping):
        lengths: list[int] = []
        for item in value.values():
            lengths.extend(_string_lengths(item))
        return lengths
    if isinstance(value, list | tuple):
        return [length for item in value for length in _string_lengths(item)]
    return []


@dataclass
class _SourceTally:
    first: float
    last: float
    count: int = 0
    written: int = 0
    by_event: dict[str, int] = field(default_factory=dict)
    by_error: dict[str, int] = field(default_factory=dict)
    sample_reason: str = ""


class DenialAggregator:
    """Per interval and source: ``in_full`` rows, then counting into one summary row."""

    def __init__(
        self,
        append: Append,
        *,
        interval_seconds: float,
        in_full: int,
        max_sources: int,
        details_cap: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._append = append
        self._interval = interval_seconds
        self._in_full = in_full
        self._max_sources = max_sources
        self._cap = details_cap
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._tallies: dict[str, _SourceTally] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, event: str, source: str, details: Mapping[str, object]) -> None:
        """Write this anonymous denial in full, or count it for the interval's summary."""
        self.flush_due()
        now = self._clock()
        with self._lock:
            key = source if source in self._tallies or len(self._tallies) < self._max_sources \
                else OTHER_SOURCES
            tally = self._tallies.get(key)
            if tally is None:
                tally = self._tallies[key] = _SourceTally(first=now, last=now)
            tally.last = now
            write_in_full = key != OTHER_SOURCES and tally.written < self._in_full
            if write_in_full:
                tally.written += 1
            else:
                tally.count += 1
                tally.by_event[event] = tally.by_event.get(event, 0) + 1
                error = str(details.get("error", "unknown"))[:64]
                tally.by_error[error] = tally.by_error.get(error, 0) + 1
                if not tally.sample_reason:
                    tally.sample_reason = str(details.get("reason", ""))[:256]
        if write_in_full:
            self._append(event, "denied", fit_details({**details, "source": source}, self._cap))

    def flush_due(self) -> None:
        """Write the summaries of an interval that has ended."""
        if self._clock() - self._window_start >= self._interval:
            self.flush()

    def flush(self) -> None:
        """Write a summary row for every source with counted denials; start a new interval."""
        with self._lock:
            tallies, self._tallies = self._tallies, {}
            start, self._window_start = self._window_start, self._clock()
        for source, tally in sorted(tallies.items()):
            if tally.count == 0:
                continue
            summary = {
                "source": source,
                "count": tally.count,
                "in_full": tally.written,
                "by_event": dict(sorted(tally.by_event.items())),
                "by_error": dict(sorted(tally.by_error.items())),
                "first": tally.first,
                "last": tally.last,
                "interval_start": start,
                "interval_seconds": self._interval,
                "sample_reason": tally.sample_reason,
            }
            try:
                self._append(SUMMARY_EVENT, "denied", fit_details(summary, self._cap))
            except Exception as error:  # the ledger is down; keep the counts for next time
                logger.error("could not write a denial summary: %s", type(error).__name__)
                self._restore(source, tally)

    def _restore(self, source: str, tally: _SourceTally) -> None:
        with self._lock:
            current = self._tallies.get(source)
            if current is None:
                self._tallies[source] = tally
                return
            current.count += tally.count
            current.first = min(current.first, tally.first)
            for event, count in tally.by_event.items():
                current.by_event[event] = current.by_event.get(event, 0) + count
            for error, count in tally.by_error.items():
                current.by_error[error] = current.by_error.get(error, 0) + count

    def start(self) -> None:
        """Flush due intervals from a daemon thread until ``close``."""
        if self._thread is not None:
            return
        period = min(max(self._interval / 4, 0.05), 1.0)

        def run() -> None:
            while not self._stop.wait(period):
                try:
                    self.flush_due()
                except Exception as error:  # never let the flusher die silently
                    logger.error("denial summary flush failed: %s", type(error).__name__)

        self._thread = threading.Thread(target=run, name="keybroker-denials", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the flusher and write whatever is counted."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        self.flush()
