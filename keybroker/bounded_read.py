"""Read a small file whole, but never more than a limit: a larger one is a typed error.

Settings, policies, anchors, trust roots and identities are small files an operator
names; reading one unbounded would let a wrong path (a log, a device) take the memory of
the process. Each caller passes its own error type and its own wording, so the messages
it has always given stay the same.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["read_bounded"]


def read_bounded(
    path: Path | str,
    limit: int,
    error: type[Exception],
    *,
    cannot_read: str,
    too_large: str,
) -> bytes:
    """The bytes of ``path`` when it holds at most ``limit`` of them.

    Raises ``error(f"{cannot_read}: <reason>")`` when the file cannot be opened or read,
    and ``error(too_large)`` when it holds more than ``limit`` bytes (only ``limit + 1``
    are ever read).
    """
    try:
        with Path(path).open("rb") as handle:
            content = handle.read(limit + 1)
    except OSError as reason:
        raise error(f"{cannot_read}: {reason.strerror}") from None
    if len(content) > limit:
        raise error(too_large)
    return content
