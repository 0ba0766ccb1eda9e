"""``sealbeam demo``: the main job end to end on the embedded default; prints one JSON line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from enclave_workers.batch_processor import OUTPUT_FORMATS, SEALED_ARROW
from pipelines.demo import DEFAULT_RECORDS, DEMO_PROFILE, run_demo
from pipelines.progress import with_heartbeat
from pipelines.sealing import RECORD_PROFILES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run everything end to end on the embedded default (no cloud)",
        description="Generate synthetic partner data, create keys, seal, start the broker on "
                    "loopback, run the batch pipeline with the simulated SEV-SNP worker and the "
                    "default feature spec, open and check the outputs, verify the audit "
                    "ledger, and print one JSON line (with rows_suppressed).")
    parser.add_argument("--records", type=int, default=DEFAULT_RECORDS,
                        help=f"synthetic records to generate (default {DEFAULT_RECORDS})")
    parser.add_argument("--workdir", type=Path, default=Path("demo-out"),
                        help="directory for the demo's files (default demo-out)")
    parser.add_argument("--output-format", dest="output_format", choices=OUTPUT_FORMATS,
                        default=SEALED_ARROW,
                        help=f"output files to write and check (default {SEALED_ARROW})")
    parser.add_argument("--profile", type=int, choices=RECORD_PROFILES, default=DEMO_PROFILE,
                        help="sealed-record profile the partners use: 1 = a v1 record "
                             "envelope per line, 2 = record streams "
                             f"(default {DEMO_PROFILE})")
    parser.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    summary = with_heartbeat("demo", lambda: run_demo(
        records=args.records, workdir=args.workdir, output_format=args.output_format,
        profile=args.profile))
    print(json.dumps(summary, sort_keys=True))
    reconciled = summary["records_in"] == summary["records_out"] + summary["dead_letters"]
    return 0 if reconciled and summary["ledger_verified"] else 1
