"""Preflight per sink kind and location type, through the real SDKs against a local server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipelines.preflight import (
    PreflightClients,
    PreflightRefused,
    check_dataflow_workers,
    check_local_workers,
    run_preflight,
)
from pipelines.residency import ResidencyMap
from tests.support.metadata_servers import (
    MetadataServer,
    azure_account,
    azure_container,
    azure_management_client,
    azure_scope,
    gcs_bucket,
    gcs_client,
    metadata_server,
)

SUB = "00000000-0000-0000-0000-000000000001"
EU_KEY = "projects/p/locations/europe-west4/keyRings/r/cryptoKeys/eu"


def _map(eu_sink: str, eu_dl: str, *, require_cmk: bool = False,
         unrouted: str = "gs://sb-quarantine/q") -> ResidencyMap:
    return ResidencyMap.from_document({
        "version": 1,
        "regions": {
            "eu": {"locations": ["EU", "westeurope", "northeurope"], "kek": "local://eu",
                   "local_kek": True, "sink": eu_sink, "dead_letter_sink": eu_dl,
                   "worker_locations": ["europe-west4", "westeurope"],
                   "require_cmk": require_cmk},
            "us": {"locations": ["US", "eastus"], "kek": "local://us",
                   "local_kek": True, "sink": "gs://sb-us-out/features",
                   "dead_letter_sink": "gs://sb-us-dl/dl",
                   "worker_locations": ["us-central1"]},
        },
        "unrouted_dead_letter_sink": unrouted,
        "azure_accounts": {"sbeu": {"subscription_id": SUB, "resource_group": "rg-eu"},
                           "sbus": {"subscription_id": SUB, "resource_group": "rg-us"}},
    })


@pytest.fixture
def server() -> Iterator[MetadataServer]:
    with metadata_server() as running:
        running.put_gcs_bucket("sb-us-out", gcs_bucket("sb-us-out", "US", "multi-region"))
        running.put_gcs_bucket("sb-us-dl", gcs_bucket("sb-us-dl", "US-CENTRAL1", "region"))
        running.put_gcs_bucket("sb-quarantine", gcs_bucket("sb-quarantine", "EUROPE-WEST4",
                                                           "region"))
        yield running


def _clients(server: MetadataServer) -> PreflightClients:
    return PreflightClients(gcs=lambda: gcs_client(server),
                            azure=lambda sub: azure_management_client(server, sub))


def _eu_checks(server: MetadataServer, residency: ResidencyMap, regions=("eu",)):
    report = run_preflight(residency, regions, clients=_clients(server))
    return {check.role: check for check in report.sinks if check.region == "eu"}, report


@pytest.mark.parametrize(("location", "location_type", "data_locations", "allowed"), [
    ("EUROPE-WEST4", "region", None, True),
    ("EU", "multi-region", None, True),
    ("EUR4", "dual-region", None, True),                       # europe-north1 + europe-west4
    ("EUR5", "dual-region", None, False),                      # europe-west2 is London
    ("EU", "dual-region", ["europe-west1", "europe-west4"], True),   # configurable dual-region
    ("EU", "dual-region", ["europe-west4", "europe-west6"], False),  # Zurich is not EU
    ("US", "multi-region", None, False),
    ("US-CENTRAL1", "region", None, False),
])
def test_gcs_location_types(server: MetadataServer, location: str, location_type: str,
                            data_locations: list[str] | None, allowed: bool) -> None:
    server.put_gcs_bucket("sb-eu-out", gcs_bucket("sb-eu-out", location, location_type,
                                                  data_locations=data_locations))
    server.put_gcs_bucket("sb-eu-dl", gcs_bucket("sb-eu-dl", "EUROPE-WEST1", "region"))
    checks, report = _eu_checks(server, _map("gs://sb-eu-out/f", "gs://sb-eu-dl/dl"))
    sink = checks["sink"]
    assert sink.location == location and sink.location_type == location_type
    if allowed:
        assert report.refusals == ()
        report.raise_if_refused()
    else:
        assert sink.refusal == (
            f"sink gs://sb-eu-out/f of region eu is in {location} ({location_type}: "
            f"{', '.join(sink.regions)}); allowed: EU, westeurope, northeurope")
        with pytest.raises(PreflightRefused, match=r"^preflight refused: sink gs://sb-eu-out/f"):
            report.raise_if_refused()
    assert "/storage/v1/b/sb-eu-out" in server.requests


def test_shared_us_bucket_of_the_issue_is_refused(server: MetadataServer) -> None:
    """The issue's run: eu outputs in a bucket that reports US."""
    server.put_gcs_bucket("sb-eu-out", gcs_bucket("sb-eu-out", "US", "multi-region"))
    server.put_gcs_bucket("sb-eu-dl", gcs_bucket("sb-eu-dl", "EU", "multi-region"))
    with pytest.raises(PreflightRefused, match=r"sink gs://sb-eu-out/f of region eu is in US "
                       r"\(multi-region: us-central1.*allowed: EU, westeurope"):
        run_preflight(_map("gs://sb-eu-out/f", "gs://sb-eu-dl/dl"), ["eu", "us"],
                      clients=_clients(server)).raise_if_refused()


@pytest.mark.parametrize(("kms_key", "refusal"), [
    (EU_KEY, None),
    (None, "has no default customer-managed KMS key; region eu requires one"),
    ("projects/p/locations/us-east1/keyRings/r/cryptoKeys/k", "is in us-east1; allowed"),
    ("projects/p/locations/global/keyRings/r/cryptoKeys/k", "is in global; allowed"),
    ("projects/p/locations/europe/keyRings/r/cryptoKeys/k", None),
])
def test_gcs_customer_managed_key(server: MetadataServer, kms_key: str | None,
                                  refusal: str | None) -> None:
    server.put_gcs_bucket("sb-eu-out", gcs_bucket("sb-eu-out", "EUROPE-WEST4", "region",
                                                  kms_key=kms_key))
    server.put_gcs_bucket("sb-eu-dl", gcs_bucket("sb-eu-dl", "EU", "multi-region",
                                                 kms_key=EU_KEY))
    server.put_gcs_bucket("sb-quarantine", gcs_bucket("sb-quarantine", "EU", "multi-region",
                                                      kms_key=EU_KEY))
    checks, _ = _eu_checks(server, _map("gs://sb-eu-out/f", "gs://sb-eu-dl/dl",
                                        require_cmk=True))
    if refusal is None:
        assert checks["sink"].refusal is None
        assert checks["sink"].encryption == f"kms:{kms_key}"
    else:
        assert refusal in (checks["sink"].refusal or "")


def test_missing_bucket_is_refused(server: MetadataServer) -> None:
    server.put_gcs_bucket("sb-eu-dl", gcs_bucket("sb-eu-dl", "EU", "multi-region"))
    checks, _ = _eu_checks(server, _map("gs://sb-eu-nope/f", "gs://sb-eu-dl/dl"))
    assert checks["sink"].refusal == ("sink gs://sb-eu-nope/f of region eu: gs://sb-eu-nope: "
                                      "the bucket does not exist")


def _put_account(server: MetadataServer, location: str, sku: str, *,
                 secondary: str | None = None, key_source: str = "Microsoft.Storage",
                 scope: str | None = None, scope_source: str | None = None,
                 deny_override: bool = False) -> None:
    containers = {"eu-out": azure_container("eu-out", scope=scope or "$account-encryption-key",
                                            deny_override=deny_override),
                  "eu-dl": azure_container("eu-dl")}
    scopes = {scope: azure_scope(scope, scope_source or "Microsoft.Storage")} if scope else {}
    server.put_azure(SUB, "rg-eu", "sbeu",
                     azure_account("sbeu", location, sku, secondary=secondary,
                                   key_source=key_source), containers, scopes)


AZ_MAP = ("azfs://sbeu/eu-out/features", "abfs://eu-dl@sbeu.dfs.core.windows.net/dl")


@pytest.mark.parametrize(("location", "sku", "secondary", "refusal"), [
    ("westeurope", "Standard_LRS", None, None),
    ("westeurope", "Standard_ZRS", None, None),
    ("westeurope", "Standard_GRS", "northeurope", None),
    ("westeurope", "Standard_RAGZRS", None, None),                 # paired: northeurope
    ("eastus", "Standard_LRS", None, "is in eastus (account sbeu, Standard_LRS); allowed"),
    ("westeurope", "Standard_GRS", "eastus",
     "replicates (Standard_GRS) from westeurope to eastus; allowed"),
    ("uksouth", "Standard_GRS", "ukwest", "is in uksouth"),
])
def test_azure_location_and_replication(server: MetadataServer, location: str, sku: str,
                                        secondary: str | None, refusal: str | None) -> None:
    _put_account(server, location, sku, secondary=secondary)
    checks, _ = _eu_checks(server, _map(*AZ_MAP))
    assert checks["sink"].location == location and checks["sink"].location_type == sku
    assert checks["dead_letter_sink"].location == location   # the abfs:// form, same account
    if refusal is None:
        assert checks["sink"].refusal is None
    else:
        assert refusal in (checks["sink"].refusal or "")
        assert (checks["sink"].refusal or "").startswith(
            "sink azfs://sbeu/eu-out/features of region eu ")
    arm = [auth for path, auth in zip(server.requests, server.authorizations, strict=True)
           if path.startswith("/subscriptions/")]
    assert arm and set(arm) == {"Bearer preflight-test-token"}


@pytest.mark.parametrize(("settings", "customer_managed"), [
    ({"key_source": "Microsoft.Keyvault"}, True),
    ({}, False),
    ({"scope": "eu-cmk", "scope_source": "Microsoft.KeyVault", "deny_override": True}, True),
    ({"scope": "eu-cmk", "scope_source": "Microsoft.KeyVault", "deny_override": False}, False),
    ({"scope": "eu-pmk", "scope_source": "Microsoft.Storage", "deny_override": True}, False),
])
def test_azure_customer_managed_key(server: MetadataServer, settings: dict,
                                    customer_managed: bool) -> None:
    _put_account(server, "westeurope", "Standard_LRS", **settings)
    checks, _ = _eu_checks(server, _map(*AZ_MAP, require_cmk=True))
    if customer_managed:
        assert checks["sink"].refusal is None
    else:
        assert "not a customer-managed key; region eu requires one" in checks["sink"].refusal


def test_missing_azure_account_is_refused(server: MetadataServer) -> None:
    checks, _ = _eu_checks(server, _map(*AZ_MAP))
    assert checks["sink"].refusal.startswith(
        "sink azfs://sbeu/eu-out/features of region eu: storage account sbeu: not found in "
        "resource group rg-eu")


def test_local_sinks(tmp_path, server: MetadataServer) -> None:
    local = ResidencyMap.from_document({
        "version": 1,
        "regions": {"eu": {"locations": ["local", "EU"], "kek": "local://eu",
                           "local_kek": True,
                           "sink": f"file://{tmp_path}/eu", "dead_letter_sink":
                           f"file://{tmp_path}/eu-dl", "worker_locations": ["local"]},
                    "us": {"locations": ["US"], "kek": "local://us", "local_kek": True,
                           "sink": f"file://{tmp_path}/us", "dead_letter_sink":
                           f"file://{tmp_path}/us-dl", "worker_locations": ["local"]}},
        "unrouted_dead_letter_sink": f"file://{tmp_path}/q"})
    report = run_preflight(local, ["eu"], clients=_clients(server))
    assert report.refusals == () and server.requests == []
    refused = run_preflight(local, ["eu", "us"], clients=_clients(server))
    assert refused.refusals[0] == (f"sink file://{tmp_path}/us of region us is on this "
                                   "machine (local); allowed: US")


def test_derived_map_is_reported_unverified(server: MetadataServer) -> None:
    derived = ResidencyMap.from_output_root("gs://one-bucket/out", ["eu", "us"])
    report = run_preflight(derived, ["eu", "us"], clients=_clients(server))
    assert not report.verified and report.refusals == () and server.requests == []
    assert {c.location for c in report.sinks} == {"unverified"}


@pytest.mark.parametrize(("flags", "refusal"), [
    (("europe-west4", None, None), None),
    (("europe-west4", "europe-west4", "europe-west4-b"), None),
    (("us-central1", None, None),
     "workers (Dataflow --region us-central1) are in us-central1; region eu allows workers "
     "in europe-west4, westeurope"),
    (("europe-west4", "us-central1", None),
     "workers (Dataflow --worker_region us-central1) are in us-central1; region eu allows "
     "workers in europe-west4, westeurope"),
    (("europe-west4", None, "us-east1-c"), "workers (Dataflow --worker_zone us-east1-c) are "
     "in us-east1"),
    ((None, None, None), "the Dataflow job names no --region"),
])
def test_dataflow_worker_regions(flags: tuple, refusal: str | None) -> None:
    residency = _map(*AZ_MAP)
    checks = check_dataflow_workers(*flags, residency=residency, regions=["eu"])
    refusals = [c.refusal for c in checks if c.refusal]
    if refusal is None:
        assert refusals == []
    else:
        assert refusals and refusals[0].startswith(refusal)


def test_one_dataflow_job_for_eu_and_us_is_refused() -> None:
    checks = check_dataflow_workers("europe-west4", None, None, _map(*AZ_MAP), ["eu", "us"])
    assert checks[0].refusal == ("workers (Dataflow --region europe-west4) are in "
                                 "europe-west4; region us allows workers in us-central1")


def test_local_workers() -> None:
    residency = _map(*AZ_MAP)
    assert check_local_workers("westeurope", residency, ["eu"])[0].refusal is None
    assert check_local_workers("local", residency, ["eu"])[0].refusal == (
        "workers (this machine, --worker_location local) are in local; region eu allows "
        "workers in europe-west4, westeurope")


def test_cli_preflight_through_default_gcs_client(server: MetadataServer, tmp_path,
                                                  monkeypatch, capsys) -> None:
    """``sealbeam residency check --preflight`` builds the default client, which follows
    STORAGE_EMULATOR_HOST: here the metadata server."""
    from pipelines.cli import main

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "preflight-test")
    server.put_gcs_bucket("sb-eu-out", gcs_bucket("sb-eu-out", "EUR4", "dual-region"))
    server.put_gcs_bucket("sb-eu-dl", gcs_bucket("sb-eu-dl", "EUROPE-WEST1", "region"))
    path = tmp_path / "map.yaml"
    path.write_text("""version: 1
regions:
  eu: {locations: [EU], kek: local://eu, local_kek: true, sink: gs://sb-eu-out/f,
       dead_letter_sink: gs://sb-eu-dl/dl, worker_locations: [europe-west4]}
unrouted_dead_letter_sink: gs://sb-quarantine/q
""")
    assert main(["residency", "check", str(path), "--preflight"]) == 0
    out = capsys.readouterr().out
    assert "preflight sink gs://sb-eu-out/f: EUR4 (dual-region), encryption google-managed: ok" \
        in out
    assert "preflight kek local://eu of eu: local (local (not verifiable)): ok" in out
    server.put_gcs_bucket("sb-eu-out", gcs_bucket("sb-eu-out", "NAM4", "dual-region"))
    assert main(["residency", "check", str(path), "--preflight"]) == 2
    assert capsys.readouterr().err.strip() == (
        "sealbeam: error: preflight refused: sink gs://sb-eu-out/f of region eu is in NAM4 "
        "(dual-region: us-central1, us-east1); allowed: EU")


def test_no_client_or_no_route_refuses(tmp_path) -> None:
    def no_credentials():
        raise RuntimeError("Your default credentials were not found.")

    with pytest.raises(PreflightRefused, match=r"^preflight refused: no Google Cloud Storage "
                       r"client to check with \(RuntimeError: Your default credentials"):
        run_preflight(_map("gs://sb-eu-out/f", "gs://sb-eu-dl/dl"), ["eu"],
                      clients=PreflightClients(gcs=no_credentials)).raise_if_refused()
    with metadata_server() as gone:
        clients = PreflightClients(gcs=lambda: gcs_client(gone),
                                   azure=lambda sub: azure_management_client(gone, sub))
    # the server is stopped: nothing answers on its port
    report = run_preflight(_map(*AZ_MAP, unrouted="azfs://sbeu/quarantine/q"), ["eu"],
                           clients=clients)
    assert report.refusals[0].startswith("sink azfs://sbeu/eu-out/features of region eu: "
                                         "storage account sbeu: its properties could not be "
                                         "read (ServiceRequestError")
