"""The spent-nonce set in PostgreSQL: one set for every broker host sharing a ``ledger_url``.

A real throwaway PostgreSQL cluster (tests/support/postgres.py), a schema per test. Two
``PostgresSpentNonces`` objects stand for two hosts (separate connections, one table).
The end-to-end test runs two real brokers on loopback that share the PostgreSQL ledger and
the challenge and session keys: a nonce spent at one is refused at the other (before this
set, each host kept its own SQLite set and the replay opened a second session).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider
from envelope.transport import report_data_binding
from keybroker.client import BrokerAuthError, BrokerClient
from keybroker.identity import IDENTITY_PUBLIC_KEY_FILE, BrokerPublicKey
from keybroker.service.sessions import (
    CHALLENGE_KEY_FILE,
    SESSION_KEY_FILE,
    CapacityError,
    NonceAlreadySpent,
    NonceStoreError,
)
from keybroker.service.spent_nonces_postgres import PRUNE_GRACE_SECONDS, PostgresSpentNonces
from tests.support.broker import attest_simulated_worker, start_broker
from tests.support.postgres import postgres_url  # noqa: F401  (a fixture)

psycopg = pytest.importorskip("psycopg", reason="the postgres extra (make test installs it)")

JOIN_TIMEOUT_SECONDS = 60


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def schema_url(postgres_url: str, schema: str) -> str:  # noqa: F811
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    return f"{postgres_url}?options=-csearch_path%3D{schema}"


def rows(url: str) -> list[tuple[bytes, float]]:
    with psycopg.connect(url, autocommit=True) as connection:
        return [
            (bytes(nonce), float(expires))
            for nonce, expires in connection.execute(
                "SELECT nonce, expires_at FROM sealbeam_spent_nonces ORDER BY nonce"
            ).fetchall()
        ]


def test_a_nonce_is_spent_once_across_hosts(postgres_url: str) -> None:  # noqa: F811
    url = schema_url(postgres_url, "once")
    clock = Clock()
    host_a = PostgresSpentNonces(url, 10, clock)
    host_b = PostgresSpentNonces(url, 10, clock)
    try:
        assert not host_a.is_spent(b"n1") and not host_b.is_spent(b"n1")
        host_a.spend(b"n1", 1030.0)
        assert host_a.is_spent(b"n1") and host_b.is_spent(b"n1")
        with pytest.raises(NonceAlreadySpent):
            host_a.spend(b"n1", 1030.0)
        with pytest.raises(NonceAlreadySpent):
            host_b.spend(b"n1", 1030.0)
        host_b.spend(b"n2", 1030.0)
        assert len(host_a) == len(host_b) == 2
        assert rows(url) == [(b"n1", 1030.0), (b"n2", 1030.0)]
    finally:
        host_a.close()
        host_b.close()
    with pytest.raises(NonceStoreError, match="closed"):
        host_a.is_spent(b"n1")


def test_concurrent_spends_of_one_nonce_on_two_hosts_let_exactly_one_win(
    postgres_url: str,  # noqa: F811
) -> None:
    url = schema_url(postgres_url, "race")
    clock = Clock()
    hosts = [PostgresSpentNonces(url, 1000, clock) for _ in range(2)]
    threads_per_host, rounds = 4, 10
    outcomes: dict[bytes, list[str]] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(threads_per_host * len(hosts), timeout=JOIN_TIMEOUT_SECONDS)

    def spender(host: PostgresSpentNonces) -> None:
        for round_ in range(rounds):
            nonce = b"race-%d" % round_
            barrier.wait()
            try:
                host.spend(nonce, 1030.0)
                outcome = "won"
            except NonceAlreadySpent:
                outcome = "refused"
            except Exception as error:  # reported below
                outcome = repr(error)
            with lock:
                outcomes.setdefault(nonce, []).append(outcome)

    threads = [
        threading.Thread(target=spender, args=(host,))
        for host in hosts for _ in range(threads_per_host)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(JOIN_TIMEOUT_SECONDS)
        assert not any(thread.is_alive() for thread in threads)
    finally:
        for host in hosts:
            host.close()
    assert len(outcomes) == rounds
    for nonce, results in outcomes.items():
        assert sorted(results) == ["refused"] * (len(threads) - 1) + ["won"], (nonce, results)
    assert len(rows(url)) == rounds


def test_expired_nonces_are_forgotten_and_pruned_at_most_once_a_second(
    postgres_url: str,  # noqa: F811
) -> None:
    url = schema_url(postgres_url, "expiry")
    clock = Clock()
    store = PostgresSpentNonces(url, 10, clock)
    try:
        store.spend(b"old", 1010.0)
        clock.now = 1010.0
        assert not store.is_spent(b"old") and len(store) == 0  # expired: not spent any more
        clock.now = 1010.0 + PRUNE_GRACE_SECONDS - 0.5
        store.spend(b"a", 2000.0)  # a prune, but "old" is kept for hosts whose clock lags
        assert [nonce for nonce, _ in rows(url)] == [b"a", b"old"]
        clock.now = 1010.0 + PRUNE_GRACE_SECONDS + 0.25
        store.spend(b"b", 2000.0)  # less than a second since the last prune: none
        assert [nonce for nonce, _ in rows(url)] == [b"a", b"b", b"old"]
        clock.now = 1010.0 + PRUNE_GRACE_SECONDS + 0.5
        store.spend(b"c", 2000.0)  # a second later: pruned
        assert [nonce for nonce, _ in rows(url)] == [b"a", b"b", b"c"]
        assert len(store) == 3 and store.is_spent(b"a")
    finally:
        store.close()


def test_the_set_is_bounded_by_the_live_nonces_of_every_host(
    postgres_url: str,  # noqa: F811
) -> None:
    url = schema_url(postgres_url, "bounded")
    clock = Clock()
    host_a = PostgresSpentNonces(url, 3, clock)
    host_b = PostgresSpentNonces(url, 3, clock)
    try:
        host_a.spend(b"1", 1010.0)
        host_b.spend(b"2", 1010.0)
        host_a.spend(b"3", 1010.0)
        with pytest.raises(CapacityError):
            host_a.spend(b"4", 1010.0)  # never forget a live nonce: that allows replay
        with pytest.raises(CapacityError):
            host_b.spend(b"4", 1010.0)  # host_b counts host_a's spends too
        assert not host_a.is_spent(b"4")
        clock.now = 1010.0
        host_b.spend(b"4", 1020.0)  # the three expired: room again
        assert len(host_a) == 1
    finally:
        host_a.close()
        host_b.close()


def test_a_dropped_connection_fails_closed_then_reconnects(
    postgres_url: str,  # noqa: F811
) -> None:
    url = schema_url(postgres_url, "dropped")
    clock = Clock()
    store = PostgresSpentNonces(url, 10, clock)
    try:
        store.spend(b"kept", 1030.0)
        with psycopg.connect(postgres_url, autocommit=True) as admin:  # a server-side drop
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'")
        with pytest.raises(NonceStoreError):
            store.spend(b"new", 1030.0)  # the drop is noticed here, nothing recorded...
        store.spend(b"new", 1030.0)  # ...and the next call reconnects
        assert store.is_spent(b"kept") and store.is_spent(b"new")
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("DROP TABLE sealbeam_spent_nonces")  # the set is gone
        with pytest.raises(NonceStoreError):
            store.spend(b"other", 1030.0)
        with pytest.raises(NonceStoreError):
            store.is_spent(b"kept")
        with pytest.raises(NonceStoreError):
            len(store)
    finally:
        store.close()
    with pytest.raises(NonceStoreError):
        PostgresSpentNonces("postgresql://nobody@127.0.0.1:1/none", 10, clock)


def test_a_nonce_spent_at_one_broker_is_refused_at_another_sharing_the_ledger(
    postgres_url: str, tmp_path: Path  # noqa: F811
) -> None:
    state_a, state_b = tmp_path / "a", tmp_path / "b"
    shared = {"ledger_url": schema_url(postgres_url, "brokers")}
    with start_broker(state_a, settings_changes=shared) as broker_a:
        state_b.mkdir(mode=0o700)
        for name in (CHALLENGE_KEY_FILE, SESSION_KEY_FILE):  # replicas share these secrets
            shutil.copy2(state_a / name, state_b / name)
        replica = {**shared, "dev_chain_dir": broker_a.settings.dev_chain_dir}  # same "AMD"
        with start_broker(state_b, settings_changes=replica) as broker_b:
            client_a = BrokerClient(
                broker_a.url,
                broker_identity=BrokerPublicKey.load(state_a / IDENTITY_PUBLIC_KEY_FILE))
            client_b = BrokerClient(
                broker_b.url,
                broker_identity=BrokerPublicKey.load(state_b / IDENTITY_PUBLIC_KEY_FILE))
            with client_a, client_b:
                assert broker_a.settings.dev_chain_dir is not None
                provider = SimulatedSnpProvider(broker_a.settings.dev_chain_dir)
                tee_key = attest_simulated_worker(client_a, broker_a.settings)[0]

                # B accepts A's challenges (same challenge.key): one spent at neither works.
                fresh = client_a.challenge()
                evidence = provider.collect(report_data_binding(fresh, tee_key.public_bytes()))
                client_b.attest(fresh, evidence.tee, evidence.evidence,
                                dict(evidence.endorsements), tee_key.public_bytes())

                nonce = client_a.challenge()
                evidence = provider.collect(report_data_binding(nonce, tee_key.public_bytes()))
                attest = (nonce, evidence.tee, evidence.evidence, dict(evidence.endorsements),
                          tee_key.public_bytes())
                client_a.attest(*attest)
                with pytest.raises(BrokerAuthError) as refused:
                    client_b.attest(*attest)  # the replay at another host
                assert (refused.value.status, refused.value.error) == (401, "bad_nonce")
                with pytest.raises(BrokerAuthError) as again:
                    client_a.attest(*attest)
                assert (again.value.status, again.value.error) == (401, "bad_nonce")
