"""``sealbeam run batch --runner DataflowRunner --confidential --dry_run``: the job is built
offline with the confidential settings, and unsafe launches are refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from keybroker.config import demo_policy_document
from pipelines.cli import main
from pipelines.dataflow import DataflowLaunch, DataflowLaunchError, check_launch

KMS_KEY = "projects/sealbeam-test/locations/europe-west4/keyRings/sealbeam/cryptoKeys/dataflow"
POOL = "http://10.0.0.5:8700,http://10.0.0.6:8700"


@pytest.fixture
def policy(tmp_path: Path) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(demo_policy_document(["eu"], ["acme"], ["ab" * 48])))
    return str(path)


def _argv(tmp_path: Path, *changes: str, drop: tuple[str, ...] = ()) -> list[str]:
    flags = {"--input": "gs://sealbeam-in/eu/*.sealed", "--output_root": "gs://sealbeam-out",
             "--regions": "eu", "--pool_endpoints": POOL,
             "--pool_policy": str(tmp_path / "policy.yaml"),
             "--runner": "DataflowRunner", "--project": "sealbeam-test",
             "--region": "europe-west4", "--temp_location": "gs://sealbeam-tmp/tmp",
             "--dataflow_kms_key": KMS_KEY, "--setup_file": "./setup.py",
             "--job-json": str(tmp_path / "job.json")}
    for name in drop:
        flags.pop(name)
    argv = ["run", "batch", "--confidential", "--dry_run"]
    for name, value in flags.items():
        argv += [name, value]
    return argv + list(changes)


def test_the_dry_run_job_carries_the_confidential_settings(tmp_path: Path, policy: str,
                                                           capsys) -> None:
    assert main(_argv(tmp_path)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dry_run"] and summary["confidential"]
    job = json.loads((tmp_path / "job.json").read_text())
    environment = job["environment"]
    assert environment["serviceOptions"] == ["enable_confidential_compute"]
    assert environment["workerRegion"] == "europe-west4"
    assert environment["serviceKmsKeyName"] == KMS_KEY
    pool = environment["workerPools"][0]
    assert pool["machineType"] == "n2d-standard-4"
    assert pool["ipConfiguration"] == "WORKER_IP_PRIVATE"
    options = environment["sdkPipelineOptions"]["options"]
    assert options["pool_endpoints"] == POOL and options["pool_policy"] == policy
    assert options["dataflow_service_options"] == ["enable_confidential_compute"]
    assert job["name"] == summary["job_name"] and job["type"] == "JOB_TYPE_BATCH"


@pytest.mark.parametrize(("changes", "drop", "message"), [
    (("--machine_type", "e2-standard-4"), (),
     "machine type e2-standard-4 cannot run confidential Dataflow workers"),
    (("--worker_region", "us-central1"), (), "--worker_region us-central1 is outside data "
                                             "region 'eu'"),
    (("--region", "us-east1"), (), "--region us-east1 is outside data region 'eu'"),
    ((), ("--dataflow_kms_key",), "--dataflow_kms_key is required"),
    ((), ("--pool_endpoints",), "on Dataflow the confidential step runs on the attested pool"),
    ((), ("--setup_file",), "Dataflow workers need sealbeam"),
    (("--regions", "eu,us"), (), "--region europe-west4 is outside data region 'us'"),
])
def test_unsafe_launches_are_refused_with_one_line(tmp_path: Path, policy: str, capsys,
                                                   changes, drop, message: str) -> None:
    assert main(_argv(tmp_path, *changes, drop=drop)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("sealbeam: error: ") and captured.err.count("\n") == 1
    assert message in captured.err
    assert not (tmp_path / "job.json").exists()


def _launch(**changes: object) -> DataflowLaunch:
    base: dict[str, object] = {
        "project": "p", "region": "europe-west4", "worker_region": None, "machine_type": None,
        "temp_location": "gs://t/tmp", "dataflow_kms_key": None, "setup_file": "setup.py",
        "confidential": True}
    return DataflowLaunch(**{**base, **changes})   # type: ignore[arg-type]


def test_the_launch_check_is_a_pure_function_of_the_settings() -> None:
    with pytest.raises(DataflowLaunchError, match="dataflow_kms_key is required"):
        check_launch(_launch(), ["eu"], remote_mode=True)
    check_launch(_launch(waive_dataflow_kms_key=True), ["eu"], remote_mode=True)
    check_launch(_launch(dataflow_kms_key="k", machine_type="n2d-highmem-8",
                         worker_region="europe-west1"), ["eu"], remote_mode=True)
    exact = {"eu": ("europe-west4",)}
    with pytest.raises(DataflowLaunchError, match="outside data region 'eu'"):
        check_launch(_launch(dataflow_kms_key="k", worker_region="europe-west1",
                             gcp_regions=exact), ["eu"], remote_mode=True)
    with pytest.raises(DataflowLaunchError, match="no GCP regions are known for data region"):
        check_launch(_launch(dataflow_kms_key="k"), ["apac"], remote_mode=True)
    check_launch(_launch(dataflow_kms_key="k", confidential=False,
                         machine_type="e2-standard-4"), ["eu"], remote_mode=True)


def test_a_streaming_dry_run_is_a_streaming_job(tmp_path: Path, policy: str, capsys) -> None:
    argv = ["run", "streaming", "--source", "pubsub",
            "--subscription", "projects/sealbeam-test/subscriptions/feed",
            "--output_root", "gs://sealbeam-out", "--regions", "eu", "--pool_endpoints", POOL,
            "--pool_policy", policy, "--runner", "DataflowRunner", "--confidential",
            "--project", "sealbeam-test", "--region", "europe-west4",
            "--temp_location", "gs://sealbeam-tmp/tmp", "--dataflow_kms_key", KMS_KEY,
            "--sdk_container_image", "europe-docker.pkg.dev/sealbeam-test/sealbeam/beam:1",
            "--dry_run", "--job-json", str(tmp_path / "job.json")]
    assert main(argv) == 0
    job = json.loads((tmp_path / "job.json").read_text())
    assert job["type"] == "JOB_TYPE_STREAMING"
    assert job["environment"]["serviceOptions"] == ["enable_confidential_compute"]
    assert json.loads(capsys.readouterr().out)["kind"] == "streaming"
