"""KeySession under threads, against a real broker: no lock across calls, single flight,
re-attestation ahead of expiry without stopping, close."""

from __future__ import annotations

import threading
import time
from typing import Any

from enclave_workers.key_session import REFRESH_FRACTION, KeySession
from keybroker.client import BrokerClient
from tests.enclave_workers.broker_env import BrokerEnv
from tests.enclave_workers.test_key_session import SteppingClock, same_key


class GatedBroker:
    """A real ``BrokerClient`` whose release of one key id, or whose attest, waits on a gate."""

    def __init__(self, client: BrokerClient) -> None:
        self._client = client
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.gated_key_id: str | None = None
        self.gate_attest = False
        self.releases = 0
        self.closed = False
        self._count = threading.Lock()

    def challenge(self) -> bytes:
        return self._client.challenge()

    def attest(self, *args: Any) -> Any:
        if self.gate_attest:
            self.entered.set()
            assert self.gate.wait(20)
        return self._client.attest(*args)

    def release(self, session: Any, wrapped: Any, region: str, producer_id: str) -> bytes:
        with self._count:
            self.releases += 1
        if wrapped.key_id == self.gated_key_id:
            self.entered.set()
            assert self.gate.wait(20)
        return self._client.release(session, wrapped, region, producer_id)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.generate(*args, **kwargs)

    def release_named(self, session: Any, name: str) -> bytes:
        return self._client.release_named(session, name)

    def close(self) -> None:
        self.closed = True
        self._client.close()


def _session(broker: BrokerEnv, gated: GatedBroker, **kwargs: Any) -> KeySession:
    return KeySession(gated, broker.provider(), **kwargs)   # type: ignore[arg-type]


def test_a_slow_release_does_not_stall_other_keys(broker: BrokerEnv) -> None:
    gated = GatedBroker(broker.client())
    session = _session(broker, gated)
    slow_key, slow_wrapped = broker.wrap_new_key("eu", "acme")
    fast_key, fast_wrapped = broker.wrap_new_key("eu", "acme")
    session.named_key("pseudonym/acme")                          # attested before the race
    gated.gated_key_id = slow_wrapped.key_id
    got: dict[str, Any] = {}
    slow = threading.Thread(target=lambda: got.update(
        slow=session.data_key(slow_wrapped, "eu", "acme")))
    slow.start()
    assert gated.entered.wait(10)                                # its release is in flight
    started = time.monotonic()
    assert same_key(session.data_key(fast_wrapped, "eu", "acme"), fast_key)
    assert time.monotonic() - started < 5                        # not behind the slow one
    assert "slow" not in got
    gated.gate.set()
    slow.join(10)
    assert same_key(got["slow"], slow_key)


def test_threads_wanting_one_key_share_one_release(broker: BrokerEnv) -> None:
    gated = GatedBroker(broker.client())
    session = _session(broker, gated)
    key, wrapped = broker.wrap_new_key("us", "globex")
    session.named_key("pseudonym/globex")
    gated.gated_key_id = wrapped.key_id
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(
        session.data_key(wrapped, "us", "globex"))) for _ in range(6)]
    for thread in threads:
        thread.start()
    assert gated.entered.wait(10)
    time.sleep(0.2)                       # let the other threads reach the flight and wait
    gated.gate.set()
    for thread in threads:
        thread.join(10)
    assert len(results) == 6 and all(same_key(r, key) for r in results)
    assert gated.releases == 1
    assert session.broker_calls["release"] == 1


def test_reattests_ahead_of_expiry_while_other_threads_go_on(broker: BrokerEnv) -> None:
    gated = GatedBroker(broker.client())
    clock = SteppingClock()
    session = _session(broker, gated, clock=clock, key_ttl_s=0.001)   # every call releases
    key, wrapped = broker.wrap_new_key("eu", "acme")
    other_key, other_wrapped = broker.wrap_new_key("eu", "acme")
    session.data_key(wrapped, "eu", "acme")
    attested = session._attested
    assert attested is not None
    lifetime = attested.expires_at - time.time()
    # Inside the refresh window, well before the expiry margin.
    clock.offset = lifetime * (1 - REFRESH_FRACTION / 2)
    gated.gate_attest = True
    refreshed: list[Any] = []
    refresher = threading.Thread(target=lambda: refreshed.append(
        session.data_key(wrapped, "eu", "acme")))
    refresher.start()
    assert gated.entered.wait(10)                              # re-attesting, gated
    started = time.monotonic()
    # Another key, released meanwhile under the current (still valid) session.
    assert same_key(session.data_key(other_wrapped, "eu", "acme"), other_key)
    assert time.monotonic() - started < 5
    assert session.attestations == 1
    gated.gate.set()
    refresher.join(10)
    assert same_key(refreshed[0], key)
    assert session.attestations == 2
    assert session._attested is not attested


def test_close_forgets_keys_and_closes_an_owned_client(broker: BrokerEnv) -> None:
    gated = GatedBroker(broker.client())
    session = _session(broker, gated, owns_broker=True)
    _, wrapped = broker.wrap_new_key("eu", "acme")
    session.data_key(wrapped, "eu", "acme")
    session.close()
    assert gated.closed and session._attested is None and not session._data_keys
    borrowed = GatedBroker(broker.client())
    _session(broker, borrowed).close()
    assert not borrowed.closed
