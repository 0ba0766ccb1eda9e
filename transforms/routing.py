"""Route sealed feature batches to a destination region, read from the sealed header.

Usage::

    routed = sealed_batches | RouteByRegion()            # (destination_region, SealedOutput)
    routed = sealed_batches | RouteByRegion({"eu": "eu-west"})   # explicit sink names

The destination is taken from the envelope header's region (not from the element's metadata),
optionally renamed through ``destinations``. ``WriteRegionPinned`` then refuses any destination
that is not the header's region, so a wrong mapping cannot move data across regions: it only
produces dead letters.

What it does not: it neither writes nor decrypts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import apache_beam as beam

from enclave_workers.batch_processor import SealedOutput
from envelope import read_header

__all__ = ["RouteByRegion"]


class _RouteFn(beam.DoFn):
    def __init__(self, destinations: Mapping[str, str]) -> None:
        self._destinations = dict(destinations)

    def process(self, output: SealedOutput) -> Iterable[tuple[str, SealedOutput]]:
        header, _ = read_header(output.envelope)
        yield self._destinations.get(header.region, header.region), output


class RouteByRegion(beam.PTransform):
    """``SealedOutput`` -> ``(destination_region, SealedOutput)``."""

    def __init__(self, destinations: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._destinations = dict(destinations or {})

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "DestinationFromHeader" >> beam.ParDo(_RouteFn(self._destinations))
