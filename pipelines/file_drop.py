"""The file-drop feed: watch a file pattern and emit each new file once, as it appears.

Usage::

    files = p | WatchFileDrop("gs://partner-drop/acme/*.sealed", poll_interval_s=30,
                              stop_after_s=None, max_files=None)      # unbounded
    read = files | fileio.ReadMatches() | ReadSealedFiles()

Each poll lists the pattern (``FileSystems.match``) and emits the files not emitted before,
stamped with the poll time; the watermark follows the poll time. It is
``fileio.MatchContinuously`` with two differences that make it run on the local runners and
end where a test or demo needs it to:

- Beam 2.77's ``MatchContinuously`` is ``apache_beam.io.watch.Watch`` with a stop given as a
  poll count. ``FnApiRunner`` does not honour the delay a splittable DoFn asks for between
  polls (``defer_remainder``), so that count is used up in milliseconds and files dropped
  later are never seen; the bundle-based DirectRunner cannot run ``Watch`` at all. Here the
  poll function paces itself (it sleeps out whatever is left of the interval since its last
  poll, a no-op on runners that honour the delay, such as Dataflow), and the time bound is
  wall-clock time (``watch.after_total_of``).
- ``max_files`` ends the feed once that many files have been matched: the poll returns the
  first ``max_files`` files in (modification time, path) order and declares itself complete,
  which also releases the watermark.

Each file the feed emits is counted (``input_files``) and its path added to a string-set
metric (``input_file_names``); ``emitted_files`` reads both back from the finished job, and
``run_streaming`` names exactly these files as the run's inputs in its custody statement
(``pipelines.custody_run``). Beam caps a string set at 1 MB of paths and drops what is over
silently, and Beam 2.77's ``FnApiRunner`` keeps one bundle's set per step in
``metrics().query()`` (it has no combiner for string sets: found with two workers, half the
names), so ``emitted_files`` also unions every set in the job's monitoring infos; the
counter shows when names are still missing.

Partners must write a file under a name the pattern does not match and rename it when done
(as ``sealbeam seal`` does into a temporary name): a file is read once, when first seen.

What it does not: it does not read files (``transforms.read.ReadSealedFiles`` does), and its
record of seen files is the ``Watch`` restriction, which grows with the number of files.
"""

from __future__ import annotations

import time

import apache_beam as beam
from apache_beam.io import filesystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.watch import PollFn, PollResult, Watch, after_total_of, never
from apache_beam.metrics import Metrics, monitoring_infos
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.utils.timestamp import Timestamp

from transforms.metrics import INPUT_FILE_NAMES, INPUT_FILES, NAMESPACE

from .errors import PipelineError

__all__ = ["WatchFileDrop", "emitted_files"]


def _file_path(metadata: filesystem.FileMetadata) -> str:
    return metadata.path


class _RecordInputFile(beam.DoFn):
    """Counts each emitted file and adds its path to the run's set of input files."""

    def __init__(self) -> None:
        self._files = Metrics.counter(NAMESPACE, INPUT_FILES)
        self._names = Metrics.string_set(NAMESPACE, INPUT_FILE_NAMES)

    def process(self, pattern_and_file: tuple[str, filesystem.FileMetadata]
                ) -> list[filesystem.FileMetadata]:
        metadata = pattern_and_file[1]
        self._files.inc()
        self._names.add(metadata.path)
        return [metadata]


def _drop_order(metadata: filesystem.FileMetadata) -> tuple[float, str]:
    return (metadata.last_updated_in_seconds or 0.0, metadata.path)


class _PollFileDrop(PollFn):
    """Lists the pattern at most once per interval; complete after ``max_files`` files."""

    def __init__(self, poll_interval_s: float, max_files: int | None) -> None:
        self._poll_interval_s = poll_interval_s
        self._max_files = max_files
        self._last_poll: float | None = None

    def _wait_for_interval(self) -> None:
        if self._last_poll is not None:
            remaining = self._poll_interval_s - (time.monotonic() - self._last_poll)
            if remaining > 0:
                time.sleep(remaining)
        self._last_poll = time.monotonic()

    def __call__(self, file_pattern: str) -> PollResult[filesystem.FileMetadata]:
        self._wait_for_interval()
        now = Timestamp.now()
        files = sorted(FileSystems.match([file_pattern])[0].metadata_list, key=_drop_order)
        if self._max_files is not None and len(files) >= self._max_files:
            return PollResult.complete(files[: self._max_files], timestamp=now)
        return PollResult.incomplete(files, timestamp=now).with_watermark(now)


class WatchFileDrop(beam.PTransform):
    """A file pattern -> an unbounded ``FileMetadata`` PCollection, each new file once."""

    def __init__(self, file_pattern: str, *, poll_interval_s: float,
                 stop_after_s: float | None = None, max_files: int | None = None) -> None:
        super().__init__()
        if not file_pattern:
            raise PipelineError("the file-drop feed needs a file pattern (--input)")
        if not poll_interval_s > 0:
            raise PipelineError(f"--poll_interval_seconds must be positive, not "
                                f"{poll_interval_s}")
        if stop_after_s is not None and not stop_after_s > 0:
            raise PipelineError(f"--stop_after_seconds must be positive, not {stop_after_s}")
        if max_files is not None and max_files < 1:
            raise PipelineError(f"--max_files must be at least 1, not {max_files}")
        self._file_pattern = file_pattern
        self._poll_fn = _PollFileDrop(poll_interval_s, max_files)
        self._poll_interval_s = poll_interval_s
        self._termination = never() if stop_after_s is None else after_total_of(stop_after_s)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Pattern" >> beam.Create([self._file_pattern])
            | "Watch" >> Watch(self._poll_fn, poll_interval=self._poll_interval_s,
                               termination=self._termination, output_key_fn=_file_path)
            | "DropPattern" >> beam.ParDo(_RecordInputFile())
            .with_output_types(filesystem.FileMetadata)
        )


def emitted_files(result: beam.runners.runner.PipelineResult) -> tuple[set[str], int]:
    """(the paths of the files a finished job's file-drop feed emitted, as far as its
    ``input_file_names`` metric kept them; how many it emitted, ``input_files``)."""
    metrics = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    names: set[str] = set()
    for string_set in metrics.get("string_sets", []):
        if string_set.key.metric.name == INPUT_FILE_NAMES:
            value = string_set.committed if string_set.committed is not None \
                else string_set.attempted
            names.update(value or ())
    infos = getattr(result, "monitoring_infos", None)    # FnApiRunner: every bundle's set
    for info in infos() if callable(infos) else ():
        if monitoring_infos.is_string_set(info) and \
                info.labels.get(monitoring_infos.NAMESPACE_LABEL) == NAMESPACE and \
                info.labels.get(monitoring_infos.NAME_LABEL) == INPUT_FILE_NAMES:
            names.update(monitoring_infos.extract_string_set_value(info))
    emitted = 0
    for counter in metrics.get("counters", []):
        if counter.key.metric.name == INPUT_FILES:
            value = counter.committed if counter.committed is not None else counter.attempted
            emitted += int(value or 0)
    return names, emitted
