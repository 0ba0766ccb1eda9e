"""KeySession against a real broker on loopback: attest once, one release per key, limits."""

from __future__ import annotations

import hmac
import time

import pytest

from enclave_workers.key_session import KeySession, KeySessionError
from envelope import DataKey, dek_wrap_aad
from keybroker.client import BrokerDeniedError, BrokerError, BrokerSession
from tests.enclave_workers.broker_env import DENIED_PRODUCER, BrokerEnv


class SteppingClock:
    """Wall time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def same_key(a: DataKey, b: DataKey) -> bool:
    return hmac.compare_digest(a.secret_bytes(), b.secret_bytes())


def _session(broker: BrokerEnv, clock: SteppingClock | None = None, **limits: float) -> KeySession:
    return KeySession(broker.client(), broker.provider(), clock=clock or time.time, **limits)


def test_attests_lazily_once_and_releases_each_key_once(broker: BrokerEnv) -> None:
    session = _session(broker)
    assert session.total_broker_calls == 0
    keys = [broker.wrap_new_key("eu", "acme") for _ in range(3)]
    for _ in range(40):
        for expected, wrapped in keys:
            released = session.data_key(wrapped, "eu", "acme")
            assert same_key(released, expected)
            assert released.simulated
    assert session.broker_calls == {"challenge": 1, "attest": 1, "release": 3, "generate": 0,
                                    "release_named": 0}
    assert session.attestations == 1


def test_the_cache_key_includes_region_and_producer(broker: BrokerEnv) -> None:
    """A cached key is never handed out for another (region, producer) without the broker."""
    session = _session(broker)
    _, wrapped = broker.wrap_new_key("eu", "acme")
    session.data_key(wrapped, "eu", "acme")
    with pytest.raises(BrokerError):
        session.data_key(wrapped, "eu", "globex")     # the AAD binds acme: the KMS refuses
    assert session.broker_calls["release"] == 2


def test_reattests_when_the_broker_session_expires(broker: BrokerEnv) -> None:
    clock = SteppingClock()
    session = _session(broker, clock, key_ttl_s=10_000)
    first_key, first_wrapped = broker.wrap_new_key("us", "globex")
    session.data_key(first_wrapped, "us", "globex")
    clock.offset = 24 * 3600.0                          # far past any broker session TTL
    _, second_wrapped = broker.wrap_new_key("us", "globex")
    session.data_key(second_wrapped, "us", "globex")
    assert session.attestations == 2
    assert session.broker_calls["attest"] == 2
    assert same_key(session.data_key(first_wrapped, "us", "globex"), first_key)  # cached


def test_reattests_once_when_the_broker_rejects_the_session(broker: BrokerEnv) -> None:
    session = _session(broker)
    key, wrapped = broker.wrap_new_key("eu", "acme")
    session.named_key("pseudonym/acme")
    attested = session._attested
    assert attested is not None
    # Replace the bearer id with one the broker never issued: it answers 401.
    attested.broker_session = BrokerSession("forged-session-id", attested.expires_at, True, {})
    assert same_key(session.data_key(wrapped, "eu", "acme"), key)
    assert session.attestations == 2


def test_ttl_and_use_limit_force_a_new_release(broker: BrokerEnv) -> None:
    clock = SteppingClock()
    session = _session(broker, clock, key_ttl_s=60, max_uses_per_key=3)
    _, wrapped = broker.wrap_new_key("eu", "acme")
    for _ in range(7):
        session.data_key(wrapped, "eu", "acme")
    assert session.broker_calls["release"] == 3          # uses 1-3, 4-6, 7
    clock.offset = 61.0
    session.data_key(wrapped, "eu", "acme")
    assert session.broker_calls["release"] == 4


def test_lru_bound_evicts_the_least_recently_used_key(broker: BrokerEnv) -> None:
    session = _session(broker, max_cached_keys=2)
    a, b, c = (broker.wrap_new_key("eu", "acme")[1] for _ in range(3))
    for wrapped in (a, b, a, c):                          # c evicts b (a was used after b)
        session.data_key(wrapped, "eu", "acme")
    assert session.broker_calls["release"] == 3
    session.data_key(a, "eu", "acme")
    assert session.broker_calls["release"] == 3
    session.data_key(b, "eu", "acme")
    assert session.broker_calls["release"] == 4


def test_output_keys_are_reused_for_n_envelopes_and_unwrap_to_the_same_key(
        broker: BrokerEnv) -> None:
    clock = SteppingClock()
    session = _session(broker, clock, output_key_max_envelopes=3, key_ttl_s=60)
    seen = [session.output_key("us", "acme") for _ in range(7)]
    assert session.broker_calls["generate"] == 3
    assert len({wrapped.key_id for _, wrapped in seen}) == 3
    for data_key, wrapped in seen:
        assert data_key.simulated
        assert wrapped.kek.uri == broker.keyring.kek_for_region("us")
        unwrapped = broker.keyring.unwrap(wrapped, dek_wrap_aad("us", "acme"))
        assert unwrapped == data_key.secret_bytes()
    clock.offset = 61.0
    session.output_key("us", "acme")
    assert session.broker_calls["generate"] == 4


def test_named_keys_are_cached_and_denials_are_the_brokers_errors(broker: BrokerEnv) -> None:
    session = _session(broker)
    first = session.named_key("pseudonym/acme")
    assert len(first) >= 16
    assert session.named_key("pseudonym/acme") == first
    assert session.named_key("pseudonym/globex") != first
    assert session.broker_calls["release_named"] == 2
    _, wrapped = broker.wrap_new_key("eu", DENIED_PRODUCER)
    with pytest.raises(BrokerDeniedError):
        session.data_key(wrapped, "eu", DENIED_PRODUCER)


def test_bad_limits_are_refused(broker: BrokerEnv) -> None:
    with pytest.raises(KeySessionError):
        KeySession(broker.client(), broker.provider(), key_ttl_s=0)
    with pytest.raises(KeySessionError):
        KeySession(broker.client(), broker.provider(), max_cached_keys=0)
