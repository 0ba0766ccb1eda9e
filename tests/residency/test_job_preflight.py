"""Preflight of a job from its options: which map, which workers, which Azure account."""

from __future__ import annotations

from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.errors import PipelineError
from pipelines.options import SealbeamOptions
from pipelines.preflight import PreflightRefused, job_residency, preflight_job
from pipelines.preflight.job import azure_account_of
from pipelines.residency import ResidencyMap

SUB = "s1"


def _map(tmp_path: Path, eu_sink: str, us_sink: str) -> Path:
    path = tmp_path / "map.yaml"
    path.write_text(f"""
version: 1
regions:
  eu: {{locations: [local], kek: local://eu, local_kek: true, sink: "{eu_sink}", dead_letter_sink: "file://{tmp_path}/eu-dl",
       worker_locations: [europe-west4]}}
  us: {{locations: [local], kek: local://us, local_kek: true, sink: "{us_sink}", dead_letter_sink: "file://{tmp_path}/us-dl",
       worker_locations: [us-central1]}}
unrouted_dead_letter_sink: "file://{tmp_path}/q"
azure_accounts:
  acmeeu: {{subscription_id: {SUB}, resource_group: rg}}
  acmeus: {{subscription_id: {SUB}, resource_group: rg}}
""")
    return path


def _options(*flags: str) -> SealbeamOptions:
    return PipelineOptions(flags=list(flags)).view_as(SealbeamOptions)


def test_map_or_output_root(tmp_path: Path) -> None:
    path = _map(tmp_path, f"file://{tmp_path}/eu", f"file://{tmp_path}/us")
    regions = frozenset({"eu", "us"})
    assert not job_residency(_options(f"--residency_map={path}"), regions).derived
    assert job_residency(_options(f"--output_root={tmp_path}"), regions).derived
    with pytest.raises(PipelineError, match="not both"):
        job_residency(_options(f"--residency_map={path}", f"--output_root={tmp_path}"), regions)
    with pytest.raises(PipelineError, match=r"--residency_map .* is required"):
        job_residency(_options(), regions)


def test_workers_by_runner(tmp_path: Path) -> None:
    residency = ResidencyMap.load(_map(tmp_path, f"file://{tmp_path}/eu",
                                       f"file://{tmp_path}/us"))
    eu = frozenset({"eu"})
    report = preflight_job(_options("--worker_location=europe-west4"), residency, eu)
    assert report.workers[0].location == "europe-west4" and report.refusals == ()
    with pytest.raises(PreflightRefused, match="workers \\(this machine, --worker_location "
                       "local\\) are in local; region eu allows workers in europe-west4"):
        preflight_job(_options(), residency, eu)
    with pytest.raises(PreflightRefused, match="Dataflow --worker_region us-central1"):
        preflight_job(_options("--runner=DataflowRunner", "--region=europe-west4",
                               "--worker_region=us-central1"), residency, eu)
    report = preflight_job(_options("--runner=DataflowRunner", "--region=europe-west4"),
                           residency, eu)
    assert [w.source for w in report.workers] == ["Dataflow --region europe-west4"]


def test_azure_sinks_need_the_account_beam_writes_to(tmp_path: Path) -> None:
    residency = ResidencyMap.load(_map(tmp_path, "azfs://acmeeu/eu-out/f",
                                       "azfs://acmeus/us-out/f"))
    both = frozenset({"eu", "us"})
    with pytest.raises(PreflightRefused, match="storage accounts acmeeu, acmeus; Beam's azfs "
                       "filesystem writes to one account per pipeline"):
        preflight_job(_options("--worker_location=europe-west4"), residency, both)
    with pytest.raises(PreflightRefused, match="Azure sinks are in storage account acmeeu, "
                       "but Beam's azfs filesystem would write to acmeus"):
        preflight_job(_options("--worker_location=europe-west4",
                               "--blob_service_endpoint=https://acmeus.blob.core.windows.net"),
                      residency, frozenset({"eu"}))


def test_azure_account_of() -> None:
    assert azure_account_of("DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=x==",
                            None) == "acme"
    assert azure_account_of(None, "https://acme.blob.core.windows.net/") == "acme"
    assert azure_account_of(None, "http://127.0.0.1:10000/devstoreaccount1") == \
        "devstoreaccount1"
    assert azure_account_of(None, None) is None
