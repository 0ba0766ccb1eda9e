"""``sealbeam run batch``: run the batch pipeline (FnApiRunner unless --runner says otherwise)."""

from __future__ import annotations

import argparse
import json

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.batch import run_batch
from pipelines.options import SealbeamOptions

_NOT_BEAM_FLAGS = frozenset({"command", "run_command", "func", "beam_args"})


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run a sealbeam pipeline",
                                   description="Run a sealbeam pipeline.")
    pipelines = parser.add_subparsers(dest="run_command", metavar="PIPELINE", required=True)
    batch = pipelines.add_parser(
        "batch", help="run the batch pipeline over sealed record files",
        description="Read sealed records, run the feature spec on them in the (simulated) "
                    "TEE with keys from the broker, write region-pinned outputs (sealed "
                    "batches or PME Parquet) and dead letters, and print one JSON line of "
                    "counts (with rows_suppressed). Further Beam flags (e.g. --runner) may "
                    "follow a '--'.")
    SealbeamOptions._add_argparse_args(batch)
    batch.add_argument("beam_args", nargs=argparse.REMAINDER,
                       help="further Beam pipeline flags, after '--'")
    batch.set_defaults(func=run_batch_command)


def pipeline_flags(args: argparse.Namespace) -> list[str]:
    flags = [f"--{name}={value}" for name, value in sorted(vars(args).items())
             if name not in _NOT_BEAM_FLAGS and value is not None]
    extra = [a for a in (args.beam_args or []) if a != "--"]
    return flags + extra


def run_batch_command(args: argparse.Namespace) -> int:
    summary = run_batch(PipelineOptions(flags=pipeline_flags(args)))
    print(json.dumps(summary.to_json(), sort_keys=True))
    return 0 if summary.reconciled else 1
