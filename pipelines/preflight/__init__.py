"""Preflight: before any data moves, check where each sink and worker really is.

What it does: one module per store — ``local`` (``file://``), ``gcs`` (bucket location and
location type, dual-/multi-regions expanded to member regions, default KMS key), ``azure``
(storage account location, replication SKU and secondary, encryption key source and
container encryption scope, through the management API) — plus ``workers`` (Dataflow's
``--region``/``--worker_region``/``--worker_zone``, or this machine's ``--worker_location``)
and ``run`` (``run_preflight``), which collects them into a ``PreflightReport``. Any mismatch
refuses the run with one line naming the sink or worker, where it is, and what is allowed.

What it does not: attest workers (the broker's release policy checks attested locations).
"""

from __future__ import annotations

from .job import job_residency, preflight_job, runs_on_dataflow
from .report import PreflightRefused, PreflightReport, SinkCheck, WorkerCheck
from .run import PreflightClients, run_preflight
from .workers import check_dataflow_workers, check_local_workers, check_worker_location

__all__ = [
    "PreflightClients",
    "PreflightRefused",
    "PreflightReport",
    "SinkCheck",
    "WorkerCheck",
    "check_dataflow_workers",
    "check_local_workers",
    "check_worker_location",
    "job_residency",
    "preflight_job",
    "run_preflight",
    "runs_on_dataflow",
]
