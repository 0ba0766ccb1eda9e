"""The broker-side cache of unwrapped DEKs, with single-flight KMS unwraps.

When many workers ask for the same wrapped DEK (every worker of a job reads the same
partner file), the broker would call the KMS once per request. ``DekCache`` keeps each
unwrapped DEK in memory for at most ``max_age_seconds`` and ``max_uses`` hand-outs, within
``max_bytes`` of key material in total (least recently used entries go first), and lets only
one KMS unwrap per (wrapped key, associated data) be in flight: the other requests wait for
that call's result, or its error, instead of calling the KMS themselves.

What it does not do: decide anything. The service asks the release policy on every request
before it reaches the cache, so the cache only saves the KMS call, never a policy decision.
It never writes to disk or to logs; evicted entries are overwritten in memory (best effort:
Python may hold other copies). Errors are not cached: the next request calls the KMS again.

The cache key is the wrapped key's ``key_id`` (SHA-256 over KEK URI, version and ciphertext)
*and* the associated data, so a DEK unwrapped for one region and producer is never handed
out for another: that request goes to the KMS, which refuses it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from threading import Lock

from envelope.keys import WrappedKey
from keybroker.kms.base import KmsError, KmsTransientError
from keybroker.settings_fields import checked_section

__all__ = [
    "DEK_FROM_CACHE",
    "DEK_FROM_KMS",
    "DEK_FROM_SHARED_CALL",
    "DekCache",
    "DekCacheSettings",
    "DekCacheSettingsError",
    "DekCacheStats",
    "UnwrapResult",
    "UnwrapWaitTimeoutError",
]

DEK_FROM_KMS = "kms"  # this request's own KMS call
DEK_FROM_CACHE = "cache"  # a cached DEK
DEK_FROM_SHARED_CALL = "shared"  # waited for another request's KMS call (single-flight)

_FIELDS = {"enabled", "max_age_seconds", "max_uses", "max_bytes", "wait_timeout_seconds"}

KmsUnwrap = Callable[[WrappedKey, bytes], bytes]


class DekCacheSettingsError(KmsError):
    """The ``dek_cache`` settings are malformed; the message names the field."""


class UnwrapWaitTimeoutError(KmsTransientError):
    """Waited too long for another request's KMS unwrap of the same key; try again."""


@dataclass(frozen=True)
class DekCacheSettings:
    """Limits of the cache (broker.yaml ``dek_cache``); ``enabled: false`` turns it off."""

    enabled: bool = True
    max_age_seconds: float = 300.0
    max_uses: int = 1000
    max_bytes: int = 1 << 20
    wait_timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise DekCacheSettingsError("dek_cache.enabled: expected true or false")
        for name, upper in (("max_age_seconds", 86400.0), ("wait_timeout_seconds", 600.0)):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value <= upper:
                raise DekCacheSettingsError(
                    f"dek_cache.{name}: expected a number of seconds in (0, {upper:g}]"
                )
        if not _is_int(self.max_uses) or not 1 <= self.max_uses <= 1_000_000_000:
            raise DekCacheSettingsError("dek_cache.max_uses: expected an integer 1..1000000000")
        if not _is_int(self.max_bytes) or not 0 <= self.max_bytes <= 1 << 30:
            raise DekCacheSettingsError("dek_cache.max_bytes: expected an integer 0..1073741824")

    @classmethod
    def from_mapping(cls, document: object) -> DekCacheSettings:
        """Parse broker.yaml's ``dek_cache`` mapping (``None`` = the defaults)."""
        if document is None:
            return cls()
        document = checked_section(document, "dek_cache", _FIELDS, DekCacheSettingsError)
        return cls(**{str(key): value for key, value in document.items()})

    def to_mapping(self) -> dict[str, object]:
        return {
            "enabled": self.enabled,
            "max_age_seconds": self.max_age_seconds,
            "max_uses": self.max_uses,
            "max_bytes": self.max_bytes,
            "wait_timeout_seconds": self.wait_timeout_seconds,
        }


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class UnwrapResult:
    """An unwrapped secret and where it came from (``kms``, ``cache`` or ``shared``)."""

    secret: bytes = field(repr=False)
    source: str


@dataclass(frozen=True)
class DekCacheStats:
    """Counters for tests and operators; no key material."""

    kms_calls: int
    hits: int
    shared: int
    entries: int
    bytes: int


@dataclass
class _Entry:
    secret: bytearray = field(repr=False)
    created_at: float
    uses: int

    def wipe(self) -> None:
        self.secret[:] = bytes(len(self.secret))


@dataclass
class _Flight:
    """One KMS unwrap in progress and the requests waiting for it."""

    result: Future[bytes] = field(default_factory=Future)
    waiters: int = 0


class DekCache:
    """Unwrapped DEKs by (key_id, aad), bounded by age, uses and bytes. Thread-safe."""

    def __init__(
        self, settings: DekCacheSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = Lock()
        self._entries: OrderedDict[tuple[str, bytes], _Entry] = OrderedDict()
        self._flights: dict[tuple[str, bytes], _Flight] = {}
        self._bytes = 0
        self._kms_calls = 0
        self._hits = 0
        self._shared = 0

    @property
    def settings(self) -> DekCacheSettings:
        return self._settings

    def unwrap(self, wrapped: WrappedKey, aad: bytes, kms_unwrap: KmsUnwrap) -> UnwrapResult:
        """The secret behind ``wrapped`` for ``aad``: cached, shared, or from ``kms_unwrap``."""
        if not self._settings.enabled:
            with self._lock:
                self._kms_calls += 1
            return UnwrapResult(kms_unwrap(wrapped, aad), DEK_FROM_KMS)
        key = (wrapped.key_id, bytes(aad))
        with self._lock:
            hit = self._hit(key)
            if hit is not None:
                return hit
            flight = self._flights.get(key)
            leading = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
                self._kms_calls += 1
            else:
                flight.waiters += 1
                self._shared += 1
        if leading:
            return UnwrapResult(self._lead(key, flight, wrapped, aad, kms_unwrap), DEK_FROM_KMS)
        return UnwrapResult(self._wait(flight), DEK_FROM_SHARED_CALL)

    def cached(self, wrapped: WrappedKey, aad: bytes) -> UnwrapResult | None:
        """The secret if it is cached now (a hit and a use, as ``unwrap`` counts them), else
        None: no KMS call and no wait for one, so the event loop may ask."""
        if not self._settings.enabled:
            return None
        with self._lock:
            return self._hit((wrapped.key_id, bytes(aad)))

    def stats(self) -> DekCacheStats:
        with self._lock:
            return DekCacheStats(
                kms_calls=self._kms_calls,
                hits=self._hits,
                shared=self._shared,
                entries=len(self._entries),
                bytes=self._bytes,
            )

    def clear(self) -> None:
        """Drop (and overwrite) every cached DEK; flights in progress finish normally."""
        with self._lock:
            for entry in self._entries.values():
                entry.wipe()
            self._entries.clear()
            self._bytes = 0

    # -- internals (callers hold the lock where noted) ---------------------------------------

    def _lead(
        self,
        key: tuple[str, bytes],
        flight: _Flight,
        wrapped: WrappedKey,
        aad: bytes,
        kms_unwrap: KmsUnwrap,
    ) -> bytes:
        try:
            secret = bytes(kms_unwrap(wrapped, aad))
        except BaseException as error:
            with self._lock:
                del self._flights[key]
            flight.result.set_exception(error)
            raise
        with self._lock:
            del self._flights[key]
            self._store(key, secret, uses=1 + flight.waiters)
        flight.result.set_result(secret)
        return secret

    def _wait(self, flight: _Flight) -> bytes:
        timeout = self._settings.wait_timeout_seconds
        try:
            return flight.result.result(timeout=timeout)
        except FutureTimeoutError:
            raise UnwrapWaitTimeoutError(
                f"waited {timeout:g}s for the KMS unwrap of this key by another request"
            ) from None

    def _hit(self, key: tuple[str, bytes]) -> UnwrapResult | None:
        """A cached DEK, counted as a hit, or None (lock held)."""
        cached = self._take_cached(key)
        if cached is None:
            return None
        self._hits += 1
        return UnwrapResult(cached, DEK_FROM_CACHE)

    def _take_cached(self, key: tuple[str, bytes]) -> bytes | None:
        """A fresh entry's secret, counting the use (lock held)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() - entry.created_at >= self._settings.max_age_seconds:
            self._evict(key)
            return None
        entry.uses += 1
        secret = bytes(entry.secret)
        if entry.uses >= self._settings.max_uses:
            self._evict(key)
        else:
            self._entries.move_to_end(key)
        return secret

    def _store(self, key: tuple[str, bytes], secret: bytes, *, uses: int) -> None:
        """Keep ``secret`` unless it is used up or too large; evict LRU to fit (lock held)."""
        if uses >= self._settings.max_uses or len(secret) > self._settings.max_bytes:
            return
        if key in self._entries:
            self._evict(key)
        while self._entries and self._bytes + len(secret) > self._settings.max_bytes:
            self._evict(next(iter(self._entries)))
        self._entries[key] = _Entry(bytearray(secret), self._clock(), uses)
        self._bytes += len(secret)

    def _evict(self, key: tuple[str, bytes]) -> None:
        entry = self._entries.pop(key)
        self._bytes -= len(entry.secret)
        entry.wipe()
