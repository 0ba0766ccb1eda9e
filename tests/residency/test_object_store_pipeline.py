"""The batch pipeline writing eu and us outputs to their own buckets and containers.

Data goes through Beam's real filesystems to ``gcp-storage-emulator`` (gcsio) and Azurite
(azfs); preflight reads the sinks' locations through the real SDKs from a local metadata
server (neither emulator reports a location). Two runs put each region on each store: eu on
GCS and us on Azure, then eu on Azure and us on GCS. Afterwards every bucket and container
holds exactly the outputs (each with its custody statement beside it) and dead letters of its
own region, and nothing else (no temporary objects); the broker's ledger records each output
key's sink and the location preflight read from the store.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from envelope import read_header
from pipelines.batch import run_batch
from pipelines.preflight import PreflightRefused
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import sealed_partner_files
from tests.residency.object_store_maps import (
    AZURE_LOCATION,
    GCS_LOCATION,
    placed_stores,
    preflight_clients,
    sinks,
    stored_objects,
    write_map,
)
from tests.support.broker import ledger_entries
from tests.support.metadata_servers import MetadataServer, gcs_bucket
from tests.support.object_stores import AzuriteServer
from transforms.write import STATEMENT_SUFFIX, statement_file_name

RECORDS = 40
def _corrupt(path: Path) -> None:
    """Line 0: a ciphertext byte flipped (a dead letter of its region, still sealed);
    line 1: not an envelope at all (a dead letter of no region)."""
    lines = path.read_bytes().splitlines()
    flipped = bytearray(base64.b64decode(lines[0]))
    flipped[-3] ^= 0x40
    lines[0] = base64.b64encode(bytes(flipped))
    lines[1] = base64.b64encode(b"random bytes, not an envelope")
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.fixture(scope="module")
def sealed_input(broker: BrokerEnv, tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("input")
    files, sealed = sealed_partner_files(broker, work, RECORDS)
    [eu_file] = [s for f, s in zip(files, sealed, strict=True)
                 if f.region == "eu" and f.producer_id == "acme"][:1]
    _corrupt(eu_file)
    return str(work / "sealed" / "*.sealed")


def _run(tmp_path: Path, broker: BrokerEnv, azurite: AzuriteServer, sealed_input: str,
         placement: dict[str, str], server: MetadataServer):
    residency = write_map(tmp_path / "residency.yaml", broker, azurite.account, placement)
    flags = {"input": sealed_input, "residency_map": str(residency), "broker_url": broker.url,
             "tee": "simulated-sev-snp", "dev_tee_dir": str(broker.dev_tee_dir),
             "regions": "eu,us", "min_batch_size": "16",
             "azure_connection_string": azurite.connection_string}
    options = PipelineOptions(flags=[f"--{k}={v}" for k, v in flags.items()])
    return run_batch(options, preflight_clients=preflight_clients(server))


@pytest.mark.parametrize("placement", [{"eu": "gcs", "us": "azure"},
                                       {"eu": "azure", "us": "gcs"}],
                         ids=["eu-gcs-us-azure", "eu-azure-us-gcs"])
def test_each_region_lands_in_its_own_store(tmp_path: Path, broker: BrokerEnv,
                                            azurite: AzuriteServer, stores: tuple[Any, Any],
                                            sealed_input: str, placement: dict[str, str]
                                            ) -> None:
    ledger_before = len(ledger_entries(broker.settings))
    with placed_stores(stores, azurite, placement) as server:
        summary = _run(tmp_path, broker, azurite, sealed_input, placement, server)
    # Each output key's ledger entry names its region's sink and where preflight found it.
    destinations = {(str(e.details["region"]),
                     json.dumps(e.details["destination"], sort_keys=True))
                    for e in ledger_entries(broker.settings, "generate")
                    if e.seq > ledger_before and e.decision == "granted"}
    assert sorted(destinations) == sorted(
        (region, json.dumps({"sink": sinks(region, store, azurite.account)["sink"],
                             "location": (GCS_LOCATION if store == "gcs"
                                          else AZURE_LOCATION)[region], "verified": True},
                            sort_keys=True))
        for region, store in placement.items())
    assert summary.reconciled and summary.records_in == RECORDS
    assert summary.dead_letters == 2 and summary.outputs_by_region["eu"] > 0
    assert summary.outputs_by_region["us"] > 0
    objects = stored_objects(stores)
    everything = [name for listed in objects.values() for name, _ in listed]
    assert not [name for name in everything if name.endswith(".tmp") or "/." in name]
    for region, store in placement.items():
        other = "us" if region == "eu" else "eu"
        stored = objects[f"gs://sb-{region}-out" if store == "gcs" else f"azure:{region}-out"]
        out = [(n, p) for n, p in stored if not n.endswith(STATEMENT_SUFFIX)]
        assert len(out) == summary.outputs_by_region[region]
        # every output has its signed custody statement beside it, and nothing else stands there
        assert sorted(n for n, _ in stored if n.endswith(STATEMENT_SUFFIX)) == sorted(
            statement_file_name(n) for n, _ in out)
        for name, payload in out:
            assert name.startswith("features/part-") and name.endswith(".sbatch")
            header, _ = read_header(payload)
            assert header.region == region
            assert header.wrapped_key.kek.uri == broker.settings.region_keks[region]
        dead = objects[f"gs://sb-{region}-dl" if store == "gcs" else f"azure:{region}-dl"]
        letters = [json.loads(line) for name, payload in dead for line in payload.splitlines()]
        assert all(name.startswith("dl/dead-letter/dl-") for name, _ in dead)
        expected = [("open", region)] if region == "eu" else []
        assert [(d["stage"], read_header(base64.b64decode(d["sealed_b64"]))[0].region)
                for d in letters] == expected
        # the other store's buckets/containers of this region stay empty
        unused = ([f"azure:{region}-out", f"azure:{region}-dl"] if store == "gcs"
                  else [f"gs://sb-{region}-out", f"gs://sb-{region}-dl"])
        assert all(objects[name] == [] for name in unused), other
    [(name, payload)] = objects["gs://sb-quarantine"]
    assert name.startswith("unrouted/dead-letter/dl-")
    [unrouted] = [json.loads(line) for line in payload.splitlines()]
    assert unrouted["stage"] == "parse" and unrouted["sealed_b64"] == ""
    checks = {(c["region"], c["role"]): c for c in summary.residency["preflight"]["sinks"]}
    eu_location = GCS_LOCATION["eu"] if placement["eu"] == "gcs" else AZURE_LOCATION["eu"]
    assert checks[("eu", "sink")]["location"] == eu_location
    assert checks[("eu", "sink")]["refusal"] is None
    assert summary.residency["map"]["derived"] is False


def test_a_sink_in_the_wrong_place_refuses_before_any_data_moves(
        tmp_path: Path, broker: BrokerEnv, azurite: AzuriteServer, stores: tuple[Any, Any],
        sealed_input: str) -> None:
    placement = {"eu": "gcs", "us": "azure"}
    with placed_stores(stores, azurite, placement) as server:
        server.put_gcs_bucket("sb-eu-out", gcs_bucket("sb-eu-out", "US", "multi-region"))
        with pytest.raises(PreflightRefused) as refused:
            _run(tmp_path, broker, azurite, sealed_input, placement, server)
    assert str(refused.value).startswith(
        "preflight refused: sink gs://sb-eu-out/features of region eu is in US (multi-region: ")
    assert all(listed == [] for listed in stored_objects(stores).values())
