"""``sealbeam run batch`` and ``sealbeam run streaming``: run a pipeline, print its counts.

The batch pipeline runs on FnApiRunner, the streaming one on the runner its feed needs
(``pipelines.streaming.default_streaming_runner``), unless --runner says otherwise. Before the
pipeline is built, ``pipelines.run_checks`` checks that the broker answers ``/v1/health`` and,
for local runners, that the TEE's interface exists, so such mistakes end in one line.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines import dataflow
from pipelines.batch import RunSummary, run_batch
from pipelines.confidential_mode import remote_mode
from pipelines.options import SealbeamOptions, required, tee_settings
from pipelines.progress import with_heartbeat
from pipelines.run_checks import check_broker, check_tee, is_local_runner
from pipelines.streaming import StreamingOptions, run_streaming

_NOT_BEAM_FLAGS = frozenset({"command", "run_command", "func", "beam_args", "log_level",
                             "log_format", "progress"}) | dataflow.LAUNCH_DESTS


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
                    "batch' does, after the same preflight (--residency_map); write "
                    "region-pinned outputs and per-window dead letters. "
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


def preflight(options: PipelineOptions) -> None:
    """The broker answers and (local runs) the TEE exists, before anything is built."""
    opts = options.view_as(SealbeamOptions)
    if remote_mode(opts):
        return  # the attested pool holds the TEE and talks to the broker (checked by its client)
    check_tee(tee_settings(opts), local=is_local_runner(options.view_as(StandardOptions).runner))
    check_broker(required(opts, "broker_url"))


class _BeamFailureFilter(logging.Filter):
    """Drops the ERROR records (with tracebacks) Beam's runner logs for a failing step: the
    exception reaches the CLI, which prints it as one line (with the traceback under
    --log-level debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("apache_beam") and record.levelno >= logging.ERROR)


@contextmanager
def _one_line_beam_failures() -> Iterator[None]:
    root = logging.getLogger()
    if root.getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    quiet = _BeamFailureFilter()
    handlers = list(root.handlers)
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def run_batch_command(args: argparse.Namespace) -> int:
    if dataflow.is_dataflow(args):
        return _launch_on_dataflow(args, "batch")
    options = PipelineOptions(flags=pipeline_flags(args))
    preflight(options)
    with _one_line_beam_failures():
        return _report(with_heartbeat("run batch", lambda: run_batch(options)))


def run_streaming_command(args: argparse.Namespace) -> int:
    if dataflow.is_dataflow(args):
        return _launch_on_dataflow(args, "streaming")
    options = PipelineOptions(flags=pipeline_flags(args))
    preflight(options)
    with _one_line_beam_failures():
        return _report(with_heartbeat("run streaming", lambda: run_streaming(options)))
