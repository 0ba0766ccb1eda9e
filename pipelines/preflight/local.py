"""Preflight of a ``file://`` sink: a directory of the machine that runs the pipeline.

What it does: ``check_local_sink`` places the sink at ``local`` (the machine itself) and
refuses it unless the map allows ``local`` for the data's region, and always where the map
requires a customer-managed key (a local directory has none that preflight could verify).

What it does not: look at the disk's encryption or the machine's country.
"""

from __future__ import annotations

from pipelines.residency.locations import LOCAL, location_allowed
from pipelines.residency.residency_map import RegionResidency
from pipelines.residency.sinks import SinkUrl

from .report import SinkCheck

__all__ = ["check_local_sink"]


def check_local_sink(sink: SinkUrl, role: str, region: RegionResidency) -> SinkCheck:
    label = f"{role} {sink.url} of region {region.region}"
    refusal = None
    if not location_allowed(LOCAL, region.locations):
        refusal = f"{label} is on this machine ({LOCAL}); allowed: {', '.join(region.locations)}"
    elif region.require_cmk:
        refusal = (f"{label} is a local directory without a customer-managed key; region "
                   f"{region.region} requires one")
    return SinkCheck(region.region, role, sink.url, LOCAL, "machine", (LOCAL,), "none",
                     refusal)
