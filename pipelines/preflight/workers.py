"""Preflight of where the workers run: Dataflow's region flags, or this machine.

What it does: ``check_dataflow_workers(region, worker_region, worker_zone, ...)`` is a pure
function over the Dataflow flags: each flag given (``--region``, where the job's metadata and
by default its workers are; ``--worker_region``; ``--worker_zone``, reduced to its region) must
be a worker location every region of the job allows; a job that names none is refused.
``check_local_workers(location, ...)`` does the same for workers on the machine that runs the
pipeline (``--worker_location``, default ``local``). Each returns one ``WorkerCheck`` per
location, with a one-line refusal naming the worker, where it is and what is allowed.

What it does not: launch or query Dataflow, or attest anything: the broker's release policy
(``worker_locations`` rules) checks the attested location of each worker when it asks for keys.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipelines.residency.locations import location_allowed, zone_region
from pipelines.residency.residency_map import ResidencyMap

from .report import WorkerCheck

__all__ = ["check_dataflow_workers", "check_local_workers", "check_worker_location"]


def check_worker_location(location: str, source: str, residency: ResidencyMap,
                          regions: Iterable[str]) -> WorkerCheck:
    """Is ``location`` a worker location of every region in ``regions``?"""
    for name in sorted(regions):
        region = residency.regions.get(name)
        if region is None:
            continue
        if not location_allowed(location, region.worker_locations):
            return WorkerCheck(location, source, (
                f"workers ({source}) are in {location}; region {name} allows workers in "
                f"{', '.join(region.worker_locations)}"))
    return WorkerCheck(location, source)


def check_dataflow_workers(region: str | None, worker_region: str | None,
                           worker_zone: str | None, residency: ResidencyMap,
                           regions: Iterable[str]) -> tuple[WorkerCheck, ...]:
    """The Dataflow flags against the map (see the module docstring)."""
    regions = tuple(regions)
    flags = [(f"Dataflow --region {region}", region),
             (f"Dataflow --worker_region {worker_region}", worker_region),
             (f"Dataflow --worker_zone {worker_zone}",
              zone_region(worker_zone) if worker_zone else None)]
    checks = tuple(check_worker_location(value.lower(), source, residency, regions)
                   for source, value in flags if value)
    if not checks:
        return (WorkerCheck("unknown", "Dataflow", "the Dataflow job names no --region, "
                            "--worker_region or --worker_zone; its workers' location is "
                            "unknown"),)
    return checks


def check_local_workers(location: str, residency: ResidencyMap, regions: Iterable[str]
                        ) -> tuple[WorkerCheck, ...]:
    """Workers on this machine, at ``location`` (``--worker_location``)."""
    return (check_worker_location(location.lower(), f"this machine, --worker_location "
                                  f"{location}", residency, regions),)
