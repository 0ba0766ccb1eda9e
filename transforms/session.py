"""The worker's key session as the confidential step builds it, bound to one feature spec.

What it does: ``make_key_session`` builds the ``KeySession`` a ``ConfidentialProcess`` worker
uses (broker client, evidence provider, caching limits, a broker-call counter). Its broker
client is a ``SpecBoundBrokerClient`` (``enclave_workers.spec_bound_broker``, shared with the
pool worker): every ``generate`` (a fresh output DEK) carries the
compiled spec's fingerprint, which the broker records in its audit ledger, when the broker
client supports it (``BrokerClient.generate(..., spec_fingerprint=...)``, checked once with
``inspect.signature``); older clients are called without it. Given the run's output
destinations (per region: its sink, the location preflight verified, whether it was read from
the store), each ``generate`` for a region also carries that region's ``destination``, which
the broker writes into the ledger entry of the key, when the client takes the keyword.

``acquire_session`` / ``release_session`` share one session per tag among the DoFn instances
and threads of a worker process, counting holders: ``DoFn.setup`` acquires, ``teardown``
releases, and the last release closes the session (its keys are forgotten).

What it does not: no key handling of its own; the session opens and caches keys.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from enclave_workers.key_session import KeySession
from enclave_workers.spec_bound_broker import (
    OutputDestinations,
    SpecBoundBrokerClient,
    supports_spec_fingerprint,
)
from keybroker.destinations import DestinationError, destination_record

from .broker_identity import BrokerTrust, pinned_broker_client, resolve_broker_trust
from .errors import TransformConfigError
from .tee import SessionLimits, TeeSettings, make_evidence_provider

__all__ = ["OutputDestinations", "SpecBoundBrokerClient", "acquire_session", "make_key_session",
           "output_destinations", "release_session", "supports_spec_fingerprint"]


def output_destinations(facts: Mapping[str, Mapping[str, object]] | None) -> OutputDestinations:
    """``{region: {"sink", "location", "verified"}}`` as ``OutputDestinations``, each checked
    as the broker will (``TransformConfigError`` naming the region if one is malformed)."""
    rows = []
    for region, fact in sorted((facts or {}).items()):
        try:
            record = destination_record(fact.get("sink"), fact.get("location"),
                                        fact.get("verified"))
        except DestinationError as error:
            raise TransformConfigError(f"output destination of region {region!r}: {error}"
                                       ) from None
        rows.append((region, str(record["sink"]), str(record["location"]),
                     bool(record["verified"])))
    return tuple(rows)


def make_key_session(broker_url: str, tee: TeeSettings, limits: SessionLimits, *,
                     spec_fingerprint: str, output_key_max_envelopes: int | None = None,
                     on_broker_call: Callable[[str], None] | None = None,
                     broker_trust: BrokerTrust | None = None,
                     destinations: OutputDestinations = ()) -> KeySession:
    """A key session for one worker; ``output_key_max_envelopes`` overrides the limit.

    Its client pins the broker identity of ``broker_trust`` (by default the one beside the
    simulated TEE's dev chain) and refuses any grant that key did not sign; ``destinations``
    go with each region's ``generate`` into the broker's ledger.
    """
    trust = resolve_broker_trust(broker_trust, tee)
    broker = SpecBoundBrokerClient(pinned_broker_client(broker_url, trust), spec_fingerprint,
                                   destinations)
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
