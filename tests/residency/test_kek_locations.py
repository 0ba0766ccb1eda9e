"""Preflight of each region's KEK: Cloud KMS through the real ``google-cloud-kms`` client and
the local KMS server of the tests, Azure Key Vault through the real ``azure-mgmt-keyvault``
client and the local metadata server, local keyring / PKCS#11 keys only where allowed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.cloud import kms_v1
from google.cloud.kms_v1.services.key_management_service import transports
from hypothesis import given
from hypothesis import strategies as st

from pipelines.preflight import PreflightClients, PreflightRefused, run_preflight
from pipelines.preflight.keks import _HSM_SUFFIXES, _VAULT_SUFFIXES, _vault, check_kek
from pipelines.residency import ResidencyMap
from tests.keybroker.kms.fake_gcp_kms import FakeKeyManagementService
from tests.support.metadata_servers import (
    MetadataServer,
    key_vault,
    key_vault_management_client,
    metadata_server,
)

SUB = "00000000-0000-0000-0000-000000000001"
EU_LOCATIONS = ["EU", "westeurope", "northeurope"]
EU_KEY = "projects/p/locations/europe-west4/keyRings/r/cryptoKeys/eu"


@pytest.fixture(scope="module")
def kms() -> Iterator[FakeKeyManagementService]:
    fake = FakeKeyManagementService()
    fake.start()
    fake.create_key(EU_KEY)
    fake.create_key("projects/p/locations/europe/keyRings/r/cryptoKeys/eu-multi")
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def server() -> Iterator[MetadataServer]:
    with metadata_server() as running:
        running.put_key_vault(SUB, "rg-eu", key_vault("acme-eu", "westeurope"))
        running.put_key_vault(SUB, "rg-eu", key_vault("acme-eu-hsm", "westeurope",
                                                      managed_hsm=True))
        running.put_key_vault(SUB, "rg-eu", key_vault("acme-far", "eastus"))
        yield running


def _clients(kms: FakeKeyManagementService, server: MetadataServer) -> PreflightClients:
    def kms_client() -> Any:
        channel = grpc.insecure_channel(kms.address)
        return kms_v1.KeyManagementServiceClient(
            transport=transports.KeyManagementServiceGrpcTransport(channel=channel))

    return PreflightClients(kms=kms_client,
                            key_vault=lambda sub: key_vault_management_client(server, sub))


def _map(kek: str, *, locations: list[str] | None = None, local_kek: bool = False
         ) -> ResidencyMap:
    return ResidencyMap.from_document({
        "version": 1,
        "regions": {"eu": {"locations": locations or EU_LOCATIONS, "kek": kek,
                           "local_kek": local_kek, "sink": "file:///tmp/sb-kek/eu",
                           "dead_letter_sink": "file:///tmp/sb-kek/eu-dl",
                           "worker_locations": ["europe-west4"]}},
        "unrouted_dead_letter_sink": "file:///tmp/sb-kek/q",
        "azure_key_vaults": {name: {"subscription_id": SUB, "resource_group": "rg-eu"}
                             for name in ("acme-eu", "acme-eu-hsm", "acme-far", "acme-gone")},
    })


def _check(kek: str, clients: PreflightClients, **options: Any):
    residency = _map(kek, **options)
    found = check_kek(residency.regions["eu"], residency, clients.kms_client,
                      clients.key_vault_client)
    assert found is not None
    return found


# --- Cloud KMS ------------------------------------------------------------------------
def test_a_cloud_kms_key_in_an_allowed_location_is_read_and_accepted(kms, server) -> None:
    found = _check(f"gcp-kms://{EU_KEY}", _clients(kms, server))
    assert (found.location, found.refusal) == ("europe-west4", None)
    assert found.source == "resource name, Cloud KMS GetCryptoKey"
    multi = _check("gcp-kms://projects/p/locations/europe/keyRings/r/cryptoKeys/eu-multi",
                   _clients(kms, server))
    assert multi.refusal is None and "europe-west4" in multi.regions


@pytest.mark.parametrize(("location", "members"), [
    ("us-central1", "us-central1"),
    ("global", "global"),
    ("europe-west2", "europe-west2"),            # London: not in the EU multi-region
])
def test_a_cloud_kms_key_elsewhere_is_refused_without_asking(kms, server, location: str,
                                                             members: str) -> None:
    calls = len(kms.calls)
    kek = f"gcp-kms://projects/p/locations/{location}/keyRings/r/cryptoKeys/eu"
    found = _check(kek, _clients(kms, server))
    assert found.refusal == (f"kek {kek} of region eu is in {location} (key ring r: {members});"
                             " allowed: EU, westeurope, northeurope")
    assert len(kms.calls) == calls


def test_a_cloud_kms_key_that_does_not_exist_is_refused(kms, server) -> None:
    kek = "gcp-kms://projects/p/locations/europe-west4/keyRings/r/cryptoKeys/missing"
    assert _check(kek, _clients(kms, server)).refusal == (
        f"kek {kek} of region eu in europe-west4: the key does not exist")
    bad = "gcp-kms://projects/p/locations/europe-west4/keyRings/r"
    assert "expected gcp-kms://projects/P/locations/L" in _check(
        bad, _clients(kms, server)).refusal


# --- Azure Key Vault ------------------------------------------------------------------
def test_a_vault_and_its_paired_region_in_the_allowed_locations(kms, server) -> None:
    found = _check("azure-kv://acme-eu.vault.azure.net/keys/eu", _clients(kms, server))
    assert (found.location, found.regions, found.refusal) == (
        "westeurope", ("northeurope", "westeurope"), None)
    path = f"/subscriptions/{SUB}/resourceGroups/rg-eu/providers/Microsoft.KeyVault/vaults/acme-eu"
    assert server.requests == [path]
    assert server.authorizations == ["Bearer preflight-test-token"]


def test_a_vault_replicated_outside_the_allowed_locations_is_refused(kms, server) -> None:
    kek = "azure-kv://acme-eu.vault.azure.net/keys/eu"
    found = _check(kek, _clients(kms, server), locations=["westeurope"])
    assert found.refusal == (f"kek {kek} of region eu is in vault acme-eu at westeurope, which "
                             "Key Vault replicates to its paired region northeurope; allowed: "
                             "westeurope")
    hsm = _check("azure-kv://acme-eu-hsm.managedhsm.azure.net/keys/eu", _clients(kms, server),
                 locations=["westeurope"])       # a managed HSM stays in its region
    assert (hsm.location, hsm.refusal) == ("westeurope", None)


def test_a_vault_elsewhere_missing_or_unlisted_is_refused(kms, server) -> None:
    far = "azure-kv://acme-far.vault.azure.net/keys/eu"
    assert _check(far, _clients(kms, server)).refusal == (
        f"kek {far} of region eu is in vault acme-far at eastus; allowed: EU, westeurope, "
        "northeurope")
    gone = "azure-kv://acme-gone.vault.azure.net/keys/eu"
    assert _check(gone, _clients(kms, server)).refusal.startswith(
        f"kek {gone} of region eu: vault acme-gone: not found in resource group rg-eu")
    unlisted = "azure-kv://other.vault.azure.net/keys/eu"
    assert _check(unlisted, _clients(kms, server)).refusal == (
        f"kek {unlisted} of region eu: vault other is not listed in azure_key_vaults "
        "(subscription_id, resource_group): where it is cannot be read")
    local_host = "azure-kv://127.0.0.1:8443/keys/eu"
    assert "neither an Azure Key Vault / Managed HSM domain" in _check(
        local_host, _clients(kms, server)).refusal


# --- no location ----------------------------------------------------------------------
@pytest.mark.parametrize(("kek", "what"), [
    ("local://keyring/eu/kek-1", "a key in the broker's local keyring"),
    ("pkcs11://token/eu-kek", "a PKCS#11 HSM key"),
])
def test_local_and_pkcs11_keks_only_where_the_map_allows(kms, server, kek: str,
                                                         what: str) -> None:
    assert _check(kek, _clients(kms, server)).refusal == (
        f"kek {kek} of region eu is {what}, whose location cannot be read; region eu does "
        "not set local_kek (allowed: EU, westeurope, northeurope)")
    accepted = _check(kek, _clients(kms, server), local_kek=True)
    assert (accepted.location, accepted.refusal) == ("local", None)
    assert server.requests == []


def test_an_unknown_kek_scheme_is_refused(kms, server) -> None:
    assert _check("k1", _clients(kms, server)).refusal == (
        "kek k1 of region eu is not a gcp-kms://, azure-kv://, pkcs11:// or local:// KEK: "
        "where it is cannot be read")


def test_run_preflight_reports_and_refuses_keks(kms, server) -> None:
    here = [*EU_LOCATIONS, "local"]                     # its sinks are file:// ones
    good = run_preflight(_map(f"gcp-kms://{EU_KEY}", locations=here), ["eu"],
                         clients=_clients(kms, server))
    assert good.refusals == ()
    assert good.to_json()["keks"] == [{
        "region": "eu", "kek": f"gcp-kms://{EU_KEY}", "location": "europe-west4",
        "regions": ["europe-west4"], "source": "resource name, Cloud KMS GetCryptoKey",
        "refusal": None}]
    refused = run_preflight(_map("azure-kv://acme-far.vault.azure.net/keys/eu",
                                 locations=here), ["eu"], clients=_clients(kms, server))
    with pytest.raises(PreflightRefused, match="^preflight refused: kek azure-kv://acme-far"
                       r"\.vault\.azure\.net/keys/eu of region eu is in vault acme-far at "
                       "eastus; allowed: EU, westeurope, northeurope, local$"):
        refused.raise_if_refused()


def test_no_kms_client_is_a_refusal(server) -> None:
    def no_credentials() -> Any:
        raise RuntimeError("Your default credentials were not found.")

    clients = PreflightClients(kms=no_credentials)
    with pytest.raises(PreflightRefused, match=r"^preflight refused: no Cloud KMS client to "
                       r"check with \(RuntimeError: Your default credentials"):
        run_preflight(_map(f"gcp-kms://{EU_KEY}"), ["eu"], clients=clients)


@given(host=st.text(max_size=80) | st.from_regex(
    r"[a-z0-9-]{0,10}\.(vault|managedhsm)\.azure\.(net|cn)(:[0-9]{1,5})?", fullmatch=True))
def test_only_key_vault_hosts_name_a_vault(host: str) -> None:
    found = _vault(host)
    if found is None:
        return
    kind, name = found
    suffixes = _VAULT_SUFFIXES if kind == "vault" else _HSM_SUFFIXES
    assert name and any(host == name + suffix for suffix in suffixes)
