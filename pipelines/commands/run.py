"""``sealbeam run batch`` and ``sealbeam run streaming``: run a pipeline, print its counts.

The batch pipeline runs on FnApiRunner, the streaming one on the runner its feed needs
(``pipelines.streaming.default_streaming_runner``), unless --runner says otherwise.
"""

from __future__ import annotations

import argparse
import json

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import dataflow
from pipelines.batch import RunSummary, run_batch
from pipelines.options import SealbeamOptions
from pipelines.streaming import StreamingOptions, run_streaming

_NOT_BEAM_FLAGS = frozenset({"command", "run_command", "func", "beam_args"}) | dataflow.LAUNCH_DESTS


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
    dataflow.add_launch_arguments(batch)
    batch.add_argument("beam_args", nargs=argparse.REMAINDER,
                       help="further Beam pipeline flags, after '--'")
    batch.set_defaults(func=run_batch_command)
    streaming = pipelines.add_parser(
        "streaming", help="run the streaming pipeline over a partner feed",
        description="Watch a file-drop pattern (--input) for new sealed record files, or read "
                    "a Pub/Sub subscription (one envelope per message), in fixed windows of "
                    "the event time each header states; set late records aside (late/) and "
                    "drop duplicates; run the feature spec in the (simulated) TEE as 'run "
                    "batch' does; write region-pinned outputs and per-window dead letters. "
                    "Runs until the feed ends (--stop_after_seconds, --max_files, "
                    "--until-idle-s, a cancelled job), then prints one JSON line of counts "
                    "(records_in = records_out + dead_letters + duplicates + late). Further "
                    "Beam flags may follow a '--'.")
    SealbeamOptions._add_argparse_args(streaming)
    StreamingOptions._add_argparse_args(streaming)
    dataflow.add_launch_arguments(streaming)
    streaming.add_argument("beam_args", nargs=argparse.REMAINDER,
                           help="further Beam pipeline flags, after '--'")
    streaming.set_defaults(func=run_streaming_command)


def pipeline_flags(args: argparse.Namespace) -> list[str]:
    flags = [f"--{name}={value}" for name, value in sorted(vars(args).items())
             if name not in _NOT_BEAM_FLAGS and value is not None]
    if getattr(args, "runner", None) and not dataflow.is_dataflow(args):
        flags.append(f"--runner={args.runner}")
    extra = [a for a in (args.beam_args or []) if a != "--"]
    return flags + extra


def _launch_on_dataflow(args: argparse.Namespace, kind: str) -> int:
    summary = dataflow.launch(pipeline_flags(args), dataflow.launch_settings(args), kind)
    print(json.dumps(summary, sort_keys=True))
    return 0


def _report(summary: RunSummary) -> int:
    print(json.dumps(summary.to_json(), sort_keys=True))
    return 0 if summary.reconciled else 1


def run_batch_command(args: argparse.Namespace) -> int:
    if dataflow.is_dataflow(args):
        return _launch_on_dataflow(args, "batch")
    return _report(run_batch(PipelineOptions(flags=pipeline_flags(args))))


def run_streaming_command(args: argparse.Namespace) -> int:
    if dataflow.is_dataflow(args):
        return _launch_on_dataflow(args, "streaming")
    return _report(run_streaming(PipelineOptions(flags=pipeline_flags(args))))
