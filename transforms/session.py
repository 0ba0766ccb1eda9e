"""The worker's key session as the confidential step builds it, bound to one feature spec.

What it does: ``make_key_session`` builds the ``KeySession`` a ``ConfidentialProcess`` worker
uses (broker client, evidence provider, caching limits, a broker-call counter). Its broker
client is a ``SpecBoundBrokerClient``: every ``generate`` (a fresh output DEK) carries the
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

import inspect
import threading
from collections.abc import Callable, Mapping
from typing import Any

from enclave_workers.key_session import KeySession
from envelope import WrappedKey
from keybroker.client import BrokerClient
from keybroker.destinations import DestinationError, destination_record

from .broker_identity import BrokerTrust, pinned_broker_client, resolve_broker_trust
from .errors import TransformConfigError
from .tee import SessionLimits, TeeSettings, make_evidence_provider

__all__ = ["OutputDestinations", "SpecBoundBrokerClient", "acquire_session", "make_key_session",
           "output_destinations", "release_session", "supports_spec_fingerprint"]

SPEC_FINGERPRINT_PARAMETER = "spec_fingerprint"
DESTINATION_PARAMETER = "destination"

OutputDestinations = tuple[tuple[str, str, str, bool], ...]
"""(region, sink URL, verified location, verified) per region, sorted: hashable, picklable."""


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


def _takes_keyword(client: object, name: str) -> bool:
    try:
        parameters = inspect.signature(client.generate).parameters   # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return False
    return name in parameters


def supports_spec_fingerprint(client: object) -> bool:
    """Whether ``client.generate`` takes a ``spec_fingerprint`` keyword."""
    return _takes_keyword(client, SPEC_FINGERPRINT_PARAMETER)


class SpecBoundBrokerClient:
    """A ``BrokerClient`` whose ``generate`` names the feature spec the keys are made for
    and, when known, the destination of the region's outputs."""

    def __init__(self, client: BrokerClient, spec_fingerprint: str,
                 destinations: OutputDestinations = ()) -> None:
        self._client = client
        self._spec_fingerprint = spec_fingerprint
        self._passes_fingerprint = supports_spec_fingerprint(client)
        self._destinations = ({region: {"sink": sink, "location": location, "verified": verified}
                               for region, sink, location, verified in destinations}
                              if _takes_keyword(client, DESTINATION_PARAMETER) else {})

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
        extra: dict[str, Any] = {}
        if self._passes_fingerprint:
            extra[SPEC_FINGERPRINT_PARAMETER] = self._spec_fingerprint
        destination = self._destinations.get(region)
        if destination is not None:
            extra[DESTINATION_PARAMETER] = destination
        return self._client.generate(session, region, producer_id, **extra)

    def release_named(self, session: Any, name: str) -> bytes:
        return self._client.release_named(session, name)

    def ledger_head(self) -> Any:
        """The broker's signed ledger checkpoint (for custody statements)."""
        return self._client.ledger_head()

    def close(self) -> None:
        self._client.close()


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
