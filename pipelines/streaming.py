"""The streaming pipeline: partner feeds -> event-time windows -> TEE featurization -> pinned
outputs, with late records and duplicates set aside and counted.

What it does: ``build_streaming_pipeline`` first runs the batch pipeline's preflight
(``pipelines.preflight``: the job's residency map, ``--residency_map`` or one derived from
``--output_root``; every sink and worker location checked before any data moves, a refusal
is one line), then reads one feed — a file-drop directory watched
for new files (``--source files``, ``file_drop.WatchFileDrop``), a Pub/Sub subscription
(``--source pubsub``, one envelope per message, raw or base64: ``--message_format``;
``transforms.pubsub``), or, in tests, any PTransform such as a ``TestStream`` — and then:

1. ``ParseSealed`` (headers only) and ``DeduplicateEnvelopes`` by envelope id, in the global
   window so a copy is found across windows (Pub/Sub redeliveries are dropped by message id
   first, in ``AcceptPubsubMessages``);
2. ``StampEventTime``: each record's event time from its header (``sealbeam.event_time``,
   docs/FORMAT.md 2.1), or, for a record of a record stream (profile 2), from its frame
   (falling back to the header's); a record whose window had closed when it arrived (window
   end + ``--allowed_lateness_seconds`` <= arrival) goes, still sealed, to ``<root>/late/``
   under the dead-letter sink of its region (the unrouted sink when its bytes name none;
   ``WriteLateRecords``), counted in ``late``, never into a window. A stream whose records
   fall into several windows is split there, outside the TEE and without a key, into one
   piece per window (docs/FORMAT.md 13.5); the TEE authenticates the stream's header once
   per piece and opens only its records. A redelivered stream is a duplicate of all of its
   records (step 1 sees whole streams);
3. fixed windows of ``--window_seconds`` over event time, and ``HoldForBatches``: per window
   and (region, producer), records are held until ``--max_batch_size`` records,
   ``--max_batch_bytes`` or ``--max_batch_duration_seconds``, or the window's close;
4. ``ConfidentialProcess`` (with ``HoldForBatches`` as its batcher; in remote mode
   ``ConfidentialProcessRemote`` on an attested pool, ``confidential_mode``; either way each
   output key's ``generate`` carries its region's destination, as preflight found it, into
   the broker's ledger), ``RouteByRegion``, ``WriteRegionPinned`` into the map's sinks, and
   dead letters per window to the dead-letter sink of their region (``WriteStreamDeadLetters``:
   per bundle, no GroupByKey, so the dead letters of a batch released as its window closes
   are never dropped as expired).
5. When the feed has ended and the pipeline finished (not cancelled), and the run has
   ``--output_root`` and no ``--residency_map`` (as for batch runs), ``run_streaming``
   writes the run's custody index ``<output_root>/custody-run.intoto.json``
   (``custody_run.write_run_statement``, docs/FORMAT.md 12) from the files the run left:
   outputs, their statements, dead-letter and late files, the counts with ``late``, and the
   feed: for the file drop the files its feed emitted (``file_drop``'s ``input_file_names``
   metric), for Pub/Sub the subscription, for a test source none (``sealbeam custody verify
   --run`` then needs the inputs, ``--input``).

Every run reconciles ``records_in = records_out + dead_letters + duplicates + late``
(``StreamingRunSummary``).

``run_streaming`` runs it and, when the feed ends (``--stop_after_seconds``, ``--max_files``,
``--until_idle_s`` for Pub/Sub, the end of a test stream, or a cancelled job), returns the
summary from the job's metrics. Runners, as found offline with Beam 2.77: the file-drop and
the local Pub/Sub feeds run on ``FnApiRunner`` (both are ``Watch`` polls, which the old
bundle-based DirectRunner cannot run); ``TestStream`` needs the bundle-based DirectRunner in
streaming mode (``FnApiRunner`` rejects ``beam:transform:teststream:v1``); on Dataflow the
Pub/Sub feed is Beam's ``ReadFromPubSub`` with ``id_label``. ``--runner`` overrides. The old
runner loses the counters of a step's later bundles on a worker thread
(``StateSampler.scoped_state`` keeps the first bundle's ``MetricsContainer``), so a summary
from it can undercount; ``run_streaming`` warns when it runs there.

What it does not: it never sees plaintext (``ConfidentialProcess`` does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.runner import PipelineRunner, PipelineState
from apache_beam.transforms.window import FixedWindows
from apache_beam.utils.timestamp import Duration

from transforms import ConfidentialProcess, DecodeSealedLines, ParseSealed, RouteByRegion
from transforms import metrics as names
from transforms.dead_letter_sinks import WriteDeadLettersBySink
from transforms.dedupe import DeduplicateEnvelopes
from transforms.errors import TransformConfigError
from transforms.event_time import StampEventTime
from transforms.late_output import WriteLateRecords
from transforms.pubsub import (
    AcceptPubsubMessages,
    ReadPubsubUntilIdle,
    ReadPubsubWithIdLabel,
)
from transforms.read import RawSealedMessages, ReadSealedFiles
from transforms.stream_batches import HoldForBatches
from transforms.stream_dead_letters import WriteStreamDeadLetters
from transforms.write import WriteRegionPinned

from .batch import BatchPipelineOutputs, RunSummary, _counter_totals, summarize_run
from .confidential_mode import confidential_step
from .custody_run import (
    RUN_STATEMENT_NAME,
    SOURCE_FILES,
    SOURCE_PUBSUB,
    SOURCE_TEST,
    write_run_statement,
)
from .errors import PipelineError
from .file_drop import WatchFileDrop, emitted_files
from .options import SealbeamOptions, allowed_regions, required
from .preflight import PreflightClients, job_residency, preflight_job

__all__ = ["MESSAGE_FORMATS", "SOURCES", "StreamingOptions", "StreamingRunSummary",
           "build_streaming_pipeline", "default_streaming_runner", "run_streaming"]

FILES = "files"
PUBSUB = "pubsub"
SOURCES = (FILES, PUBSUB)
RAW = "raw"
BASE64 = "base64"
MESSAGE_FORMATS = (RAW, BASE64)
DEFAULT_WINDOW_SECONDS = 60.0
DEFAULT_ALLOWED_LATENESS_SECONDS = 60.0
DEFAULT_POLL_INTERVAL_SECONDS = 10.0
DEFAULT_MAX_BATCH_DURATION_SECONDS = 30.0
ID_LABEL_RUNNERS = ("DataflowRunner", "TestDataflowRunner")

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
                                 "--source pubsub; PUBSUB_EMULATOR_HOST selects an emulator")
        parser.add_argument("--message_format", default=RAW, choices=MESSAGE_FORMATS,
                            help="a Pub/Sub message holds one envelope, raw bytes or base64")
        parser.add_argument("--window_seconds", type=float, default=DEFAULT_WINDOW_SECONDS,
                            help="fixed event-time windows: records of one window share "
                                 "batches, outputs and dead-letter files")
        parser.add_argument("--allowed_lateness_seconds", type=float,
                            default=DEFAULT_ALLOWED_LATENESS_SECONDS,
                            help="a record arriving later than its window's end plus this "
                                 "goes, still sealed, to late/ under its region's dead-letter "
                                 "sink (<output_root>/late/) and counts as late")
        parser.add_argument("--max_batch_duration_seconds", type=float,
                            default=DEFAULT_MAX_BATCH_DURATION_SECONDS,
                            help="longest a streaming batch waits to fill before the "
                                 "confidential step (also closed by --max_batch_size, "
                                 "--max_batch_bytes, or its window's end)")
        parser.add_argument("--until_idle_s", "--until-idle-s", dest="until_idle_s",
                            type=float, default=None,
                            help="end the Pub/Sub feed once no message arrived for this many "
                                 "seconds (tests, demos, backfills; default: never)")
        parser.add_argument("--poll_interval_seconds", type=float,
                            default=DEFAULT_POLL_INTERVAL_SECONDS,
                            help="how often the file-drop feed lists --input")
        parser.add_argument("--stop_after_seconds", type=float, default=None,
                            help="end the file-drop feed after this many seconds "
                                 "(tests, demos; default: never)")
        parser.add_argument("--max_files", type=int, default=None,
                            help="end the file-drop feed after this many files "
                                 "(tests, demos; default: never)")


@dataclass(frozen=True)
class StreamingRunSummary(RunSummary):
    """A streaming run's counts: the batch counts plus duplicates and late records."""

    duplicates: int = 0
    late: int = 0

    @property
    def reconciled(self) -> bool:
        return (self.records_in
                == self.records_out + self.dead_letters + self.duplicates + self.late)


def _positive(name: str, value: float | None) -> float:
    if value is None or not value > 0:
        raise PipelineError(f"--{name} must be positive, not {value}")
    return float(value)


def _read_messages(messages: beam.PCollection, message_format: str
                   ) -> tuple[beam.PCollection, list[beam.PCollection]]:
    if message_format == BASE64:
        read = messages | "DecodeBase64" >> DecodeSealedLines()
    elif message_format == RAW:
        read = messages | "AcceptRaw" >> RawSealedMessages()
    else:
        raise PipelineError(f"--message_format must be one of {', '.join(MESSAGE_FORMATS)}")
    return read[ReadSealedFiles.SEALED], [read[ReadSealedFiles.DEAD_LETTER]]


def runner_supports_id_label(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name in ID_LABEL_RUNNERS


def _read_pubsub(p: beam.Pipeline, options: PipelineOptions, stream: StreamingOptions,
                 opts: SealbeamOptions, subscriber_factory: Callable[[], Any] | None
                 ) -> tuple[beam.PCollection, list[beam.PCollection]]:
    if not stream.subscription:
        raise PipelineError("--subscription is required for --source pubsub")
    try:
        if runner_supports_id_label(options):
            deliveries = p | "ReadPubSub" >> ReadPubsubWithIdLabel(stream.subscription)
        else:
            deliveries = p | "ReadPubSub" >> ReadPubsubUntilIdle(
                stream.subscription, until_idle_s=stream.until_idle_s,
                max_messages=opts.max_batch_size, max_bytes=opts.max_batch_bytes,
                max_wait_s=stream.max_batch_duration_seconds,
                subscriber_factory=subscriber_factory)
        accepted = deliveries | "AcceptMessages" >> AcceptPubsubMessages(
            message_format=stream.message_format, horizon_s=opts.dedupe_horizon_s)
    except TransformConfigError as exc:
        raise PipelineError(str(exc)) from None
    return (accepted[AcceptPubsubMessages.SEALED],
            [accepted[AcceptPubsubMessages.DEAD_LETTER]])


def check_subscription(subscription: str) -> None:
    """Fail with a ``PipelineError`` before the run when the local Pub/Sub source cannot read
    ``subscription``: the client library is missing, or the subscription does not exist
    (where ``PUBSUB_EMULATOR_HOST`` points, or on Pub/Sub)."""
    try:
        from google.api_core import exceptions
        from google.cloud import pubsub_v1
    except ImportError:
        raise PipelineError("--source pubsub needs the pubsub extra: "
                            "pip install 'sealbeam[pubsub]'") from None
    client = pubsub_v1.SubscriberClient()
    try:
        client.get_subscription(request={"subscription": subscription}, timeout=30)
    except exceptions.NotFound:
        raise PipelineError(f"Pub/Sub subscription {subscription} does not exist") from None
    except exceptions.GoogleAPIError as exc:
        raise PipelineError(f"cannot read Pub/Sub subscription {subscription}: "
                            f"{type(exc).__name__}") from None
    finally:
        client.close()


def _read_feed(p: beam.Pipeline, options: PipelineOptions, source: beam.PTransform | None,
               subscriber_factory: Callable[[], Any] | None
               ) -> tuple[beam.PCollection, list[beam.PCollection]]:
    """The feed's envelopes (timestamped on arrival) and its framing dead letters."""
    opts = options.view_as(SealbeamOptions)
    stream = options.view_as(StreamingOptions)
    if source is not None:
        return _read_messages(p | "Source" >> source, stream.message_format)
    if stream.source == FILES:
        files = p | "WatchFileDrop" >> WatchFileDrop(
            required(opts, "input"), poll_interval_s=stream.poll_interval_seconds,
            stop_after_s=stream.stop_after_seconds, max_files=stream.max_files)
        read = files | "Open" >> fileio.ReadMatches() | "SplitAndDecode" >> ReadSealedFiles()
        return read[ReadSealedFiles.SEALED], [read[ReadSealedFiles.DEAD_LETTER]]
    if stream.source == PUBSUB:
        return _read_pubsub(p, options, stream, opts, subscriber_factory)
    raise PipelineError(f"--source must be one of {', '.join(SOURCES)}")


def build_streaming_pipeline(p: beam.Pipeline, options: PipelineOptions, *,
                             source: beam.PTransform | None = None,
                             subscriber_factory: Callable[[], Any] | None = None,
                             preflight_clients: PreflightClients | None = None
                             ) -> BatchPipelineOutputs:
    """Add sealbeam's streaming steps to ``p``.

    ``source``, when given, replaces ``--source``: a PTransform from the pipeline's start to
    message bytes (one envelope each, as ``--message_format`` says), each timestamped with
    its arrival, e.g. a ``TestStream``. ``subscriber_factory`` makes the Pub/Sub client of
    the local pull source (default: Google's ``SubscriberClient``). ``preflight_clients``:
    the cloud clients preflight reads sinks with (default: the clouds' own). Preflight runs
    first, as in batch runs: a sink or worker outside the residency map refuses the job
    (``PreflightRefused``) before any step is added or any data moves.
    """
    opts = options.view_as(SealbeamOptions)
    stream = options.view_as(StreamingOptions)
    window_s = _positive("window_seconds", stream.window_seconds)
    if stream.allowed_lateness_seconds is None or stream.allowed_lateness_seconds < 0:
        raise PipelineError(f"--allowed_lateness_seconds must not be negative, not "
                            f"{stream.allowed_lateness_seconds}")
    lateness_s = float(stream.allowed_lateness_seconds)
    regions = allowed_regions(opts)
    residency = job_residency(opts, regions)
    report = preflight_job(opts, residency, regions, preflight_clients)
    try:
        hold = HoldForBatches(max_records=opts.max_batch_size,
                              max_bytes=opts.max_batch_bytes,
                              max_duration_s=stream.max_batch_duration_seconds)
        # In-process (pinned to the broker identity), or remote on an attested pool; both
        # batch with ``hold``, name outputs by their batch, and send each output key's
        # destination (preflight's sink facts) with its ``generate`` to the ledger.
        confidential = confidential_step(opts, batcher=hold,
                                         destinations=report.destinations())
        dedupe = DeduplicateEnvelopes(horizon_s=opts.dedupe_horizon_s)
    except TransformConfigError as exc:
        raise PipelineError(str(exc)) from None
    window = FixedWindows(window_s)
    sealed, feed_dead_letters = _read_feed(p, options, source, subscriber_factory)
    dead_letter_roots = residency.dead_letter_roots()
    unrouted_root = residency.unrouted_dead_letter_sink.beam_path

    # Record streams (profile 2) are judged per record: StampEventTime splits one whose
    # records fall into several windows (or are late) into pieces, without a key.
    parsed = sealed | "ParseHeaders" >> ParseSealed()
    unique = parsed[ParseSealed.SEALED] | "DedupeEnvelopes" >> dedupe
    timed = unique[DeduplicateEnvelopes.UNIQUE] | "EventTime" >> StampEventTime(
        window_s=window_s, allowed_lateness_s=lateness_s)
    # Late records, still sealed, beside their region's dead letters (<root>/late/).
    timed[StampEventTime.LATE] | "WriteLate" >> WriteDeadLettersBySink(
        dead_letter_roots, unrouted_root, writer=WriteLateRecords)
    processed = (
        timed[StampEventTime.ON_TIME]
        | "Window" >> beam.WindowInto(window, allowed_lateness=Duration.of(lateness_s))
        | "Confidential" >> confidential
    )
    written = (
        processed[ConfidentialProcess.SEALED]
        | "Route" >> RouteByRegion()
        | "WritePinned" >> WriteRegionPinned(residency.sinks(), regions, residency.keks())
    )
    arrival_dead_letters = (
        (*feed_dead_letters, parsed[ParseSealed.DEAD_LETTER], timed[StampEventTime.DEAD_LETTER])
        | "ArrivalDeadLetters" >> beam.Flatten()
        | "WindowDeadLetters" >> beam.WindowInto(window,
                                                  allowed_lateness=Duration.of(lateness_s))
    )
    dead_letters = (
        (arrival_dead_letters, processed[ConfidentialProcess.DEAD_LETTER],
         written[WriteRegionPinned.DEAD_LETTER])
        | "AllDeadLetters" >> beam.Flatten()
    )
    dead_letter_paths = dead_letters | "WriteDeadLetters" >> WriteDeadLettersBySink(
        dead_letter_roots, unrouted_root, writer=WriteStreamDeadLetters)
    return BatchPipelineOutputs(written[WriteRegionPinned.WRITTEN], dead_letters,
                                confidential.compiled.fingerprint, dead_letter_paths,
                                {"map": residency.to_json(), "preflight": report.to_json()})


def default_streaming_runner(options: PipelineOptions, *, test_source: bool = False
                             ) -> PipelineRunner:
    """``FnApiRunner`` for the file-drop and Pub/Sub feeds (``Watch`` polls); the
    bundle-based DirectRunner for a test source, which ``FnApiRunner`` cannot run."""
    if test_source:
        return BundleBasedDirectRunner()
    return FnApiRunner()


def run_streaming(options: PipelineOptions, *, source: beam.PTransform | None = None,
                  extra_steps: Callable[[BatchPipelineOutputs], None] | None = None,
                  subscriber_factory: Callable[[], Any] | None = None,
                  preflight_clients: PreflightClients | None = None
                  ) -> StreamingRunSummary:
    """Run the streaming pipeline until its feed ends; summarize it from its metrics.

    The options are switched to streaming mode. ``source`` is as for
    ``build_streaming_pipeline``; ``extra_steps`` may attach steps to the built outputs
    (written paths, dead letters) before the run, e.g. a notification per written file.
    ``preflight_clients``: the cloud clients preflight reads sinks with (default: the clouds'
    own, with default credentials).
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
    stream = options.view_as(StreamingOptions)
    if (source is None and stream.source == PUBSUB and stream.subscription
            and subscriber_factory is None and not runner_supports_id_label(options)):
        check_subscription(stream.subscription)
    started = time.monotonic()
    pipeline = beam.Pipeline(runner=runner, options=options)
    built = build_streaming_pipeline(pipeline, options, source=source,
                                     subscriber_factory=subscriber_factory,
                                     preflight_clients=preflight_clients)
    if extra_steps is not None:
        extra_steps(built)
    result = pipeline.run()
    result.wait_until_finish()
    summary = summarize_run(result, opts, built, started)
    totals = _counter_totals(result)
    streaming_summary = StreamingRunSummary(**{**summary.__dict__,
                                               "duplicates": totals.get(names.DUPLICATES, 0),
                                               "late": totals.get(names.LATE, 0)})
    if result.state == PipelineState.CANCELLED:
        _LOG.warning("the job was cancelled: no run statement (%s) is written, since records "
                     "in flight may be in no output, dead letter or late file",
                     RUN_STATEMENT_NAME)
    elif opts.output_root and not opts.residency_map:
        # The run's custody index beside its outputs, as a batch run writes it (docs/FORMAT.md
        # 12): written once the pipeline finished, from the files it left.
        write_run_statement(opts.output_root, None, allowed_regions(opts),
                            streaming_summary.to_json(),
                            **_statement_source(stream, source, result))
    return streaming_summary


def _statement_source(stream: StreamingOptions, source: beam.PTransform | None,
                      result: beam.runners.runner.PipelineResult) -> dict[str, Any]:
    """How the run was fed, for its run statement: a test source, Pub/Sub (its
    subscription), or the file drop with the files its feed emitted (``input_file_names``,
    which Beam caps at 1 MB of paths: when fewer names than files came back, the statement
    names those and states how many were read, and a verifier asks for the files)."""
    if source is not None:
        return {"source": SOURCE_TEST}
    if stream.source == PUBSUB:
        return {"source": SOURCE_PUBSUB, "subscription": stream.subscription}
    paths, emitted = emitted_files(result)
    return {"source": SOURCE_FILES, "input_paths": sorted(paths), "input_files": emitted}
