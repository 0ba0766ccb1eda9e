"""Preflight of one pipeline job from its options: the map it writes by, then every check.

What it does: ``job_residency(options)`` loads ``--residency_map``, or derives the embedded
default's map from ``--output_root`` (one of the two, not both); ``preflight_job(options,
clients)`` runs ``run_preflight`` for the job's regions (``--regions``) with the worker
check of its runner — Dataflow's ``--region``/``--worker_region``/``--worker_zone`` when
``--runner`` names Dataflow, else this machine at ``--worker_location``; in remote mode
(``--pool_endpoints``/``--pool_discovery``) every pool worker's attested location
(``pool``) instead of this machine's — and raises
``PreflightRefused`` (one line) on any mismatch. Pipelines call it while they are built,
before any data moves.

What it does not: launch anything or attest workers.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from apache_beam.options.pipeline_options import (
    AzureOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
    WorkerOptions,
)

from pipelines.confidential_mode import remote_mode
from pipelines.errors import PipelineError
from pipelines.options import SealbeamOptions
from pipelines.residency.locations import LOCAL
from pipelines.residency.residency_map import ResidencyMap

from .pool import pool_worker_checks
from .report import PreflightRefused, PreflightReport, WorkerCheck
from .run import PreflightClients, run_preflight
from .workers import check_dataflow_workers, check_local_workers

__all__ = ["azure_account_of", "job_residency", "preflight_job", "runs_on_dataflow"]


def job_residency(options: PipelineOptions, regions: frozenset[str]) -> ResidencyMap:
    """The job's map: ``--residency_map``, or one derived from ``--output_root``."""
    path = getattr(options, "residency_map", None)
    output_root = getattr(options, "output_root", None)
    if path and output_root:
        raise PipelineError("give --residency_map or --output_root, not both (the map names "
                            "every region's sinks)")
    if path:
        return ResidencyMap.load(path)
    if output_root:
        return ResidencyMap.from_output_root(str(output_root), regions)
    raise PipelineError("--residency_map (or, for local runs, --output_root) is required")


def runs_on_dataflow(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__ if runner else ""
    return "dataflow" in name.lower()


def _worker_checks(options: PipelineOptions, residency: ResidencyMap,
                   regions: frozenset[str]) -> tuple[WorkerCheck, ...]:
    if remote_mode(options.view_as(SealbeamOptions)):   # the pool decrypts: its attested
        runner = (check_dataflow_workers(             # locations, and Dataflow's flags
            options.view_as(GoogleCloudOptions).region,
            options.view_as(WorkerOptions).worker_region,
            options.view_as(WorkerOptions).worker_zone, residency, regions)
            if runs_on_dataflow(options) else ())
        if any(check.refusal for check in runner):   # refused already: ask no pool
            return runner
        return (*runner, *pool_worker_checks(options, residency, regions))
    if runs_on_dataflow(options):
        workers = options.view_as(WorkerOptions)
        return check_dataflow_workers(options.view_as(GoogleCloudOptions).region,
                                      workers.worker_region, workers.worker_zone, residency,
                                      regions)
    location = getattr(options, "worker_location", None) or LOCAL
    return check_local_workers(location, residency, regions)


def azure_account_of(connection_string: str | None, endpoint: str | None) -> str | None:
    """The storage account Beam's ``azfs`` filesystem will write to: ``AccountName`` of the
    connection string, or the account of ``--blob_service_endpoint``
    (``https://ACCOUNT.blob.core.windows.net``, or an emulator's ``http://host:port/ACCOUNT``)."""
    if connection_string:
        fields = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
        return fields.get("AccountName") or None
    if endpoint:
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        if host.endswith(".blob.core.windows.net"):
            return host.split(".", 1)[0]
        return parts.path.strip("/").split("/", 1)[0] or None
    return None


def _azure_account_refusal(options: PipelineOptions, residency: ResidencyMap,
                           regions: frozenset[str]) -> str | None:
    """Beam's ``azfs`` writes every ``azfs://ACCOUNT/...`` path through ONE client (its
    connection string or endpoint), whatever account the path names: so a job's Azure sinks
    must all be in that one account, or data would land in another account than preflight
    checked."""
    sinks = [sink for name in sorted(regions) if name in residency.regions
             for sink in (residency.regions[name].sink, residency.regions[name].dead_letter_sink)]
    sinks.append(residency.unrouted_dead_letter_sink)
    accounts = sorted({sink.store for sink in sinks if sink.kind == "azure"})
    if not accounts:
        return None
    azure = options.view_as(AzureOptions)
    writes_to = azure_account_of(
        azure.azure_connection_string or os.environ.get("AZURE_STORAGE_CONNECTION_STRING"),
        azure.blob_service_endpoint)
    if len(accounts) > 1:
        return (f"this job's Azure sinks are in storage accounts {', '.join(accounts)}; Beam's "
                "azfs filesystem writes to one account per pipeline: run one job per account")
    if writes_to != accounts[0]:
        return (f"Azure sinks are in storage account {accounts[0]}, but Beam's azfs "
                f"filesystem would write to {writes_to or 'no account'} "
                "(--azure_connection_string / --blob_service_endpoint)")
    return None


def preflight_job(options: PipelineOptions, residency: ResidencyMap, regions: frozenset[str],
                  clients: PreflightClients | None = None) -> PreflightReport:
    """Every check of the job; raises ``PreflightRefused`` with the first refusal."""
    workers = () if residency.derived else _worker_checks(options, residency, regions)
    refusal = None if residency.derived else _azure_account_refusal(options, residency, regions)
    if refusal is not None:
        raise PreflightRefused(f"preflight refused: {refusal}")
    report = run_preflight(residency, regions, workers, clients)
    report.raise_if_refused()
    return report
