"""The streaming pipeline: partner feeds -> per-window TEE featurization -> pinned outputs.

What it does: ``build_streaming_pipeline`` reads one feed — a file-drop directory watched
for new files (``--source files``, ``file_drop.WatchFileDrop``, each file read as
``ReadSealedRecords`` reads one), a Pub/Sub subscription (``--source pubsub``, one envelope
per message, raw or base64: ``--message_format``), or, in tests, any PTransform such as a
``TestStream`` — puts every element into fixed windows of ``--window_seconds`` and then runs
the batch pipeline's transforms unchanged: ``ParseSealed``, ``ConfidentialProcess``,
``RouteByRegion``, ``WriteRegionPinned``, ``WriteDeadLetters``. No step groups by key, so
nothing waits for a window to close: windows bound which records share a confidential batch
(and so an output file) and a dead-letter file.

``run_streaming`` runs it and, when the feed ends (``--stop_after_seconds``, ``--max_files``,
the end of a test stream, or a cancelled job), returns the batch ``RunSummary`` from the
job's metrics. Runners, as found offline with Beam 2.77: the file-drop feed runs on
``FnApiRunner`` (the old bundle-based DirectRunner cannot run its splittable ``Watch``);
``TestStream`` and ``ReadFromPubSub`` need the bundle-based DirectRunner in streaming mode
(``FnApiRunner`` rejects ``beam:transform:teststream:v1``); ``--runner`` overrides both.
That old runner loses the counters of a step's later bundles on a worker thread
(``StateSampler.scoped_state`` keeps the first bundle's ``MetricsContainer``), so a summary
from it can undercount and fail to reconcile though every output and dead letter was written;
``run_streaming`` warns when it runs there.

What it does not: the Pub/Sub source is option plumbing only — no emulator was available,
so it has never read a message here. It never sees plaintext (``ConfidentialProcess`` does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.runner import PipelineRunner
from apache_beam.transforms.window import FixedWindows

from transforms import DecodeSealedLines
from transforms.read import RawSealedMessages, ReadSealedFiles

from .batch import BatchPipelineOutputs, RunSummary, add_processing_steps, summarize_run
from .errors import PipelineError
from .file_drop import WatchFileDrop
from .options import SealbeamOptions, required

__all__ = ["MESSAGE_FORMATS", "SOURCES", "StreamingOptions", "build_streaming_pipeline",
           "default_streaming_runner", "run_streaming"]

FILES = "files"
PUBSUB = "pubsub"
SOURCES = (FILES, PUBSUB)
RAW = "raw"
BASE64 = "base64"
MESSAGE_FORMATS = (RAW, BASE64)
DEFAULT_WINDOW_SECONDS = 60.0
DEFAULT_POLL_INTERVAL_SECONDS = 10.0

_LOG = logging.getLogger(__name__)


class StreamingOptions(PipelineOptions):
    """Flags of the streaming pipeline, beside ``SealbeamOptions`` (``--input`` is the
    file-drop pattern)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--source", default=FILES, choices=SOURCES,
                            help="files: watch --input for new sealed record files; pubsub: "
                                 "read --subscription, one envelope per message")
        parser.add_argument("--subscription", default=None,
                            help="Pub/Sub subscription (projects/P/subscriptions/S) for "
                                 "--source pubsub")
        parser.add_argument("--message_format", default=RAW, choices=MESSAGE_FORMATS,
                            help="a Pub/Sub message holds one envelope, raw bytes or base64")
        parser.add_argument("--window_seconds", type=float, default=DEFAULT_WINDOW_SECONDS,
                            help="fixed windows: records of one window share batches, "
                                 "outputs and dead-letter files")
        parser.add_argument("--poll_interval_seconds", type=float,
                            default=DEFAULT_POLL_INTERVAL_SECONDS,
                            help="how often the file-drop feed lists --input")
        parser.add_argument("--stop_after_seconds", type=float, default=None,
                            help="end the file-drop feed after this many seconds "
                                 "(tests, demos; default: never)")
        parser.add_argument("--max_files", type=int, default=None,
                            help="end the file-drop feed after this many files "
                                 "(tests, demos; default: never)")


def _window_seconds(stream: StreamingOptions) -> float:
    if not stream.window_seconds or stream.window_seconds <= 0:
        raise PipelineError(f"--window_seconds must be positive, not {stream.window_seconds}")
    return float(stream.window_seconds)


def _read_messages(messages: beam.PCollection, message_format: str
                   ) -> beam.pvalue.DoOutputsTuple:
    if message_format == BASE64:
        return messages | "DecodeBase64" >> DecodeSealedLines()
    if message_format == RAW:
        return messages | "AcceptRaw" >> RawSealedMessages()
    raise PipelineError(f"--message_format must be one of {', '.join(MESSAGE_FORMATS)}")


def _read_feed(p: beam.Pipeline, opts: SealbeamOptions, stream: StreamingOptions,
               source: beam.PTransform | None, window: FixedWindows
               ) -> beam.pvalue.DoOutputsTuple:
    """The feed's envelopes and framing dead letters, every element in its fixed window."""
    if source is not None:
        messages = p | "Source" >> source | "Window" >> beam.WindowInto(window)
        return _read_messages(messages, stream.message_format)
    if stream.source == FILES:
        files = (
            p
            | "WatchFileDrop" >> WatchFileDrop(
                required(opts, "input"), poll_interval_s=stream.poll_interval_seconds,
                stop_after_s=stream.stop_after_seconds, max_files=stream.max_files)
            | "Window" >> beam.WindowInto(window)
        )
        return files | "Open" >> fileio.ReadMatches() | "SplitAndDecode" >> ReadSealedFiles()
    if stream.source == PUBSUB:
        if not stream.subscription:
            raise PipelineError("--subscription is required for --source pubsub")
        messages = (
            p
            | "ReadPubSub" >> beam.io.ReadFromPubSub(subscription=stream.subscription,
                                                     with_attributes=False)
            | "Window" >> beam.WindowInto(window)
        )
        return _read_messages(messages, stream.message_format)
    raise PipelineError(f"--source must be one of {', '.join(SOURCES)}")


def build_streaming_pipeline(p: beam.Pipeline, options: PipelineOptions, *,
                             source: beam.PTransform | None = None) -> BatchPipelineOutputs:
    """Add sealbeam's streaming steps to ``p``.

    ``source``, when given, replaces ``--source``: a PTransform from the pipeline's start to
    message bytes (one envelope each, as ``--message_format`` says), e.g. a ``TestStream``.
    """
    opts = options.view_as(SealbeamOptions)
    stream = options.view_as(StreamingOptions)
    window = FixedWindows(_window_seconds(stream))
    read = _read_feed(p, opts, stream, source, window)
    return add_processing_steps(
        opts, read[ReadSealedFiles.SEALED], read[ReadSealedFiles.DEAD_LETTER])


def default_streaming_runner(options: PipelineOptions, *, test_source: bool = False
                             ) -> PipelineRunner:
    """``FnApiRunner`` for the file-drop feed; the bundle-based DirectRunner for a test
    source or Pub/Sub, which ``FnApiRunner`` cannot run."""
    if not test_source and options.view_as(StreamingOptions).source == FILES:
        return FnApiRunner()
    return BundleBasedDirectRunner()


def run_streaming(options: PipelineOptions, *, source: beam.PTransform | None = None,
                  extra_steps: Callable[[BatchPipelineOutputs], None] | None = None
                  ) -> RunSummary:
    """Run the streaming pipeline until its feed ends; summarize it from its metrics.

    The options are switched to streaming mode. ``source`` is as for
    ``build_streaming_pipeline``; ``extra_steps`` may attach steps to the built outputs
    (written paths, dead letters) before the run, e.g. a notification per written file.
    """
    opts = options.view_as(SealbeamOptions)
    standard = options.view_as(StandardOptions)
    standard.streaming = True
    runner = standard.runner or default_streaming_runner(options,
                                                         test_source=source is not None)
    if isinstance(runner, BundleBasedDirectRunner):
        _LOG.warning("the bundle-based DirectRunner (Beam 2.77) loses the metrics of a step's "
                     "later bundles on a worker thread: this run's counts can be too low and "
                     "need not reconcile; its outputs and dead letters are complete")
    started = time.monotonic()
    pipeline = beam.Pipeline(runner=runner, options=options)
    built = build_streaming_pipeline(pipeline, options, source=source)
    if extra_steps is not None:
        extra_steps(built)
    result = pipeline.run()
    result.wait_until_finish()
    return summarize_run(result, opts, built, started)
