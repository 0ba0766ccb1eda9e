"""The kept PostgreSQL connection the broker's stores share: replaced when dropped, refused
after close, and errors that never carry the connection string."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from keybroker.postgres_connection import (
    CONNECT_TIMEOUT_SECONDS,
    KeptConnection,
    import_psycopg,
    server_reason,
)


class _Connection:
    def __init__(self) -> None:
        self.broken = False
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Psycopg:
    """Records every connect; each gives a new connection."""

    def __init__(self) -> None:
        self.made: list[_Connection] = []
        self.calls: list[tuple[str, dict[str, object]]] = []

    def connect(self, url: str, **options: object) -> _Connection:
        self.calls.append((url, options))
        self.made.append(_Connection())
        return self.made[-1]


class _Closed(Exception):
    pass


def test_a_dropped_connection_is_replaced_and_a_live_one_kept() -> None:
    psycopg = _Psycopg()
    kept = KeptConnection(psycopg, "postgresql://broker@db/ledger", _Closed)
    first = kept.live()
    assert kept.live() is first and len(psycopg.made) == 1
    first.broken = True  # the server went away
    second = kept.live()
    assert second is not first and first.closed and len(psycopg.made) == 2
    second.closed = True
    assert kept.live() is psycopg.made[2]
    assert all(options == {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_SECONDS}
               for _, options in psycopg.calls)


def test_after_close_the_callers_error_and_no_reconnect() -> None:
    psycopg = _Psycopg()
    kept = KeptConnection(psycopg, "postgresql://broker@db/ledger", _Closed)
    kept.close()
    assert psycopg.made[0].closed
    with pytest.raises(_Closed):
        kept.live()
    assert len(psycopg.made) == 1


def test_the_reason_is_the_servers_message_never_the_connection_string() -> None:
    class OperationalError(Exception):
        pass

    with_diag = OperationalError("connection to postgresql://u:secret@db failed")
    with_diag.diag = SimpleNamespace(message_primary="relation does not exist")  # type: ignore[attr-defined]
    assert server_reason(with_diag) == "relation does not exist"
    bare = OperationalError("postgresql://u:secret@db: could not connect")
    assert server_reason(bare) == "OperationalError"


def test_without_psycopg_the_callers_error_names_the_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    with pytest.raises(_Closed, match=r"the PostgreSQL thing needs psycopg: .*\[postgres\]"):
        import_psycopg(_Closed, "the PostgreSQL thing")
