"""The PostgreSQL ledger: two brokers on one database append to one chain, with no fork.

A real throwaway PostgreSQL cluster (tests/support/postgres.py) and two real brokers on
loopback, both with ``ledger_url`` pointing at it and sharing one identity key, as replicas
behind one address would. Workers attest and ask for keys from both at once; afterwards the
chain verifies, holds every grant of both brokers in one sequence, and ``sealbeam audit
verify --ledger-url`` agrees, also against the brokers' signed checkpoints.
"""

from __future__ import annotations

import argparse
import threading
from collections import Counter
from pathlib import Path

import pytest

from keybroker.client import BrokerClient
from keybroker.grants import session_handle
from keybroker.identity import IDENTITY_KEY_FILE, IDENTITY_PUBLIC_KEY_FILE, BrokerPublicKey
from keybroker.ledger import LedgerError
from keybroker.ledger_postgres import PostgresLedger
from pipelines.commands import audit
from tests.support.broker import attest_simulated_worker, start_broker
from tests.support.postgres import postgres_url  # noqa: F401  (a fixture)

psycopg = pytest.importorskip("psycopg", reason="the postgres extra (make test installs it)")

GENERATES_PER_WORKER = 6
WORKERS_PER_BROKER = 2


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="sealbeam")
    audit.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_append_and_verify_in_postgres(postgres_url: str) -> None:  # noqa: F811
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE SCHEMA IF NOT EXISTS one")
    with PostgresLedger(postgres_url + "?options=-csearch_path%3Done") as ledger:
        first = ledger.append("attest", "granted", {"n": 1})
        second = ledger.append("release", "denied", {"n": 2})
        assert second.prev_hash == first.hash and ledger.head() == (2, second.hash)
        assert ledger.first_hash() == first.hash
        assert ledger.verify().ok
        with psycopg.connect(postgres_url, autocommit=True) as admin:   # a server-side drop
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'")
        with pytest.raises(LedgerError):
            ledger.append("release", "granted", {"n": 3})   # the drop is noticed here...
        third = ledger.append("release", "granted", {"n": 3})   # ...and the next one reconnects
        assert third.seq == 3 and ledger.verify().ok
        batch = ledger.append_prepared([("release", "granted", '{"n":4}'),
                                        ("release", "denied", '{"n":5}')])  # one transaction
        assert [(entry.seq, entry.details) for entry in batch] == [(4, {"n": 4}), (5, {"n": 5})]
        assert batch[0].prev_hash == third.hash and ledger.verify().ok
    with psycopg.connect(postgres_url + "?options=-csearch_path%3Done") as connection:
        with pytest.raises(psycopg.Error, match="append-only"):
            connection.execute("DELETE FROM sealbeam_ledger")
        connection.rollback()
        assert connection.execute("SELECT count(*) FROM sealbeam_ledger").fetchone() == (5,)
    with pytest.raises(LedgerError):
        PostgresLedger("postgresql://nobody@127.0.0.1:1/none", read_only=True)


def test_two_brokers_share_one_chain_without_a_fork(
    postgres_url: str, tmp_path: Path  # noqa: F811
) -> None:
    state_a, state_b = tmp_path / "a", tmp_path / "b"
    shared = {"ledger_url": postgres_url}
    errors: list[BaseException] = []
    sessions: list[str] = []
    lock = threading.Lock()
    with start_broker(state_a, settings_changes=shared) as broker_a:
        replica = {**shared, "identity_key_path": state_a / IDENTITY_KEY_FILE}
        with start_broker(state_b, settings_changes=replica) as broker_b:
            key = BrokerPublicKey.load(state_a / IDENTITY_PUBLIC_KEY_FILE)

            def worker(url: str, settings: object) -> None:
                try:
                    with BrokerClient(url, broker_identity=key) as client:
                        _keys, session = attest_simulated_worker(client, settings)  # type: ignore[arg-type]
                        with lock:
                            sessions.append(session_handle(session.id))
                        for _ in range(GENERATES_PER_WORKER):
                            client.generate(session, "eu", "acme")
                except BaseException as error:  # reported by the main thread
                    errors.append(error)

            threads = [
                threading.Thread(target=worker, args=(broker.url, broker.settings))
                for broker in (broker_a, broker_b)
                for _ in range(WORKERS_PER_BROKER)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
    assert not errors, errors

    with PostgresLedger(postgres_url, read_only=True) as ledger:
        result = ledger.verify()
        entries = list(ledger.entries())
    assert result.ok, result.summary()
    assert [entry.seq for entry in entries] == list(range(1, len(entries) + 1))
    events = Counter((entry.event, entry.decision) for entry in entries)
    workers = 2 * WORKERS_PER_BROKER
    assert events[("broker-start", "info")] == 2
    assert events[("attest", "granted")] == workers
    assert events[("generate", "granted")] == workers * GENERATES_PER_WORKER
    by_session = Counter(
        entry.details["session"] for entry in entries if entry.event == "generate"
    )
    assert by_session == dict.fromkeys(sessions, GENERATES_PER_WORKER)

    # Both brokers' checkpoints (the same identity) anchor the one shared chain.
    for state in (state_a, state_b):
        code = run_cli("audit", "verify", "--ledger-url", postgres_url,
                       "--anchor", str(state / "ledger-checkpoints.jsonl"),
                       "--broker-key", str(state_a / IDENTITY_PUBLIC_KEY_FILE))
        assert code == 0
