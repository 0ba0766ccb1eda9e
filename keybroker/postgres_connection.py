"""One kept PostgreSQL connection, replaced when the server drops it: what the broker's
PostgreSQL stores (the ledger, the spent-nonce set) share.

Why: each store holds one autocommit connection behind its own lock, notices a dropped
connection at the call that fails, and reconnects on the next call, so a server restart or
failover costs one failed call, not a broker restart. Neither keeps a password (libpq finds
it: PGPASSWORD, ~/.pgpass, a service file) nor lets the connection string, which may hold
one, into an error message (``server_reason``).

What it does not: no pooling, no retries, no locking (each store serializes its calls).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["CONNECT_TIMEOUT_SECONDS", "KeptConnection", "import_psycopg", "server_reason"]

CONNECT_TIMEOUT_SECONDS = 10


def import_psycopg(error: Callable[[str], Exception], what: str) -> Any:
    """psycopg 3, or ``error`` saying that ``what`` needs the ``postgres`` extra."""
    try:
        import psycopg
    except ImportError:
        raise error(f"{what} needs psycopg: pip install 'sealbeam[postgres]'") from None
    return psycopg


class KeptConnection:
    """An autocommit connection to ``url``; ``live()`` replaces one the server dropped.

    ``closed_error`` is what ``live()`` raises after ``close()``. Connecting raises
    ``psycopg.Error`` as psycopg does; the caller turns it into its own error.
    """

    def __init__(self, psycopg: Any, url: str, closed_error: Callable[[], Exception]) -> None:
        self._connect = lambda: psycopg.connect(
            url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
        self._closed_error = closed_error
        self._closed = False
        self._connection = self._connect()

    def live(self) -> Any:
        """The connection, a new one when the old was dropped (restart, failover)."""
        if self._closed:
            raise self._closed_error()
        if self._connection.broken or self._connection.closed:
            self._connection.close()
            self._connection = self._connect()
        return self._connection

    def close(self) -> None:
        self._closed = True
        self._connection.close()


def server_reason(error: Exception) -> str:
    """The server's message without the connection string (which may name a password)."""
    diag = getattr(error, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return primary or type(error).__name__
