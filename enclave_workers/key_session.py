"""The worker's key session: attest once, then obtain and cache data keys from the broker.

What it does: on first use it makes an in-memory TEE key pair, asks the broker for a
challenge, binds (nonce, TEE public key) into report_data, collects evidence from the
provider and attests. Released keys arrive HPKE-sealed to the TEE key and are opened here.
Data keys are cached per (key id, region, producer) with a TTL, a use limit and an LRU bound
(the AWS Encryption SDK's caching limits); output keys from ``generate`` are reused for at
most N envelopes or T seconds; named keys (e.g. ``pseudonym/acme``) are cached with the TTL.
Broker calls are counted.

Threads: one session serves every thread of a worker process, and no lock is held across a
network call. The lock guards the caches only; a missing key is fetched single-flight: the
first thread that misses a key (or the attestation) makes the broker call, and threads that
want the same key meanwhile wait for that call's result (or its error) instead of calling
again, while threads that want other keys go on. So one slow release stalls only the threads
that need that very key.

Attestation lifetime: the session re-attests ahead of expiry without stopping: once
``REFRESH_FRACTION`` of the broker session's lifetime is left (at least
``SESSION_EXPIRY_MARGIN_S``), one thread re-attests while the others keep using the current,
still valid session; only past the margin must callers wait for the new one. It also
re-attests once when the broker says the session is no longer valid (401).

Custody: every attestation also makes an Ed25519 statement key (``provenance.StatementSigner``)
and binds it into the same evidence under the label ``provenance`` (``report_data_binding``'s
``bound_keys``); the broker lists it in its signed attestation result. ``custody_signer``
hands out that key with that result, and ``ledger_head`` the broker's signed ledger
checkpoint taken after the session's latest grant, for the output statements.

What it does not: it never writes a key to disk, never logs key bytes, and does not decide
policy — a denial from the broker is raised to the caller as the broker's typed error. It
does not retry an unavailable broker (the confidential step does, with backoff).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from envelope import (
    DataKey,
    KeyTransportError,
    TeeKeyPair,
    WrappedKey,
    release_info,
    report_data_binding,
)
from keybroker.client import (
    GENERATE_PURPOSE,
    NAMED_PURPOSE,
    RELEASE_PURPOSE,
    BrokerAuthError,
    BrokerClient,
    BrokerRequestError,
)

from .evidence.base import EvidenceProvider
from .provenance import PROVENANCE_KEY_LABEL, StatementSigner

SESSION_EXPIRY_MARGIN_S = 5.0
REFRESH_FRACTION = 0.2      # re-attest, without stopping, when this part of the lifetime is left
BROKER_CALL_KINDS = ("challenge", "attest", "release", "generate", "release_named")
GRANT_CALL_KINDS = ("release", "generate", "release_named")


class KeySessionError(Exception):
    """Base of key-session errors (bad limits, a sealed key that does not open)."""


class KeyUnsealError(KeySessionError):
    """A key the broker sent could not be opened with this session's TEE key."""


def _as_epoch_seconds(expires_at: Any) -> float:
    """The broker session's expiry as epoch seconds (accepts a datetime or a number)."""
    if isinstance(expires_at, datetime):
        return expires_at.timestamp()
    if isinstance(expires_at, (int, float)):
        return float(expires_at)
    raise KeySessionError(f"broker session expires_at has unsupported type "
                          f"{type(expires_at).__name__}")


@dataclass
class _CachedKey:
    key: DataKey
    wrapped: WrappedKey | None
    created_at: float
    uses: int = 0


@dataclass
class _Attested:
    tee_keys: TeeKeyPair
    broker_session: Any
    expires_at: float
    simulated: bool
    refresh_at: float = 0.0
    statement_signer: StatementSigner | None = None


class _Flight:
    """One broker call in progress; threads that need its result wait for it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def wait(self) -> Any:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


class KeySession:
    """One attested session with the broker and the keys it released, held in memory only."""

    def __init__(
        self,
        broker: BrokerClient,
        provider: EvidenceProvider,
        *,
        key_ttl_s: float = 300.0,
        max_uses_per_key: int = 100_000,
        max_cached_keys: int = 1024,
        output_key_max_envelopes: int = 1024,
        clock: Callable[[], float] = time.time,
        on_broker_call: Callable[[str], None] | None = None,
        owns_broker: bool = False,
    ) -> None:
        if key_ttl_s <= 0:
            raise KeySessionError("key_ttl_s must be greater than 0")
        if max_uses_per_key < 1 or max_cached_keys < 1 or output_key_max_envelopes < 1:
            raise KeySessionError("key use, cache and envelope limits must be at least 1")
        self._broker = broker
        self._provider = provider
        self._key_ttl_s = float(key_ttl_s)
        self._max_uses = max_uses_per_key
        self._max_cached = max_cached_keys
        self._output_max_envelopes = output_key_max_envelopes
        self._clock = clock
        self._on_broker_call = on_broker_call
        self._owns_broker = owns_broker
        self._lock = threading.Lock()          # guards the state below; never held on a call
        self._flights: dict[tuple[str, ...], _Flight] = {}
        self._attested: _Attested | None = None
        self._data_keys: OrderedDict[tuple[str, str, str], _CachedKey] = OrderedDict()
        self._output_keys: dict[tuple[str, str, str], _CachedKey] = {}
        self._named_keys: dict[str, tuple[bytes, float]] = {}
        self._calls = dict.fromkeys(BROKER_CALL_KINDS, 0)
        self._attestations = 0
        self._grants = 0                         # attest/release/generate grants so far
        self._ledger_head: tuple[int, Mapping[str, Any] | None] | None = None

    # -- counters -------------------------------------------------------------------------
    @property
    def broker_calls(self) -> Mapping[str, int]:
        """Broker calls made so far, by kind (a copy)."""
        with self._lock:
            return dict(self._calls)

    @property
    def total_broker_calls(self) -> int:
        with self._lock:
            return sum(self._calls.values())

    @property
    def attestations(self) -> int:
        """How many times this session has attested (1 + re-attestations)."""
        with self._lock:
            return self._attestations

    @property
    def simulated(self) -> bool:
        """Whether the current attestation is anchored at a dev root (attests if needed)."""
        return self._session().simulated

    def _count(self, kind: str) -> None:
        with self._lock:
            self._calls[kind] = self._calls.get(kind, 0) + 1   # "ledger_head" once used
            if kind in GRANT_CALL_KINDS:
                self._grants += 1
        if self._on_broker_call is not None:
            self._on_broker_call(kind)

    # -- single flight --------------------------------------------------------------------
    def _single_flight(self, flight_key: tuple[str, ...], call: Callable[[], Any]) -> Any:
        """Run ``call`` unless a call for ``flight_key`` is in progress; then wait for it."""
        with self._lock:
            flight = self._flights.get(flight_key)
            leader = flight is None
            if leader:
                flight = self._flights[flight_key] = _Flight()
        assert flight is not None
        if not leader:
            return flight.wait()
        try:
            flight.result = call()
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[flight_key]
            flight.done.set()
        return flight.result

    def _flight_running(self, flight_key: tuple[str, ...]) -> bool:
        with self._lock:
            return flight_key in self._flights

    # -- attestation ----------------------------------------------------------------------
    def _attest(self) -> _Attested:
        """Attest anew (network calls, no lock held) and make it the current session."""
        tee_keys = TeeKeyPair.generate()
        public_key = tee_keys.public_bytes()
        signer = StatementSigner.generate()      # signs custody statements (provenance.py)
        bound_keys = {PROVENANCE_KEY_LABEL: signer.public_bytes}
        self._count("challenge")
        nonce = self._broker.challenge()
        evidence = self._provider.collect(
            report_data_binding(nonce, public_key, bound_keys=bound_keys))
        self._count("attest")
        broker_session = self._broker.attest(
            nonce, evidence.tee, evidence.evidence, dict(evidence.endorsements), public_key,
            bound_keys,
        )
        simulated = bool(getattr(broker_session, "simulated", False)) or bool(
            getattr(self._provider, "simulated", False)
        )
        now = self._clock()
        expires_at = _as_epoch_seconds(broker_session.expires_at)
        lead = max(SESSION_EXPIRY_MARGIN_S, REFRESH_FRACTION * max(0.0, expires_at - now))
        attested = _Attested(tee_keys, broker_session, expires_at, simulated,
                             refresh_at=expires_at - lead, statement_signer=signer)
        with self._lock:
            self._attestations += 1
            self._attested = attested
            self._grants += 1
        return attested

    def _session(self) -> _Attested:
        """A usable attestation: the current one, refreshed ahead of expiry by one thread."""
        with self._lock:
            attested = self._attested
        now = self._clock()
        if attested is None or now >= attested.expires_at - SESSION_EXPIRY_MARGIN_S:
            return self._reattest_unless_replaced(attested)
        if now >= attested.refresh_at and not self._flight_running(("attest",)):
            # Ahead of expiry: this thread re-attests; the others keep the current session.
            try:
                return self._reattest_unless_replaced(attested)
            except Exception:
                if self._clock() < attested.expires_at - SESSION_EXPIRY_MARGIN_S:
                    return attested            # still valid: try again on a later call
                raise
        return attested

    def _reattest_unless_replaced(self, stale: _Attested | None) -> _Attested:
        """Re-attest single-flight, unless another thread already replaced ``stale``."""
        def call() -> _Attested:
            with self._lock:
                current = self._attested
            if current is not None and current is not stale and \
                    self._clock() < current.expires_at - SESSION_EXPIRY_MARGIN_S:
                return current
            return self._attest()

        return self._single_flight(("attest",), call)

    def _with_session(self, call: Callable[[_Attested], Any]) -> Any:
        """Run a broker call; re-attest once if the broker no longer accepts the session."""
        attested = self._session()
        try:
            return call(attested)
        except BrokerAuthError:
            return call(self._reattest_unless_replaced(attested))

    def _open_sealed(self, attested: _Attested, sealed: bytes, purpose: str, key_id: str) -> bytes:
        try:
            return attested.tee_keys.open(sealed, release_info(purpose, key_id))
        except KeyTransportError:
            raise KeyUnsealError(f"sealed {purpose} {key_id[:16]}... did not open with the "
                                 "session's TEE key") from None

    # -- data keys ------------------------------------------------------------------------
    def _cached_data_key(self, cache_key: tuple[str, str, str]) -> DataKey | None:
        """A fresh cached key, counting one use (call with the lock held)."""
        cached = self._data_keys.get(cache_key)
        if cached is None:
            return None
        if (self._clock() - cached.created_at >= self._key_ttl_s
                or cached.uses >= self._max_uses):
            del self._data_keys[cache_key]
            return None
        self._data_keys.move_to_end(cache_key)
        cached.uses += 1
        return cached.key

    def data_key(self, wrapped: WrappedKey, region: str, producer_id: str) -> DataKey:
        """The DEK behind ``wrapped``: from cache when fresh, else one broker release."""
        cache_key = (wrapped.key_id, region, producer_id)
        with self._lock:
            key = self._cached_data_key(cache_key)
        if key is not None:
            return key

        def fetch() -> DataKey:
            released = self._release(wrapped, region, producer_id)
            with self._lock:
                self._data_keys[cache_key] = _CachedKey(released, wrapped, self._clock())
                self._data_keys.move_to_end(cache_key)
                while len(self._data_keys) > self._max_cached:
                    self._data_keys.popitem(last=False)
            return released

        released = self._single_flight(("data", *cache_key), fetch)
        with self._lock:
            cached = self._data_keys.get(cache_key)
            if cached is not None and cached.key is released:
                cached.uses += 1
        return released

    def _release(self, wrapped: WrappedKey, region: str, producer_id: str) -> DataKey:
        def call(attested: _Attested) -> DataKey:
            self._count("release")
            sealed = self._broker.release(attested.broker_session, wrapped, region, producer_id)
            secret = self._open_sealed(attested, sealed, RELEASE_PURPOSE, wrapped.key_id)
            return DataKey(secret, simulated=attested.simulated)

        return self._with_session(call)

    # -- output keys ----------------------------------------------------------------------
    def output_key(self, region: str, producer_id: str,
                   destination: Mapping[str, object] | None = None
                   ) -> tuple[DataKey, WrappedKey]:
        """A fresh output DEK for (region, producer), reused for N envelopes or T seconds.

        Each call counts as one envelope sealed under the returned key. When the key is used
        up, one thread generates the next; the others wait for it and then take their uses.
        ``destination`` (the outputs' sink and its location, for the broker's ledger) goes
        with the ``generate`` call, and keys are cached per destination: a key whose ledger
        entry names one sink never seals an output bound for another.
        """
        where = "" if destination is None else json.dumps(dict(destination), sort_keys=True)
        cache_key = (region, producer_id, where)
        while True:
            with self._lock:
                cached = self._output_keys.get(cache_key)
                if cached is not None and (self._clock() - cached.created_at < self._key_ttl_s
                                           and cached.uses < self._output_max_envelopes):
                    cached.uses += 1
                    assert cached.wrapped is not None
                    return cached.key, cached.wrapped
                spent = cached

            def refill(spent: _CachedKey | None = spent) -> None:
                with self._lock:
                    if self._output_keys.get(cache_key) is not spent:
                        return                   # another flight refilled it meanwhile
                key, wrapped = self._generate(region, producer_id, destination)
                with self._lock:
                    self._output_keys[cache_key] = _CachedKey(key, wrapped, self._clock())

            self._single_flight(("output", *cache_key), refill)

    def _generate(self, region: str, producer_id: str,
                  destination: Mapping[str, object] | None = None
                  ) -> tuple[DataKey, WrappedKey]:
        def call(attested: _Attested) -> tuple[DataKey, WrappedKey]:
            self._count("generate")
            if destination is None:
                sealed, wrapped = self._broker.generate(attested.broker_session, region,
                                                        producer_id)
            else:
                sealed, wrapped = self._broker.generate(
                    attested.broker_session, region, producer_id, destination=destination)
            secret = self._open_sealed(attested, sealed, GENERATE_PURPOSE, wrapped.key_id)
            return DataKey(secret, simulated=attested.simulated), wrapped

        return self._with_session(call)

    # -- named keys -----------------------------------------------------------------------
    def named_key(self, name: str) -> bytes:
        """A named secret (e.g. ``pseudonym/acme``), cached for the key TTL."""
        with self._lock:
            cached = self._named_keys.get(name)
            if cached is not None and self._clock() - cached[1] < self._key_ttl_s:
                return cached[0]

        def fetch() -> bytes:
            def call(attested: _Attested) -> bytes:
                self._count("release_named")
                sealed = self._broker.release_named(attested.broker_session, name)
                return self._open_sealed(attested, sealed, NAMED_PURPOSE, name)

            secret = self._with_session(call)
            with self._lock:
                self._named_keys[name] = (secret, self._clock())
            return secret

        return self._single_flight(("named", name), fetch)

    # -- custody (provenance statements) ---------------------------------------------------
    def custody_signer(self) -> tuple[StatementSigner, Mapping[str, Any]]:
        """The current attestation's statement signer and the broker's signed attestation
        result that lists its key (``tee_public_keys["provenance"]``): always a matching pair.

        Raises ``KeySessionError`` when the broker gave no signed result (an unpinned client).
        """
        attested = self._session()
        result = getattr(attested.broker_session, "attestation_result", None)
        if attested.statement_signer is None or not isinstance(result, Mapping):
            raise KeySessionError("no signed attestation result for this session (pin the "
                                  "broker identity): custody statements cannot be vouched for")
        return attested.statement_signer, result

    def ledger_head(self) -> Mapping[str, Any] | None:
        """The broker's signed ledger checkpoint taken after this session's latest grant.

        Fetched again only when a grant happened since the last fetch, so an output's
        statement names a head that covers every key release behind it. None when the
        client cannot fetch one (no pinned identity).
        """
        with self._lock:
            cached, grants = self._ledger_head, self._grants
        if cached is not None and cached[0] == grants:
            return cached[1]
        fetch = getattr(self._broker, "ledger_head", None)
        if not callable(fetch):
            return None

        def call() -> Mapping[str, Any] | None:
            self._count("ledger_head")
            try:
                checkpoint = fetch()
            except BrokerRequestError:
                return None                     # no pinned identity: nothing verifiable
            return dict(checkpoint.envelope)

        head = self._single_flight(("ledger_head", str(grants)), call)
        with self._lock:
            if self._ledger_head is None or self._ledger_head[0] <= grants:
                self._ledger_head = (grants, head)
        return head

    def close(self) -> None:
        """Forget every key and the attestation (best effort; Python cannot wipe memory);
        close the broker client too when this session owns it."""
        with self._lock:
            self._data_keys.clear()
            self._output_keys.clear()
            self._named_keys.clear()
            self._attested = None
        if self._owns_broker:
            close = getattr(self._broker, "close", None)
            if callable(close):
                close()
