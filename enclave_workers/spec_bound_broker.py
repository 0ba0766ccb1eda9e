"""The broker client a worker's key session uses, bound to the feature spec it runs.

Why: the broker records, in its audit ledger, which compiled spec each fresh output DEK was
made for and where its outputs go. The in-process confidential step (``transforms.session``)
and the pool worker (``enclave_workers.pool.worker``) both hand their ``KeySession`` this one
wrapper, so both name the same facts the same way.

What it does: ``SpecBoundBrokerClient`` passes every call through to the ``BrokerClient``;
its ``generate`` adds the spec's fingerprint when the client takes a ``spec_fingerprint``
keyword (checked once with ``inspect.signature``; older clients are called without it), and
the outputs' ``destination``: the one the caller names (the pool worker's per-request
destination), else the region's row of the run's ``OutputDestinations``, which goes only to a
client that takes the keyword.

What it does not: no key handling; no Beam (``enclave_workers`` never imports it).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from envelope import WrappedKey
from keybroker.client import BrokerClient

__all__ = [
    "DESTINATION_PARAMETER",
    "SPEC_FINGERPRINT_PARAMETER",
    "OutputDestinations",
    "SpecBoundBrokerClient",
    "supports_spec_fingerprint",
]

SPEC_FINGERPRINT_PARAMETER = "spec_fingerprint"
DESTINATION_PARAMETER = "destination"

OutputDestinations = tuple[tuple[str, str, str, bool], ...]
"""(region, sink URL, verified location, verified) per region, sorted: hashable, picklable."""


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

    def generate(self, session: Any, region: str, producer_id: str,
                 destination: Mapping[str, object] | None = None) -> tuple[bytes, WrappedKey]:
        """A fresh output DEK; a named ``destination`` is always passed on (a client that
        cannot record it fails the call rather than the ledger silently missing it)."""
        extra: dict[str, Any] = {}
        if self._passes_fingerprint:
            extra[SPEC_FINGERPRINT_PARAMETER] = self._spec_fingerprint
        if destination is None:
            destination = self._destinations.get(region)
        if destination is not None:
            extra[DESTINATION_PARAMETER] = destination
        return self._client.generate(session, region, producer_id, **extra)

    def release_named(self, session: Any, name: str) -> bytes:
        return self._client.release_named(session, name)

    def ledger_head(self) -> Any:
        """The broker's signed ledger head (each custody statement embeds one)."""
        return self._client.ledger_head()

    def close(self) -> None:
        self._client.close()
