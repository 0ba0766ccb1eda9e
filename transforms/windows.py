"""How a window appears in a file name, shared by the output and dead-letter writers.

What it does: ``window_label`` gives ``<start>-<end>`` in UTC (``19700101T000100.000Z``) for an
interval window (fixed or sliding), and an empty label for the global window, so a batch run's
names carry no window and a streaming run's names say which window they hold.
"""

from __future__ import annotations

from apache_beam.transforms.window import BoundedWindow, IntervalWindow
from apache_beam.utils.timestamp import Timestamp

__all__ = ["utc_label", "window_label"]


def utc_label(timestamp: Timestamp) -> str:
    moment = timestamp.to_utc_datetime()
    return moment.strftime("%Y%m%dT%H%M%S.") + f"{moment.microsecond // 1000:03d}Z"


def window_label(window: BoundedWindow | None) -> str:
    """``<start>-<end>`` of an interval window; ``""`` for the global window (or None)."""
    if isinstance(window, IntervalWindow):
        return f"{utc_label(window.start)}-{utc_label(window.end)}"
    return ""
