"""The worker's key session: attest once, then obtain and cache data keys from the broker.

What it does: on first use it makes an in-memory TEE key pair, asks the broker for a
challenge, binds (nonce, TEE public key) into report_data, collects evidence from the
provider and attests. Released keys arrive HPKE-sealed to the TEE key and are opened here.
Data keys are cached per (key id, region, producer) with a TTL, a use limit and an LRU bound
(the AWS Encryption SDK's caching limits); output keys from ``generate`` are reused for at
most N envelopes or T seconds; named keys (e.g. ``pseudonym/acme``) are cached with the TTL.
The session re-attests when the broker session expires, and once when the broker says the
session is no longer valid. Broker calls are counted.

What it does not: it never writes a key to disk, never logs key bytes, and does not decide
policy — a denial from the broker is raised to the caller as the broker's typed error.
Thread-safe: one session serves every thread of a worker process.
"""

from __future__ import annotations

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
)

from .evidence.base import EvidenceProvider

SESSION_EXPIRY_MARGIN_S = 5.0
BROKER_CALL_KINDS = ("challenge", "attest", "release", "generate", "release_named")


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
        self._lock = threading.RLock()
        self._attested: _Attested | None = None
        self._data_keys: OrderedDict[tuple[str, str, str], _CachedKey] = OrderedDict()
        self._output_keys: dict[tuple[str, str], _CachedKey] = {}
        self._named_keys: dict[str, tuple[bytes, float]] = {}
        self._calls = dict.fromkeys(BROKER_CALL_KINDS, 0)
        self._attestations = 0

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
        with self._lock:
            return self._ensure_attested().simulated

    def _count(self, kind: str) -> None:
        self._calls[kind] += 1
        if self._on_broker_call is not None:
            self._on_broker_call(kind)

    # -- attestation ----------------------------------------------------------------------
    def _attest(self) -> _Attested:
        tee_keys = TeeKeyPair.generate()
        public_key = tee_keys.public_bytes()
        self._count("challenge")
        nonce = self._broker.challenge()
        evidence = self._provider.collect(report_data_binding(nonce, public_key))
        self._count("attest")
        broker_session = self._broker.attest(
            nonce, evidence.tee, evidence.evidence, dict(evidence.endorsements), public_key
        )
        self._attestations += 1
        simulated = bool(getattr(broker_session, "simulated", False)) or bool(
            getattr(self._provider, "simulated", False)
        )
        expires_at = _as_epoch_seconds(broker_session.expires_at)
        return _Attested(tee_keys, broker_session, expires_at, simulated)

    def _ensure_attested(self) -> _Attested:
        attested = self._attested
        if attested is None or self._clock() >= attested.expires_at - SESSION_EXPIRY_MARGIN_S:
            self._attested = attested = self._attest()
        return attested

    def _with_session(self, call: Callable[[_Attested], Any]) -> Any:
        """Run a broker call; re-attest once if the broker no longer accepts the session."""
        attested = self._ensure_attested()
        try:
            return call(attested)
        except BrokerAuthError:
            self._attested = attested = self._attest()
            return call(attested)

    def _open_sealed(self, attested: _Attested, sealed: bytes, purpose: str, key_id: str) -> bytes:
        try:
            return attested.tee_keys.open(sealed, release_info(purpose, key_id))
        except KeyTransportError:
            raise KeyUnsealError(f"sealed {purpose} {key_id[:16]}... did not open with the "
                                 "session's TEE key") from None

    # -- data keys ------------------------------------------------------------------------
    def data_key(self, wrapped: WrappedKey, region: str, producer_id: str) -> DataKey:
        """The DEK behind ``wrapped``: from cache when fresh, else one broker release."""
        cache_key = (wrapped.key_id, region, producer_id)
        with self._lock:
            now = self._clock()
            cached = self._data_keys.get(cache_key)
            if cached is not None and (now - cached.created_at >= self._key_ttl_s
                                       or cached.uses >= self._max_uses):
                del self._data_keys[cache_key]
                cached = None
            if cached is None:
                cached = _CachedKey(self._release(wrapped, region, producer_id), wrapped, now)
                self._data_keys[cache_key] = cached
                while len(self._data_keys) > self._max_cached:
                    self._data_keys.popitem(last=False)
            else:
                self._data_keys.move_to_end(cache_key)
            cached.uses += 1
            return cached.key

    def _release(self, wrapped: WrappedKey, region: str, producer_id: str) -> DataKey:
        def call(attested: _Attested) -> DataKey:
            self._count("release")
            sealed = self._broker.release(attested.broker_session, wrapped, region, producer_id)
            secret = self._open_sealed(attested, sealed, RELEASE_PURPOSE, wrapped.key_id)
            return DataKey(secret, simulated=attested.simulated)

        return self._with_session(call)

    # -- output keys ----------------------------------------------------------------------
    def output_key(self, region: str, producer_id: str) -> tuple[DataKey, WrappedKey]:
        """A fresh output DEK for (region, producer), reused for N envelopes or T seconds.

        Each call counts as one envelope sealed under the returned key.
        """
        cache_key = (region, producer_id)
        with self._lock:
            now = self._clock()
            cached = self._output_keys.get(cache_key)
            if cached is None or (now - cached.created_at >= self._key_ttl_s
                                  or cached.uses >= self._output_max_envelopes):
                key, wrapped = self._generate(region, producer_id)
                cached = _CachedKey(key, wrapped, now)
                self._output_keys[cache_key] = cached
            cached.uses += 1
            assert cached.wrapped is not None
            return cached.key, cached.wrapped

    def _generate(self, region: str, producer_id: str) -> tuple[DataKey, WrappedKey]:
        def call(attested: _Attested) -> tuple[DataKey, WrappedKey]:
            self._count("generate")
            sealed, wrapped = self._broker.generate(attested.broker_session, region, producer_id)
            secret = self._open_sealed(attested, sealed, GENERATE_PURPOSE, wrapped.key_id)
            return DataKey(secret, simulated=attested.simulated), wrapped

        return self._with_session(call)

    # -- named keys -----------------------------------------------------------------------
    def named_key(self, name: str) -> bytes:
        """A named secret (e.g. ``pseudonym/acme``), cached for the key TTL."""
        with self._lock:
            now = self._clock()
            cached = self._named_keys.get(name)
            if cached is not None and now - cached[1] < self._key_ttl_s:
                return cached[0]

            def call(attested: _Attested) -> bytes:
                self._count("release_named")
                sealed = self._broker.release_named(attested.broker_session, name)
                return self._open_sealed(attested, sealed, NAMED_PURPOSE, name)

            secret = self._with_session(call)
            self._named_keys[name] = (secret, now)
            return secret

    def close(self) -> None:
        """Forget every key and the attestation (best effort; Python cannot wipe memory)."""
        with self._lock:
            self._data_keys.clear()
            self._output_keys.clear()
            self._named_keys.clear()
            self._attested = None
