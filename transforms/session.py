"""The worker's key session as the confidential step builds it, bound to one feature spec.

What it does: ``make_key_session`` builds the ``KeySession`` a ``ConfidentialProcess`` worker
uses (broker client, evidence provider, caching limits, a broker-call counter). Its broker
client is a ``SpecBoundBrokerClient``: every ``generate`` (a fresh output DEK) carries the
compiled spec's fingerprint, which the broker records in its audit ledger, when the broker
client supports it (``BrokerClient.generate(..., spec_fingerprint=...)``, checked once with
``inspect.signature``); older clients are called without it.

``acquire_session`` / ``release_session`` share one session per tag among the DoFn instances
and threads of a worker process, counting holders: ``DoFn.setup`` acquires, ``teardown``
releases, and the last release closes the session (its keys are forgotten).

What it does not: no key handling of its own; the session opens and caches keys.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

from enclave_workers.key_session import KeySession
from envelope import WrappedKey
from keybroker.client import BrokerClient

from .tee import SessionLimits, TeeSettings, make_evidence_provider

__all__ = ["SpecBoundBrokerClient", "acquire_session", "make_key_session", "release_session",
           "supports_spec_fingerprint"]

SPEC_FINGERPRINT_PARAMETER = "spec_fingerprint"


def supports_spec_fingerprint(client: object) -> bool:
    """Whether ``client.generate`` takes a ``spec_fingerprint`` keyword."""
    try:
        parameters = inspect.signature(client.generate).parameters   # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return False
    return SPEC_FINGERPRINT_PARAMETER in parameters


class SpecBoundBrokerClient:
    """A ``BrokerClient`` whose ``generate`` names the feature spec the keys are made for."""

    def __init__(self, client: BrokerClient, spec_fingerprint: str) -> None:
        self._client = client
        self._spec_fingerprint = spec_fingerprint
        self._passes_fingerprint = supports_spec_fingerprint(client)

    @property
    def records_spec_fingerprint(self) -> bool:
        return self._passes_fingerprint

    def challenge(self) -> bytes:
        return self._client.challenge()

    def attest(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.attest(*args, **kwargs)

    def release(self, session: Any, wrapped_key: WrappedKey, region: str,
                producer_id: str) -> bytes:
        return self._client.release(session, wrapped_key, region, producer_id)

    def generate(self, session: Any, region: str, producer_id: str) -> tuple[bytes, WrappedKey]:
        if self._passes_fingerprint:
            return self._client.generate(session, region, producer_id,
                                         spec_fingerprint=self._spec_fingerprint)
        return self._client.generate(session, region, producer_id)

    def release_named(self, session: Any, name: str) -> bytes:
        return self._client.release_named(session, name)

    def close(self) -> None:
        self._client.close()


def make_key_session(broker_url: str, tee: TeeSettings, limits: SessionLimits, *,
                     spec_fingerprint: str, output_key_max_envelopes: int | None = None,
                     on_broker_call: Callable[[str], None] | None = None) -> KeySession:
    """A key session for one worker; ``output_key_max_envelopes`` overrides the limit."""
    broker = SpecBoundBrokerClient(BrokerClient(broker_url), spec_fingerprint)
    return KeySession(
        broker,   # type: ignore[arg-type]   (the same calls as BrokerClient)
        make_evidence_provider(tee),
        key_ttl_s=limits.key_ttl_s,
        max_uses_per_key=limits.max_uses_per_key,
        max_cached_keys=limits.max_cached_keys,
        output_key_max_envelopes=(output_key_max_envelopes
                                  if output_key_max_envelopes is not None
                                  else limits.output_key_max_envelopes),
        on_broker_call=on_broker_call,
        owns_broker=True,
    )


_POOL_LOCK = threading.Lock()
_POOL: dict[str, list[Any]] = {}          # tag -> [session, holders]


def acquire_session(tag: str, factory: Callable[[], KeySession]) -> KeySession:
    """The process's session for ``tag``, made by ``factory`` on first use; one more holder.

    ``factory`` makes no network call (a session attests on first use), so holding the pool
    lock while it runs stalls nobody.
    """
    with _POOL_LOCK:
        entry = _POOL.get(tag)
        if entry is None:
            entry = _POOL[tag] = [factory(), 0]
        entry[1] += 1
        return entry[0]


def release_session(tag: str) -> None:
    """One holder less; the last one closes the session and drops it from the pool."""
    with _POOL_LOCK:
        entry = _POOL.get(tag)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _POOL[tag]
    entry[0].close()
