"""``sealbeam residency check MAP``: validate a residency map, optionally preflight it.

What it does: ``check MAP`` validates the map (every problem with its line and field) and
prints, per region, its sink, dead-letter sink, allowed locations, worker locations and KEK;
``--preflight`` also reads where every sink really is (GCS bucket location and KMS key, Azure
account location, replication and encryption) and where each region's KEK is (Cloud KMS, Key
Vault) with the default cloud credentials and prints one line per sink and KEK, exiting 2 with
the first refusal; ``--dataflow_region``,
``--worker_region`` and ``--worker_zone`` check a Dataflow job's worker flags against the map;
``--regions`` limits the checks to the regions of one job; ``--pool_endpoints`` (or
``--pool_discovery``) with ``--pool_policy`` attests each pool worker now and holds its attested
location against the map, as a remote-mode run's preflight does. ``policy MAP`` prints the
``worker_locations`` field of a broker release rule (docs/PROTOCOL.md, section 7.2) that
grants each region's keys only to workers attested in that region's worker locations, with
the map's ``maa_location_claim`` (the MAA token claim an Azure worker's location is read from)
when the map names one.

What it does not: create buckets or accounts, or start a pipeline.
"""

from __future__ import annotations

import argparse

import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.preflight import PreflightReport, check_dataflow_workers, run_preflight
from pipelines.preflight.pool import pool_worker_checks
from pipelines.preflight.report import WorkerCheck
from pipelines.residency import ResidencyMap

# The run's flags that say which pool to attest and how (pipelines/options.py has their help).
POOL_FLAGS = {
    "pool_endpoints": "comma-separated pool worker URLs to attest and hold against the map",
    "pool_discovery": "file listing pool worker URLs (as sealbeam run takes it)",
    "pool_policy": "release policy (YAML) a pool worker's evidence must satisfy",
    "dev_tee_dir": "dev TEE chain directory (simulated pool workers)",
    "pool_confidential_space_audience": "token audience of Confidential Space pool workers",
    "pool_dev_tdx_root": "dev TDX root (root.pem) for simulated TDX pool workers",
    "feature_spec": "feature spec (YAML) the pool workers run (default: the built-in one)",
    "output_format": "output format the pool workers were started with (default sealed-arrow)",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``residency`` command group to ``sealbeam``."""
    group = subparsers.add_parser("residency", help="check a residency map",
                                  description=__doc__.split("\n\n")[1])
    commands = group.add_subparsers(dest="residency_command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check", help="validate a residency map; optionally preflight its sinks",
        description="Validate a residency map (YAML) and print its regions. With --preflight, "
                    "read where each sink and KEK really is and refuse with one line on a "
                    "mismatch. With --pool_endpoints (or --pool_discovery) and --pool_policy, "
                    "attest each pool worker and refuse one attested outside the map's worker "
                    "locations.")
    check.add_argument("map", metavar="MAP", help="residency map (YAML)")
    check.add_argument("--regions", default=None,
                       help="comma-separated regions of one job (default: every region)")
    check.add_argument("--preflight", action="store_true",
                       help="read each sink's location and encryption, and each KEK's "
                            "location, from its cloud")
    check.add_argument("--dataflow_region", default=None, help="Dataflow --region to check")
    check.add_argument("--worker_region", default=None, help="Dataflow --worker_region")
    check.add_argument("--worker_zone", default=None, help="Dataflow --worker_zone")
    for name, text in POOL_FLAGS.items():
        check.add_argument(f"--{name}", default=None, help=text)
    check.set_defaults(func=check_command)
    policy = commands.add_parser(
        "policy", help="print the release-rule worker_locations field for the map",
        description="Print, as YAML, the worker_locations field to add to the broker's release "
                    "rules, so that a region's keys go only to workers attested in its worker "
                    "locations, and the map's maa_location_claim when it names one (the MAA "
                    "token claim an Azure worker's location is read from).")
    policy.add_argument("map", metavar="MAP", help="residency map (YAML)")
    policy.set_defaults(func=policy_command)


def check_command(args: argparse.Namespace) -> int:
    residency = ResidencyMap.load(args.map)
    regions = (sorted(residency.regions) if not args.regions
               else sorted(r.strip() for r in args.regions.split(",") if r.strip()))
    print(f"{args.map}: ok, {len(residency.regions)} region(s)")
    for name in sorted(residency.regions):
        region = residency.regions[name]
        print(f"  {name}: sink {region.sink.url}, dead letters {region.dead_letter_sink.url}")
        print(f"    locations {', '.join(region.locations)}; workers "
              f"{', '.join(region.worker_locations)}; kek {region.kek}"
              f"{'; customer-managed key required' if region.require_cmk else ''}"
              f"{'; local KEK accepted' if region.local_kek else ''}")
    print(f"  unrouted dead letters: {residency.unrouted_dead_letter_sink.url}")
    workers: tuple[WorkerCheck, ...] = ()
    if args.dataflow_region or args.worker_region or args.worker_zone:
        workers = check_dataflow_workers(args.dataflow_region, args.worker_region,
                                         args.worker_zone, residency, regions)
    if args.pool_endpoints or args.pool_discovery:
        flags = [f"--{name}={getattr(args, name)}" for name in POOL_FLAGS
                 if getattr(args, name) is not None]
        workers += pool_worker_checks(PipelineOptions(flags=flags), residency, regions)
    if args.preflight:
        report = run_preflight(residency, regions, workers)
    else:
        report = PreflightReport((), tuple(workers))
    for sink in report.sinks:
        print(f"  preflight {sink.role} {sink.url}: {sink.location} "
              f"({sink.location_type or 'n/a'}), encryption {sink.encryption}: "
              f"{'REFUSED' if sink.refusal else 'ok'}")
    for kek in report.keks:
        print(f"  preflight kek {kek.kek} of {kek.region}: {kek.location} ({kek.source}): "
              f"{'REFUSED' if kek.refusal else 'ok'}")
    for worker in report.workers:
        print(f"  preflight workers ({worker.source}): {worker.location}: "
              f"{'REFUSED' if worker.refusal else 'ok'}")
    report.raise_if_refused()
    return 0


def policy_command(args: argparse.Namespace) -> int:
    residency = ResidencyMap.load(args.map)
    field: dict[str, object] = {"worker_locations": {
        name: sorted({location.lower() for location in region.worker_locations})
        for name, region in sorted(residency.regions.items())}}
    if residency.maa_location_claim is not None:
        field["maa_location_claim"] = residency.maa_location_claim
    print(yaml.safe_dump(field, default_flow_style=None, sort_keys=True), end="")
    return 0
