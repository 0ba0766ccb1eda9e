"""The Dataflow dry run with a residency map: a worker region the map does not list for the
data's region is refused with one line before any job is written, even where Dataflow's own
launch check (its table of GCP regions per data region) would let it through."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from keybroker.config import demo_policy_document
from pipelines.cli import main
from tests.support.metadata_servers import MetadataServer, gcs_bucket, metadata_server

KMS_KEY = "projects/sealbeam-test/locations/europe-west4/keyRings/sealbeam/cryptoKeys/dataflow"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MetadataServer]:
    """Preflight's default GCS client follows STORAGE_EMULATOR_HOST: the metadata server."""
    with metadata_server() as running:
        for name in ("sb-eu-out", "sb-eu-dl", "sb-quarantine"):
            running.put_gcs_bucket(name, gcs_bucket(name, "EUROPE-WEST4", "region"))
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", running.url)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "sealbeam-test")
        yield running


def _argv(tmp_path: Path, *changes: str) -> list[str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(demo_policy_document(["eu"], ["acme"], ["ab" * 48])))
    residency = tmp_path / "residency.yaml"
    residency.write_text(json.dumps({
        "version": 1,
        "regions": {"eu": {"locations": ["EU"], "kek": "local://keyring/eu/kek-1",
                           "local_kek": True, "sink": "gs://sb-eu-out/f",
                           "dead_letter_sink": "gs://sb-eu-dl/dl",
                           "worker_locations": ["europe-west4"]}},
        "unrouted_dead_letter_sink": "gs://sb-quarantine/q"}))
    flags = {"--input": "gs://sealbeam-in/eu/*.sealed", "--residency_map": str(residency),
             "--regions": "eu", "--pool_endpoints": "http://127.0.0.1:9",
             "--pool_policy": str(policy), "--runner": "DataflowRunner",
             "--project": "sealbeam-test", "--region": "europe-west4",
             "--temp_location": "gs://sealbeam-tmp/tmp", "--dataflow_kms_key": KMS_KEY,
             "--setup_file": "./setup.py", "--job-json": str(tmp_path / "job.json")}
    argv = ["run", "batch", "--confidential", "--dry_run"]
    for name, value in flags.items():
        argv += [name, value]
    return argv + list(changes)


@pytest.mark.parametrize(("changes", "worker", "more"), [
    (("--worker_region", "europe-west1"), "Dataflow --worker_region europe-west1", ""),
    # --region also sets the worker region: both flags are refused, the first one named
    (("--region", "europe-west1"), "Dataflow --region europe-west1",
     " (and 1 more refusal(s))"),
])
def test_a_worker_region_outside_the_map_is_refused(server: MetadataServer, tmp_path: Path,
                                                    capsys, changes, worker: str,
                                                    more: str) -> None:
    assert main(_argv(tmp_path, *changes)) == 2
    captured = capsys.readouterr()
    region = changes[1]
    assert captured.err == (f"sealbeam: error: preflight refused: workers ({worker}) are in "
                            f"{region}; region eu allows workers in europe-west4{more}\n")
    assert captured.out == ""
    assert not (tmp_path / "job.json").exists()


def test_with_workers_in_the_map_the_pool_is_attested_next(server: MetadataServer,
                                                           tmp_path: Path, capsys) -> None:
    """Dataflow's flags pass; the pool (nothing listens on port 9) cannot be attested."""
    assert main(_argv(tmp_path, "--worker_region", "europe-west4")) == 2
    err = capsys.readouterr().err
    assert err.startswith("sealbeam: error: preflight refused: pool worker "
                          "http://127.0.0.1:9 could not be attested (")
    assert err.endswith("region eu allows workers in europe-west4\n") and err.count("\n") == 1
    assert not (tmp_path / "job.json").exists()
