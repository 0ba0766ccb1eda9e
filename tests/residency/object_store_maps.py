"""Residency maps over the object-store emulators, shared by the batch and streaming tests.

Buckets ``sb-<region>-out``/``sb-<region>-dl`` (and ``sb-quarantine``) on
``gcp-storage-emulator``, containers ``<region>-out``/``<region>-dl`` on Azurite; a map that
puts each region on the store ``placement`` names; the metadata server's answers for them
(each store in the region's own location); and listings of everything the stores hold.
``placed_stores`` is the set-up every test over the emulators starts with.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pipelines.preflight import PreflightClients
from tests.enclave_workers.broker_env import BrokerEnv
from tests.support.metadata_servers import (
    MetadataServer,
    azure_account,
    azure_container,
    azure_management_client,
    gcs_bucket,
    gcs_client,
    metadata_server,
)
from tests.support.object_stores import AzuriteServer

SUB = "00000000-0000-0000-0000-0000000000aa"
BUCKETS = ("sb-eu-out", "sb-eu-dl", "sb-us-out", "sb-us-dl", "sb-quarantine")
CONTAINERS = ("eu-out", "eu-dl", "us-out", "us-dl")
GCS_LOCATION = {"eu": "EUROPE-WEST4", "us": "US-CENTRAL1"}
AZURE_LOCATION = {"eu": "westeurope", "us": "eastus"}


@contextmanager
def emulator_stores(gcs_emulator: str, azurite: AzuriteServer, credentials: Path
                    ) -> Iterator[tuple[Any, Any]]:
    """Emulator buckets and containers; the GCS client environment for Beam's gcsio."""
    # An authorized-user credential with a token valid until 2099: Beam's gcsio finds it as
    # Application Default Credentials without any network call (the emulator ignores it).
    credentials.write_text(json.dumps({
        "type": "authorized_user", "client_id": "test", "client_secret": "test",
        "refresh_token": "test", "token": "emulator", "expiry": "2099-01-01T00:00:00Z"}))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STORAGE_EMULATOR_HOST", f"http://{gcs_emulator}")
        env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
        env.setenv("GOOGLE_CLOUD_PROJECT", "sealbeam-test")
        from azure.storage.blob import BlobServiceClient
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        gcs = storage.Client(project="sealbeam-test", credentials=AnonymousCredentials())
        for name in BUCKETS:        # the emulators live for the session: made once
            if gcs.lookup_bucket(name) is None:
                gcs.create_bucket(name)
        blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
        for name in CONTAINERS:
            if not blobs.get_container_client(name).exists():
                blobs.create_container(name)
        yield gcs, blobs


def sinks(region: str, store: str, account: str) -> dict[str, str]:
    if store == "gcs":
        return {"sink": f"gs://sb-{region}-out/features", "dead_letter_sink":
                f"gs://sb-{region}-dl/dl"}
    return {"sink": f"azfs://{account}/{region}-out/features",
            "dead_letter_sink": f"abfs://{region}-dl@{account}.dfs.core.windows.net/dl"}


def write_map(path: Path, broker: BrokerEnv, account: str, placement: dict[str, str]) -> Path:
    regions = {
        region: {"locations": [GCS_LOCATION[region], AZURE_LOCATION[region]],
                 "kek": broker.settings.region_keks[region], "local_kek": True,
                 "worker_locations": ["local"], **sinks(region, store, account)}
        for region, store in placement.items()}
    regions["eu"]["locations"].append("EU")
    path.write_text(json.dumps({"version": 1, "regions": regions,
                                "unrouted_dead_letter_sink": "gs://sb-quarantine/unrouted",
                                "azure_accounts": {account: {"subscription_id": SUB,
                                                             "resource_group": "rg"}}}))
    return path


def put_metadata(server: MetadataServer, account: str, placement: dict[str, str]) -> None:
    """Each bucket in its region's location; the account where ``placement``'s Azure region
    is."""
    for region in ("eu", "us"):
        for bucket in (f"sb-{region}-out", f"sb-{region}-dl"):
            server.put_gcs_bucket(bucket, gcs_bucket(bucket, GCS_LOCATION[region], "region"))
    server.put_gcs_bucket("sb-quarantine", gcs_bucket("sb-quarantine", "EU", "multi-region"))
    [azure_region] = [r for r, store in placement.items() if store == "azure"]
    server.put_azure(SUB, "rg", account,
                     azure_account(account, AZURE_LOCATION[azure_region], "Standard_LRS"),
                     {name: azure_container(name) for name in CONTAINERS})


def preflight_clients(server: MetadataServer) -> PreflightClients:
    """Preflight's clients, the real SDKs pointed at the metadata server."""
    return PreflightClients(gcs=lambda: gcs_client(server),
                            azure=lambda sub: azure_management_client(server, sub))


def stored_objects(stores: tuple[Any, Any]) -> dict[str, list[tuple[str, bytes]]]:
    """``gs://<bucket>`` / ``azure:<container>`` -> every (name, bytes) it holds."""
    gcs, blobs = stores
    found: dict[str, list[tuple[str, bytes]]] = {}
    for name in BUCKETS:
        found[f"gs://{name}"] = [(b.name, b.download_as_bytes()) for b in gcs.list_blobs(name)]
    for name in CONTAINERS:
        container = blobs.get_container_client(name)
        found[f"azure:{name}"] = [(b.name, container.download_blob(b.name).readall())
                                  for b in container.list_blobs()]
    return found


def clear_stores(stores: tuple[Any, Any]) -> None:
    gcs, blobs = stores
    for name in BUCKETS:
        for blob in gcs.list_blobs(name):
            blob.delete()
    for name in CONTAINERS:
        container = blobs.get_container_client(name)
        for blob in container.list_blobs():
            container.delete_blob(blob.name)


@contextmanager
def placed_stores(stores: tuple[Any, Any], azurite: AzuriteServer, placement: dict[str, str]
                  ) -> Iterator[MetadataServer]:
    """Empty buckets and containers, and a metadata server that answers for them as
    ``placement`` puts each region (``put_metadata``), for the duration of one run."""
    clear_stores(stores)
    with metadata_server() as server:
        put_metadata(server, azurite.account, placement)
        yield server
