"""``sealbeam run batch|streaming --runner DataflowRunner``: launch on Google Cloud Dataflow.

What it does: ``add_launch_arguments`` adds the launch flags to ``sealbeam run``;
``launch_settings`` reads them; ``check_launch`` (a pure function, no I/O) refuses, with one
line, what would put data where it must not go: a confidential launch on a machine type
without AMD SEV (N2D is the default), a ``--worker_region`` or ``--region`` outside the GCP
regions of any of the data's regions (``--regions``; the map is ``DEFAULT_GCP_REGIONS`` or
``--gcp_regions``), no customer-managed key for Dataflow's own state unless explicitly
waived, no way to install sealbeam on the workers, and a confidential step that would run in
the Beam worker: Dataflow's confidential workers are AMD SEV guests without SEV-SNP reports,
so on Dataflow the confidential step must run on the attested pool (``--pool_endpoints`` or
``--pool_discovery``). ``dataflow_flags`` turns the settings into Beam's flags:
``--dataflow_service_options=enable_confidential_compute``, ``--machine_type``,
``--worker_region``, ``--no_use_public_ips``, ``--dataflow_kms_key``, ``--setup_file`` or
``--sdk_container_image``. ``launch`` builds the pipeline with ``DataflowRunner``; with
``--dry_run`` nothing is submitted or staged: the job (Dataflow's own Job JSON, with the
environment Dataflow would receive) is built offline and written to ``--job-json``.

What it does not: submit anything in a dry run, wait for a submitted job, or read metrics
(Dataflow reports those in its console; a run summary needs the job to finish).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PipelineError

__all__ = [
    "CONFIDENTIAL_SERVICE_OPTION",
    "DEFAULT_GCP_REGIONS",
    "DEFAULT_MACHINE_TYPE",
    "LAUNCH_DESTS",
    "DataflowLaunch",
    "DataflowLaunchError",
    "add_launch_arguments",
    "check_launch",
    "dataflow_flags",
    "is_dataflow",
    "launch",
    "launch_settings",
    "parse_gcp_regions",
]

DATAFLOW_RUNNER = "DataflowRunner"
CONFIDENTIAL_SERVICE_OPTION = "enable_confidential_compute"
DEFAULT_MACHINE_TYPE = "n2d-standard-4"
SEV_MACHINE_PREFIXES = ("n2d-",)          # AMD EPYC machine series Dataflow runs as SEV guests
# sealbeam region -> GCP regions its data may be processed in ("europe-*": a prefix).
DEFAULT_GCP_REGIONS: Mapping[str, tuple[str, ...]] = {"eu": ("europe-*",), "us": ("us-*",)}
STAGED_PIPELINE = "pipeline.pb"
_GCP_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
LAUNCH_DESTS = frozenset({
    "runner", "confidential", "project", "region", "worker_region", "machine_type",
    "temp_location", "staging_location", "dataflow_kms_key", "waive_dataflow_kms_key",
    "setup_file", "sdk_container_image", "job_name", "subnetwork", "dry_run", "job_json",
    "gcp_regions",
})


class DataflowLaunchError(PipelineError):
    """A Dataflow launch refused before anything is built (one line, says what to change)."""


@dataclass(frozen=True)
class DataflowLaunch:
    project: str | None
    region: str | None
    worker_region: str | None
    machine_type: str | None
    temp_location: str | None
    staging_location: str | None = None
    dataflow_kms_key: str | None = None
    waive_dataflow_kms_key: bool = False
    setup_file: str | None = None
    sdk_container_image: str | None = None
    job_name: str | None = None
    subnetwork: str | None = None
    confidential: bool = False
    dry_run: bool = False
    job_json: str | None = None
    gcp_regions: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_GCP_REGIONS))

    @property
    def effective_worker_region(self) -> str | None:
        return self.worker_region or self.region

    @property
    def effective_machine_type(self) -> str | None:
        return self.machine_type or (DEFAULT_MACHINE_TYPE if self.confidential else None)


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Dataflow launch (with --runner DataflowRunner)")
    group.add_argument("--runner", default=None,
                       help="Beam runner; DataflowRunner launches on Dataflow (see below)")
    group.add_argument("--confidential", action="store_true",
                       help="confidential Dataflow workers: enable_confidential_compute, an "
                            f"AMD SEV machine type (default {DEFAULT_MACHINE_TYPE}), no public "
                            "IPs; the data's regions pin the worker region")
    group.add_argument("--project", default=None, help="GCP project of the job")
    group.add_argument("--region", default=None, help="Dataflow regional endpoint")
    group.add_argument("--worker_region", default=None,
                       help="region of the workers (default: --region)")
    group.add_argument("--machine_type", default=None, help="worker machine type")
    group.add_argument("--temp_location", default=None, help="gs:// path for temp files")
    group.add_argument("--staging_location", default=None,
                       help="gs:// path for staged files (default: <temp_location>/staging)")
    group.add_argument("--dataflow_kms_key", default=None,
                       help="Cloud KMS key (CMK) for Dataflow's shuffle, state and temp files")
    group.add_argument("--waive_dataflow_kms_key", action="store_true",
                       help="launch without a CMK (Google-managed keys protect Dataflow state)")
    group.add_argument("--setup_file", default=None,
                       help="setup.py that installs sealbeam on the workers")
    group.add_argument("--sdk_container_image", default=None,
                       help="prebuilt worker image with sealbeam installed (instead of "
                            "--setup_file)")
    group.add_argument("--job_name", default=None, help="Dataflow job name")
    group.add_argument("--subnetwork", default=None,
                       help="subnetwork for workers without public IPs")
    group.add_argument("--dry_run", action="store_true",
                       help="build the Dataflow job offline, submit nothing, exit 0")
    group.add_argument("--job-json", dest="job_json", default=None,
                       help="write the job (Dataflow's Job JSON) to this file for review")
    group.add_argument("--gcp_regions", default=None,
                       help="where each data region may be processed, e.g. "
                            "'eu=europe-west4|europe-west1,us=us-*' (default: eu=europe-*, "
                            "us=us-*)")


def is_dataflow(args: argparse.Namespace) -> bool:
    return getattr(args, "runner", None) == DATAFLOW_RUNNER


def parse_gcp_regions(text: str | None) -> dict[str, tuple[str, ...]]:
    """``'eu=europe-west4|europe-*,us=us-central1'`` -> {region: GCP regions or prefixes}."""
    if not text:
        return dict(DEFAULT_GCP_REGIONS)
    mapping: dict[str, tuple[str, ...]] = {}
    for item in text.split(","):
        name, _, places = item.partition("=")
        values = tuple(p.strip() for p in places.split("|") if p.strip())
        if not name.strip() or not values:
            raise DataflowLaunchError(f"--gcp_regions item {item!r} is not REGION=GCP|GCP")
        mapping[name.strip()] = values
    return mapping


def launch_settings(args: argparse.Namespace) -> DataflowLaunch:
    return DataflowLaunch(
        project=args.project, region=args.region, worker_region=args.worker_region,
        machine_type=args.machine_type, temp_location=args.temp_location,
        staging_location=args.staging_location, dataflow_kms_key=args.dataflow_kms_key,
        waive_dataflow_kms_key=bool(args.waive_dataflow_kms_key), setup_file=args.setup_file,
        sdk_container_image=args.sdk_container_image, job_name=args.job_name,
        subnetwork=args.subnetwork, confidential=bool(args.confidential),
        dry_run=bool(args.dry_run), job_json=args.job_json,
        gcp_regions=parse_gcp_regions(args.gcp_regions))


def _allows(places: Sequence[str], gcp_region: str) -> bool:
    return any(gcp_region.startswith(p[:-1]) if p.endswith("*") else gcp_region == p
               for p in places)


def _check_region(what: str, gcp_region: str, data_regions: Sequence[str],
                  mapping: Mapping[str, tuple[str, ...]]) -> None:
    if not _GCP_REGION.fullmatch(gcp_region):
        raise DataflowLaunchError(f"{what} {gcp_region!r} is not a GCP region name")
    for data_region in sorted(data_regions):
        places = mapping.get(data_region)
        if places is None:
            raise DataflowLaunchError(f"no GCP regions are known for data region "
                                      f"{data_region!r}: name them with --gcp_regions")
        if not _allows(places, gcp_region):
            raise DataflowLaunchError(
                f"{what} {gcp_region} is outside data region {data_region!r} "
                f"(allowed: {', '.join(places)})")


def check_launch(launch: DataflowLaunch, data_regions: Sequence[str], *,
                 remote_mode: bool) -> None:
    """Refuse a launch that breaks a rule above, with one line (pure: no I/O)."""
    if not launch.project or not launch.region or not launch.temp_location:
        raise DataflowLaunchError("a Dataflow launch needs --project, --region and "
                                  "--temp_location")
    if not remote_mode:
        raise DataflowLaunchError(
            "on Dataflow the confidential step runs on the attested pool: pass "
            "--pool_endpoints or --pool_discovery (Dataflow workers have no SEV-SNP "
            "evidence, so the broker would release them no keys)")
    machine_type = launch.effective_machine_type
    if launch.confidential and not str(machine_type).startswith(SEV_MACHINE_PREFIXES):
        raise DataflowLaunchError(
            f"machine type {machine_type} cannot run confidential Dataflow workers "
            f"(AMD SEV needs {'|'.join(p + '*' for p in SEV_MACHINE_PREFIXES)})")
    _check_region("--region", str(launch.region), data_regions, launch.gcp_regions)
    _check_region("--worker_region", str(launch.effective_worker_region), data_regions,
                  launch.gcp_regions)
    if not launch.dataflow_kms_key and not launch.waive_dataflow_kms_key:
        raise DataflowLaunchError(
            "--dataflow_kms_key is required (a customer-managed key for Dataflow's shuffle, "
            "streaming state and temp files); pass --waive_dataflow_kms_key to go without")
    if not launch.setup_file and not launch.sdk_container_image:
        raise DataflowLaunchError("Dataflow workers need sealbeam: pass --setup_file "
                                  "(setup.py) or --sdk_container_image")
    if launch.job_json and not launch.dry_run:
        raise DataflowLaunchError("--job-json writes the job of a --dry_run only")


def dataflow_flags(launch: DataflowLaunch, kind: str) -> list[str]:
    """Beam's flags for the launch (after ``check_launch``)."""
    name = launch.job_name or f"sealbeam-{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    flags = [f"--runner={DATAFLOW_RUNNER}", f"--project={launch.project}",
             f"--region={launch.region}", f"--worker_region={launch.effective_worker_region}",
             f"--temp_location={launch.temp_location}", f"--job_name={name}",
             f"--staging_location={launch.staging_location or launch.temp_location.rstrip('/')}"
             f"{'' if launch.staging_location else '/staging'}"]
    if launch.effective_machine_type:
        flags.append(f"--machine_type={launch.effective_machine_type}")
    if launch.confidential:
        flags += [f"--dataflow_service_options={CONFIDENTIAL_SERVICE_OPTION}",
                  "--no_use_public_ips"]
    if launch.dataflow_kms_key:
        flags.append(f"--dataflow_kms_key={launch.dataflow_kms_key}")
    if launch.setup_file:
        flags.append(f"--setup_file={launch.setup_file}")
    if launch.sdk_container_image:
        flags.append(f"--sdk_container_image={launch.sdk_container_image}")
    if launch.subnetwork:
        flags.append(f"--subnetwork={launch.subnetwork}")
    if kind == "streaming":
        flags.append("--streaming")
    if launch.dry_run:
        # A dry run stages nothing: Beam's setup-file build would run; the job names the file.
        flags += ["--dry_run=True", "--no_auth", "--sdk_location=container"]
    return flags


def _offline_job_document(result: Any) -> dict[str, Any]:
    """The Job JSON Dataflow would receive, with its environment, built without staging."""
    from apache_beam.runners.dataflow.internal import apiclient

    job = result.job
    staging = job.options.view_as(apiclient.GoogleCloudOptions).staging_location
    job.proto.environment = apiclient.Environment(
        packages=[], options=job.options,
        environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,
        proto_pipeline_staged_url=f"{staging.rstrip('/')}/{STAGED_PIPELINE}",
        proto_pipeline=job.proto_pipeline).proto
    return json.loads(job.json())


def launch(sealbeam_flags: Sequence[str], launch_settings_: DataflowLaunch, kind: str
           ) -> dict[str, Any]:
    """Build (dry run: and write) or submit the job; a one-line summary as a dict."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

    try:
        from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner
        from apache_beam.runners.dataflow.internal import apiclient  # noqa: F401 (GCP extra)
    except ImportError:
        raise DataflowLaunchError("launching on Dataflow needs Beam's GCP extra: pip install "
                                  "'sealbeam[dataflow]'") from None

    from .batch import build_batch_pipeline
    from .confidential_mode import remote_mode
    from .options import SealbeamOptions, allowed_regions
    from .streaming import build_streaming_pipeline

    opts = PipelineOptions(flags=list(sealbeam_flags)).view_as(SealbeamOptions)
    check_launch(launch_settings_, sorted(allowed_regions(opts)), remote_mode=remote_mode(opts))
    options = PipelineOptions(flags=[*sealbeam_flags, *dataflow_flags(launch_settings_, kind)])
    setup_file = options.view_as(SetupOptions).setup_file
    if launch_settings_.dry_run:
        options.view_as(SetupOptions).setup_file = None   # named in the summary, not built
    pipeline = beam.Pipeline(runner=DataflowRunner(), options=options)
    if kind == "streaming":
        build_streaming_pipeline(pipeline, options)
    else:
        build_batch_pipeline(pipeline, options)
    result = pipeline.run()
    summary: dict[str, Any] = {
        "runner": DATAFLOW_RUNNER, "kind": kind, "dry_run": launch_settings_.dry_run,
        "confidential": launch_settings_.confidential,
        "machine_type": launch_settings_.effective_machine_type,
        "worker_region": launch_settings_.effective_worker_region,
        "setup_file": setup_file, "sdk_container_image": launch_settings_.sdk_container_image,
    }
    if launch_settings_.dry_run:
        document = _offline_job_document(result)
        summary["job_name"] = document.get("name")
        if launch_settings_.job_json:
            Path(launch_settings_.job_json).write_text(
                json.dumps(document, indent=2, sort_keys=True) + "\n", "utf-8")
            summary["job_json"] = launch_settings_.job_json
    else:
        summary["job_id"] = result.job_id()
    return summary
