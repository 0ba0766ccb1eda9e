"""Run preflight over a residency map: every sink of the job's regions, then the workers.

What it does: ``run_preflight(residency, regions, workers, clients)`` checks each region's
output sink and dead-letter sink with the check of its kind (``local``, ``gcs``, ``azure``)
and the unrouted dead-letter sink (it must be where some region of the job allows data), each
region's KEK (``keks``), adds the worker checks, and returns a ``PreflightReport``;
``raise_if_refused`` turns the first refusal into one line. ``PreflightClients`` builds
the cloud clients lazily — by default
``google.cloud.storage.Client()`` (Application Default Credentials) and
``azure.mgmt.storage.StorageManagementClient(DefaultAzureCredential(), subscription)``,
``google.cloud.kms_v1.KeyManagementServiceClient()`` and
``azure.mgmt.keyvault.KeyVaultManagementClient(DefaultAzureCredential(), subscription)`` — so
tests pass clients pointed at local servers, and a map with only ``file://`` sinks needs no
cloud package at all. A map derived from ``--output_root`` is not checked: its report says
``verified: false``.

What it does not: write or create anything; a missing bucket or account is a refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.residency.residency_map import RegionResidency, ResidencyMap
from pipelines.residency.sinks import AZURE, FILE, GCS, SinkUrl

from .azure import check_azure_sink
from .gcs import check_gcs_sink
from .keks import check_kek
from .local import check_local_sink
from .report import PreflightRefused, PreflightReport, SinkCheck, WorkerCheck

__all__ = ["PreflightClients", "run_preflight"]

UNROUTED = "(unrouted)"


def default_gcs_client() -> Any:
    from google.cloud import storage

    return storage.Client()


def default_kms_client() -> Any:
    from google.cloud import kms_v1

    return kms_v1.KeyManagementServiceClient()


def default_key_vault_client(subscription_id: str) -> Any:
    from azure.identity import DefaultAzureCredential
    from azure.mgmt.keyvault import KeyVaultManagementClient

    return KeyVaultManagementClient(DefaultAzureCredential(), subscription_id)


def default_azure_client(subscription_id: str) -> Any:
    from azure.identity import DefaultAzureCredential
    from azure.mgmt.storage import StorageManagementClient

    return StorageManagementClient(DefaultAzureCredential(), subscription_id)


@dataclass
class PreflightClients:
    """Factories of the clients preflight uses; each is built once, on first use."""

    gcs: Callable[[], Any] = default_gcs_client
    azure: Callable[[str], Any] = default_azure_client
    kms: Callable[[], Any] = default_kms_client
    key_vault: Callable[[str], Any] = default_key_vault_client
    _built: dict[str, Any] = field(default_factory=dict, repr=False)

    def kms_client(self) -> Any:
        if "kms" not in self._built:
            self._built["kms"] = _built("Cloud KMS", self.kms)
        return self._built["kms"]

    def key_vault_client(self, subscription_id: str) -> Any:
        key = f"keyvault:{subscription_id}"
        if key not in self._built:
            self._built[key] = _built(f"Azure Key Vault management ({subscription_id})",
                                      lambda: self.key_vault(subscription_id))
        return self._built[key]

    def gcs_client(self) -> Any:
        if "gcs" not in self._built:
            self._built["gcs"] = _built("Google Cloud Storage", self.gcs)
        return self._built["gcs"]

    def azure_client(self, subscription_id: str) -> Any:
        key = f"azure:{subscription_id}"
        if key not in self._built:
            self._built[key] = _built(f"Azure Storage management ({subscription_id})",
                                      lambda: self.azure(subscription_id))
        return self._built[key]


def _built(what: str, factory: Callable[[], Any]) -> Any:
    """A client, or a one-line refusal: preflight fails closed when it cannot ask."""
    try:
        return factory()
    except Exception as exc:  # a missing package, no credentials, a bad endpoint
        message = (str(exc).splitlines() or [""])[0][:200]
        raise PreflightRefused(f"preflight refused: no {what} client to check with "
                               f"({type(exc).__name__}: {message})") from None


def run_preflight(residency: ResidencyMap, regions: Iterable[str],
                  workers: Sequence[WorkerCheck] = (),
                  clients: PreflightClients | None = None) -> PreflightReport:
    """Check every sink of ``regions`` (and the unrouted sink); see the module docstring."""
    job_regions = [residency.regions[r] for r in sorted(regions) if r in residency.regions]
    if residency.derived:
        return PreflightReport(
            tuple(_unverified(r.region, role, sink) for r in job_regions
                  for role, sink in (("sink", r.sink), ("dead_letter_sink", r.dead_letter_sink))),
            tuple(workers), verified=False,
            notes=("map derived from --output_root: sinks share one root and their "
                   "locations are not verified; pass --residency_map to pin regions",))
    clients = clients or PreflightClients()
    checks = []
    for region in job_regions:
        checks.append(_check(region.sink, "sink", region, residency, clients))
        checks.append(_check(region.dead_letter_sink, "dead_letter_sink", region, residency,
                             clients))
    if job_regions:
        quarantine = RegionResidency(
            region=UNROUTED,
            locations=tuple(dict.fromkeys(loc for r in job_regions for loc in r.locations)),
            kek=None, sink=residency.unrouted_dead_letter_sink,
            dead_letter_sink=residency.unrouted_dead_letter_sink, worker_locations=(),
            require_cmk=any(r.require_cmk for r in job_regions))
        checks.append(_check(quarantine.sink, "unrouted_dead_letter_sink", quarantine,
                             residency, clients))
    keks = tuple(found for region in job_regions
                 if (found := check_kek(region, residency, clients.kms_client,
                                        clients.key_vault_client)) is not None)
    return PreflightReport(tuple(checks), tuple(workers), keks=keks)


def _check(sink: SinkUrl, role: str, region: RegionResidency, residency: ResidencyMap,
           clients: PreflightClients) -> SinkCheck:
    if sink.kind == FILE:
        return check_local_sink(sink, role, region)
    if sink.kind == GCS:
        return check_gcs_sink(sink, role, region, clients.gcs_client())
    if sink.kind == AZURE:
        where = residency.azure_accounts[sink.store]
        client = clients.azure_client(where.subscription_id)
        return check_azure_sink(sink, role, region, client, where)
    raise AssertionError(f"unknown sink kind {sink.kind!r}")


def _unverified(region: str, role: str, sink: SinkUrl) -> SinkCheck:
    return SinkCheck(region, role, sink.url, "unverified", "", (), "unverified")
