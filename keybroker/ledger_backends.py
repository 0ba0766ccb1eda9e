"""Opens the audit ledger a broker's settings name: SQLite by default, PostgreSQL when shared.

What it does: ``open_ledger(settings)`` returns the ``AuditLedger`` at ``settings.ledger_path``
(the embedded default) or, when ``settings.ledger_url`` is a ``postgresql://`` URL, the
``PostgresLedger`` that several broker replicas share; ``open_ledger_for_audit`` opens
either read-only for ``sealbeam audit verify``. Both have the same methods (append,
entries, head, first_hash, verify, close). What it does not: it creates no database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from keybroker.ledger import AuditLedger, LedgerError

if TYPE_CHECKING:
    from keybroker.config import BrokerSettings
    from keybroker.ledger_postgres import PostgresLedger

__all__ = ["open_ledger", "open_ledger_for_audit"]



def open_ledger(
    settings: BrokerSettings, *, clock: Callable[[], float] = time.time
) -> AuditLedger | PostgresLedger:
    """The ledger the broker of ``settings`` appends to."""
    if settings.ledger_url:
        from keybroker.ledger_postgres import PostgresLedger

        return PostgresLedger(settings.ledger_url, clock=clock)
    return AuditLedger(settings.ledger_path, clock=clock)


def open_ledger_for_audit(path: Path | None, url: str | None) -> AuditLedger | PostgresLedger:
    """A ledger opened read-only: the SQLite file at ``path`` or the PostgreSQL ``url``."""
    if url:
        from keybroker.ledger_postgres import PostgresLedger

        return PostgresLedger(url, read_only=True)
    if path is None:
        raise LedgerError("no ledger given")
    return AuditLedger(path, read_only=True)
