"""Route feature outputs to a destination region, read from the output's own bytes.

Usage::

    routed = outputs | RouteByRegion()            # (destination_region, SealedOutput)
    routed = outputs | RouteByRegion({"eu": "eu-west"})   # explicit sink names

The destination is the region whose key the output needs (``output_region``: a sealed
header's region, or a PME file's footer key region), not the element's metadata, optionally
renamed through ``destinations``. ``WriteRegionPinned`` then refuses any destination that is
not that region, so a wrong mapping cannot move data across regions: it only produces dead
letters. An output whose region cannot be read is routed to its claimed region, where the
writer refuses it the same way.

What it does not: it neither writes nor decrypts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import apache_beam as beam

from enclave_workers.batch_processor import SealedOutput

from .errors import TransformError
from .output_region import output_key_region

__all__ = ["RouteByRegion"]


class _RouteFn(beam.DoFn):
    def __init__(self, destinations: Mapping[str, str]) -> None:
        self._destinations = dict(destinations)

    def process(self, output: SealedOutput) -> Iterable[tuple[str, SealedOutput]]:
        try:
            region = output_key_region(output)
        except TransformError:
            region = output.region
        yield self._destinations.get(region, region), output


class RouteByRegion(beam.PTransform):
    """``SealedOutput`` -> ``(destination_region, SealedOutput)``."""

    def __init__(self, destinations: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._destinations = dict(destinations or {})

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "DestinationFromHeader" >> beam.ParDo(_RouteFn(self._destinations))
