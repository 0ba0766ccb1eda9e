"""The broker-side DEK cache: limits, LRU, single-flight, and that the policy still decides.

Unit tests drive ``DekCache`` with a fake clock and a KMS that counts its calls and can block
until a test releases it; the service tests run the real broker (over HTTP, and in-process
with a spy policy) with a counting backend injected for the ``local`` scheme.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT, SimulatedSnpProvider
from envelope.keys import DataKey, KeyReference, WrappedKey, dek_wrap_aad
from envelope.transport import TeeKeyPair, release_info, report_data_binding
from keybroker.client import RELEASE_PURPOSE, BrokerClient
from keybroker.config import BrokerSettings, ConfigError, init_state
from keybroker.dek_cache import (
    DEK_FROM_CACHE,
    DEK_FROM_KMS,
    DEK_FROM_SHARED_CALL,
    DekCache,
    DekCacheSettings,
    DekCacheSettingsError,
    UnwrapWaitTimeoutError,
)
from keybroker.kms.base import KmsPermissionError, KmsTransientError
from keybroker.kms.local import LocalKeyring
from keybroker.kms.named_keys import NamedKeyStore
from keybroker.kms.registry import KmsRegistry
from keybroker.ledger import AuditLedger
from keybroker.policy import Decision, ReleasePolicy
from keybroker.service.errors import PolicyDeniedError
from keybroker.service.schemas import AttestRequest, ReleaseNamedRequest, ReleaseRequest
from keybroker.service.server import RunningBroker, serve_in_thread
from keybroker.service.service import KeyBrokerService
from keybroker.service.verifiers import build_verifiers
from tests.support.broker import attest_simulated_worker, ledger_entries, start_broker

AAD_EU = dek_wrap_aad("eu", "acme")
AAD_US = dek_wrap_aad("us", "acme")


def wrapped_key(tag: int) -> WrappedKey:
    return WrappedKey(KeyReference("local://keyring/eu/kek-1", "1"), bytes([tag]) * 65)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingKms:
    """Unwraps to a secret derived from the wrapped key; counts calls; can block or fail."""

    def __init__(self, *, block: bool = False) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.fail_with: BaseException | None = None
        self._lock = threading.Lock()

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        with self._lock:
            self.calls += 1
        self.started.set()
        if not self.release.wait(timeout=10):
            raise AssertionError("the test never released the blocked KMS call")
        if self.fail_with is not None:
            raise self.fail_with
        return hashlib.sha256(wrapped.ciphertext + aad).digest()  # 32 bytes, per key and aad


def cache(clock: FakeClock | None = None, **limits: Any) -> DekCache:
    return DekCache(DekCacheSettings(**limits), clock=clock or FakeClock())


# -- limits ----------------------------------------------------------------------------------


def test_second_request_is_served_from_the_cache() -> None:
    kms, dek_cache = CountingKms(), cache()
    first = dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap)
    second = dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap)
    assert (first.source, second.source) == (DEK_FROM_KMS, DEK_FROM_CACHE)
    assert first.secret == second.secret
    assert kms.calls == 1
    assert first.secret.hex() not in repr(first)
    assert dek_cache.stats().hits == 1 and dek_cache.stats().kms_calls == 1


def test_cached_only_answers_from_the_cache_with_the_same_limits() -> None:
    """What the event loop may ask: a cached DEK or None, never a KMS call or a wait."""
    clock = FakeClock()
    kms, dek_cache = CountingKms(), cache(clock, max_uses=3, max_age_seconds=60)
    assert dek_cache.cached(wrapped_key(1), AAD_EU) is None and kms.calls == 0
    first = dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap)
    hit = dek_cache.cached(wrapped_key(1), AAD_EU)
    assert hit is not None and (hit.source, hit.secret) == (DEK_FROM_CACHE, first.secret)
    assert dek_cache.cached(wrapped_key(1), AAD_US) is None  # another region/producer
    assert dek_cache.cached(wrapped_key(1), AAD_EU) is not None  # the third use
    assert dek_cache.cached(wrapped_key(1), AAD_EU) is None  # used up, evicted
    assert dek_cache.stats().hits == 2 and kms.calls == 1
    dek_cache.unwrap(wrapped_key(2), AAD_EU, kms.unwrap)
    clock.now += 60
    assert dek_cache.cached(wrapped_key(2), AAD_EU) is None  # too old
    off = cache(enabled=False)
    off.unwrap(wrapped_key(1), AAD_EU, kms.unwrap)
    assert off.cached(wrapped_key(1), AAD_EU) is None


def test_cached_only_does_not_wait_for_a_kms_call_in_flight() -> None:
    kms, dek_cache = CountingKms(block=True), cache()
    with ThreadPoolExecutor(max_workers=1) as pool:
        leading = pool.submit(dek_cache.unwrap, wrapped_key(1), AAD_EU, kms.unwrap)
        assert kms.started.wait(10)
        assert dek_cache.cached(wrapped_key(1), AAD_EU) is None  # at once, not after the call
        kms.release.set()
        leading.result(10)
    assert dek_cache.cached(wrapped_key(1), AAD_EU) is not None


def test_associated_data_is_part_of_the_key() -> None:
    kms, dek_cache = CountingKms(), cache()
    dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap)
    other = dek_cache.unwrap(wrapped_key(1), AAD_US, kms.unwrap)
    assert other.source == DEK_FROM_KMS  # never a DEK unwrapped for another region/producer
    assert kms.calls == 2
    dek_cache.unwrap(wrapped_key(2), AAD_EU, kms.unwrap)
    assert kms.calls == 3


def test_entries_expire_after_max_age() -> None:
    clock, kms = FakeClock(), CountingKms()
    dek_cache = cache(clock, max_age_seconds=10)
    dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap)
    clock.now += 9.9
    assert dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap).source == DEK_FROM_CACHE
    clock.now += 0.1
    assert dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap).source == DEK_FROM_KMS
    assert kms.calls == 2


def test_entries_are_dropped_after_max_uses() -> None:
    kms, dek_cache = CountingKms(), cache(max_uses=3)
    sources = [dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap).source for _ in range(7)]
    # uses 1 (kms), 2, 3 (cache; the third use exhausts the entry), then a new KMS call ...
    assert sources == [DEK_FROM_KMS, DEK_FROM_CACHE, DEK_FROM_CACHE,
                       DEK_FROM_KMS, DEK_FROM_CACHE, DEK_FROM_CACHE, DEK_FROM_KMS]
    assert kms.calls == 3


def test_max_uses_of_one_means_no_caching() -> None:
    kms, dek_cache = CountingKms(), cache(max_uses=1)
    for _ in range(3):
        assert dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap).source == DEK_FROM_KMS
    assert dek_cache.stats().entries == 0


def test_max_bytes_evicts_the_least_recently_used() -> None:
    kms, dek_cache = CountingKms(), cache(max_bytes=64)  # room for two 32-byte DEKs
    dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap)
    dek_cache.unwrap(wrapped_key(2), AAD_EU, kms.unwrap)
    dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap)  # 1 is now the most recently used
    dek_cache.unwrap(wrapped_key(3), AAD_EU, kms.unwrap)  # evicts 2
    assert dek_cache.stats().entries == 2 and dek_cache.stats().bytes == 64
    assert dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap).source == DEK_FROM_CACHE
    assert dek_cache.unwrap(wrapped_key(3), AAD_EU, kms.unwrap).source == DEK_FROM_CACHE
    assert dek_cache.unwrap(wrapped_key(2), AAD_EU, kms.unwrap).source == DEK_FROM_KMS
    assert kms.calls == 4


def test_zero_bytes_or_disabled_keeps_nothing() -> None:
    for dek_cache in (cache(max_bytes=0), cache(enabled=False)):
        kms = CountingKms()
        dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap)
        assert dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap).source == DEK_FROM_KMS
        assert kms.calls == 2 and dek_cache.stats().entries == 0


def test_errors_are_not_cached() -> None:
    kms, dek_cache = CountingKms(), cache()
    kms.fail_with = KmsTransientError("UNAVAILABLE")
    with pytest.raises(KmsTransientError):
        dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap)
    kms.fail_with = None
    assert dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap).source == DEK_FROM_KMS
    assert kms.calls == 2


def test_clear_drops_every_entry() -> None:
    kms, dek_cache = CountingKms(), cache()
    dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap)
    dek_cache.clear()
    assert dek_cache.stats().entries == 0 and dek_cache.stats().bytes == 0
    assert dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap).source == DEK_FROM_KMS


# -- single flight ---------------------------------------------------------------------------


def _concurrently(dek_cache: DekCache, kms: CountingKms, count: int) -> list[Any]:
    """Start ``count`` unwraps of one key, wait until all but the leader are waiting, release."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [
            pool.submit(dek_cache.unwrap, wrapped_key(1), AAD_EU, kms.unwrap)
            for _ in range(count)
        ]
        assert kms.started.wait(timeout=5)
        deadline = time.monotonic() + 5
        while dek_cache.stats().shared < count - 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert kms.calls == 1  # everyone else is waiting on the one call in flight
        kms.release.set()
        return [future.exception(timeout=10) or future.result() for future in futures]


def test_concurrent_requests_for_one_key_make_one_kms_call() -> None:
    kms, dek_cache = CountingKms(block=True), cache()
    results = _concurrently(dek_cache, kms, 12)
    assert kms.calls == 1
    assert len({result.secret for result in results}) == 1
    sources = sorted(result.source for result in results)
    assert sources == [DEK_FROM_KMS] + [DEK_FROM_SHARED_CALL] * 11
    # the waiters counted as uses of the entry the leader stored
    assert dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap).source == DEK_FROM_CACHE


def test_waiters_share_the_leaders_error_and_nothing_is_cached() -> None:
    kms, dek_cache = CountingKms(block=True), cache()
    kms.fail_with = KmsPermissionError("PERMISSION_DENIED: useToDecrypt")
    results = _concurrently(dek_cache, kms, 6)
    assert kms.calls == 1
    assert all(isinstance(result, KmsPermissionError) for result in results)
    assert dek_cache.stats().entries == 0


def test_waiters_used_up_by_one_flight_are_not_cached() -> None:
    kms, dek_cache = CountingKms(block=True), cache(max_uses=4)
    results = _concurrently(dek_cache, kms, 4)
    assert all(result.secret == results[0].secret for result in results)
    assert dek_cache.stats().entries == 0  # 4 uses in one flight exhaust max_uses=4


def test_a_waiter_gives_up_after_the_wait_timeout() -> None:
    kms, dek_cache = CountingKms(block=True), cache(wait_timeout_seconds=0.05)
    with ThreadPoolExecutor(max_workers=1) as pool:
        leader = pool.submit(dek_cache.unwrap, wrapped_key(1), AAD_EU, kms.unwrap)
        assert kms.started.wait(timeout=5)
        with pytest.raises(UnwrapWaitTimeoutError, match=r"waited 0\.05s"):
            dek_cache.unwrap(wrapped_key(1), AAD_EU, kms.unwrap)
        kms.release.set()
        assert leader.result(timeout=5).source == DEK_FROM_KMS
    assert issubclass(UnwrapWaitTimeoutError, KmsTransientError)  # 503: try again


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"max_age_seconds": 0}, r"dek_cache.max_age_seconds: expected a number"),
        ({"max_age_seconds": "5"}, r"dek_cache.max_age_seconds"),
        ({"max_uses": 0}, r"dek_cache.max_uses: expected an integer"),
        ({"max_uses": True}, r"dek_cache.max_uses"),
        ({"max_bytes": -1}, r"dek_cache.max_bytes: expected an integer"),
        ({"wait_timeout_seconds": 601}, r"dek_cache.wait_timeout_seconds"),
        ({"enabled": "yes"}, r"dek_cache.enabled"),
        ({"max_entries": 5}, r"dek_cache: unknown field\(s\) max_entries"),
        ([1], r"dek_cache: expected a mapping"),
    ],
)
def test_settings_errors_name_the_field(document: object, message: str) -> None:
    with pytest.raises(DekCacheSettingsError, match=message):
        DekCacheSettings.from_mapping(document)


def test_settings_round_trip_through_broker_yaml(tmp_path: Path) -> None:
    with start_broker(tmp_path / "state") as broker:
        settings = broker.settings
    document = settings.to_mapping()
    assert document["dek_cache"] == DekCacheSettings().to_mapping()
    document["dek_cache"] = {"max_age_seconds": 30, "max_uses": 50, "max_bytes": 4096}
    loaded = BrokerSettings.from_mapping(document, base_dir=settings.state_dir)
    assert loaded.dek_cache == DekCacheSettings(max_age_seconds=30, max_uses=50, max_bytes=4096)
    assert BrokerSettings.from_mapping(loaded.to_mapping(), base_dir=settings.state_dir) == loaded
    document["dek_cache"] = {"max_uses": -3}
    with pytest.raises(ConfigError, match=r"dek_cache\.max_uses"):
        BrokerSettings.from_mapping(document, base_dir=settings.state_dir)


# -- through the service ---------------------------------------------------------------------


class CountingKeyring:
    """The state's local keyring behind a counter, and a gate that holds unwraps."""

    scheme = "local"

    def __init__(self, keyring: LocalKeyring) -> None:
        self.keyring = keyring
        self.unwraps = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def wrap(self, kek_uri: str, dek: bytes, aad: bytes) -> WrappedKey:
        return self.keyring.wrap(kek_uri, dek, aad)

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        with self._lock:
            self.unwraps += 1
        self.entered.set()
        if not self.gate.wait(timeout=10):
            raise AssertionError("the test never opened the gate")
        return self.keyring.unwrap(wrapped, aad)


@pytest.fixture
def counted_broker(tmp_path: Path) -> Iterator[tuple[RunningBroker, CountingKeyring]]:
    settings = init_state(tmp_path / "state", allowed_measurements=(DEV_MEASUREMENT,))
    counting = CountingKeyring(LocalKeyring.open(settings.keyring_path))
    running = serve_in_thread(settings, kms_backends={"local": counting})
    try:
        yield running, counting
    finally:
        running.stop()


def test_many_workers_releasing_one_dek_over_http_make_one_unwrap(
    counted_broker: tuple[RunningBroker, CountingKeyring],
) -> None:
    broker, counting = counted_broker
    data_key = DataKey.generate()
    wrapped = counting.keyring.wrap("local://keyring/eu/kek-1", data_key.secret_bytes(), AAD_EU)
    workers = 8
    with BrokerClient(broker.url) as client:
        tee_keys, sessions = zip(
            *(attest_simulated_worker(client, broker.settings) for _ in range(workers)),
            strict=True,
        )
        counting.gate.clear()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(client.release, session, wrapped, "eu", "acme")
                for session in sessions
            ]
            assert counting.entered.wait(timeout=10)
            time.sleep(0.3)  # let the other requests reach the cache and queue on the flight
            counting.gate.set()
            sealed = [future.result(timeout=20) for future in futures]
    assert counting.unwraps == 1
    info = release_info(RELEASE_PURPOSE, wrapped.key_id)
    for keys, sealed_dek in zip(tee_keys, sealed, strict=True):
        assert keys.open(sealed_dek, info) == data_key.secret_bytes()
    releases = ledger_entries(broker.settings, "release")
    assert len(releases) == workers
    assert all(entry.decision == "granted" for entry in releases)
    sources = sorted(str(entry.details["dek_source"]) for entry in releases)
    assert sources[0] == DEK_FROM_KMS and sources.count(DEK_FROM_KMS) == 1
    assert set(sources[1:]) <= {DEK_FROM_SHARED_CALL, DEK_FROM_CACHE}


class SpyPolicy:
    """The real policy, counting release decisions, that a test can switch to deny."""

    def __init__(self, policy: Any) -> None:
        self._policy = policy
        self.release_checks = 0
        self.named_checks = 0
        self.deny = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    def evaluate_release(self, claims: Any, kek_uri: str, region: str, producer_id: str) -> Any:
        self.release_checks += 1
        decision = self._policy.evaluate_release(claims, kek_uri, region, producer_id)
        if self.deny:
            return Decision(allowed=False, reason="switched off by the test")
        return decision

    def evaluate_named(self, claims: Any, name: str) -> Any:
        self.named_checks += 1
        decision = self._policy.evaluate_named(claims, name)
        if self.deny:
            return Decision(allowed=False, reason="switched off by the test")
        return decision


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_policy_is_asked_on_every_request_even_when_the_dek_is_cached(tmp_path: Path) -> None:
    settings = init_state(tmp_path / "state", allowed_measurements=(DEV_MEASUREMENT,))
    policy = ReleasePolicy.load(settings.policy_path)
    spy = SpyPolicy(policy)
    counting = CountingKeyring(LocalKeyring.open(settings.keyring_path))
    service = KeyBrokerService(
        settings=settings,
        policy=spy,  # type: ignore[arg-type]
        kms=KmsRegistry(settings, backends={"local": counting}),
        verifiers=build_verifiers(settings, policy),
        ledger=AuditLedger(settings.ledger_path),
        named_keys=NamedKeyStore.open(settings.named_keys_path),
    )
    try:
        tee_keys = TeeKeyPair.generate()
        nonce = base64.b64decode(service.challenge().nonce)
        assert settings.dev_chain_dir is not None
        evidence = SimulatedSnpProvider(settings.dev_chain_dir).collect(
            report_data_binding(nonce, tee_keys.public_bytes())
        )
        session = service.attest(AttestRequest(
            nonce=b64(nonce), tee=evidence.tee, evidence=b64(evidence.evidence),
            endorsements={name: b64(value) for name, value in evidence.endorsements.items()},
            tee_public_key=b64(tee_keys.public_bytes()),
        ))
        data_key = DataKey.generate()
        wrapped = counting.keyring.wrap("local://keyring/eu/kek-1", data_key.secret_bytes(), AAD_EU)
        request = ReleaseRequest(
            session_id=session.session_id, kek_uri=wrapped.kek.uri,
            kek_version=wrapped.kek.version,
            wrapped_dek=b64(wrapped.ciphertext), region="eu",
            producer_id="acme",
        )
        service.release(request)
        service.release(request)
        assert (counting.unwraps, spy.release_checks) == (1, 2)  # cached, and still asked
        named = ReleaseNamedRequest(session_id=session.session_id, name="pseudonym/acme")
        service.release_named(named)
        service.release_named(named)
        assert (counting.unwraps, spy.named_checks) == (2, 2)

        spy.deny = True
        with pytest.raises(PolicyDeniedError, match="switched off by the test"):
            service.release(request)
        with pytest.raises(PolicyDeniedError):
            service.release_named(named)
        assert (counting.unwraps, spy.release_checks, spy.named_checks) == (2, 3, 3)
        denied = [entry for entry in service.ledger.entries() if entry.decision == "denied"]
        assert [entry.event for entry in denied] == ["release", "release-named"]
        assert denied[0].details["reason"] == "switched off by the test"
        sources = [entry.details.get("dek_source") for entry in service.ledger.entries()
                   if entry.decision == "granted" and entry.event != "attest"]
        assert sources == [DEK_FROM_KMS, DEK_FROM_CACHE, DEK_FROM_KMS, DEK_FROM_CACHE]
    finally:
        service.close()
