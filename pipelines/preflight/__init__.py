"""Preflight: before any data moves, check where each sink and worker really is.

What it does: one module per store — ``local`` (``file://``), ``gcs`` (bucket location and
location type, dual-/multi-regions expanded to member regions, default KMS key), ``azure``
(storage account location, replication SKU and secondary, encryption key source and
container encryption scope, through the management API) — plus ``keks`` (where each region's
KEK is: Cloud KMS, Key Vault, or a local/PKCS#11 key where the map accepts one), ``workers``
(Dataflow's ``--region``/``--worker_region``/``--worker_zone``, or this machine's
``--worker_location``), ``pool`` (in remote mode, each pool endpoint attested and its attested
location checked) and ``run`` (``run_preflight``), which collects them into a
``PreflightReport``. Any mismatch refuses the run with one line naming the sink, KEK or
worker, where it is, and what is allowed.

What it does not: release keys (the broker's release policy checks every worker's attested
location again when it asks for a key).
"""

from __future__ import annotations

from .job import job_residency, preflight_job, runs_on_dataflow
from .keks import KekCheck, check_kek
from .pool import check_pool_workers, pool_location_patterns
from .report import PreflightRefused, PreflightReport, SinkCheck, WorkerCheck
from .run import PreflightClients, run_preflight
from .workers import check_dataflow_workers, check_local_workers, check_worker_location

__all__ = [
    "KekCheck",
    "PreflightClients",
    "PreflightRefused",
    "PreflightReport",
    "SinkCheck",
    "WorkerCheck",
    "check_dataflow_workers",
    "check_kek",
    "check_local_workers",
    "check_pool_workers",
    "check_worker_location",
    "job_residency",
    "pool_location_patterns",
    "preflight_job",
    "run_preflight",
    "runs_on_dataflow",
]
