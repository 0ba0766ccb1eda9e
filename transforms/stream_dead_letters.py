"""Write a stream's dead letters per bundle and window, without a GroupByKey.

Usage::

    dead | WriteStreamDeadLetters("gs://features")        # paths of the files written

Same files as ``dead_letters.WriteDeadLetters`` (lines, files bounded by lines and bytes,
``dead-letter/dl-<window>-<content id>.jsonl`` names from a digest of what a file holds,
commit through a temporary name, the ``dead_letters`` and ``dead_letter_rows`` metrics), but
each bundle writes what it holds per window instead of grouping first. Why: in a stream, the
confidential step releases a window's last batch when the window closes
(``stream_batches.HoldForBatches``), so its dead letters are behind the watermark; when a
stream is drained the watermark jumps to the end of time and a GroupByKey would drop them as
expired, silently. Written per bundle, nothing waits for a
window, so nothing is dropped; a retried bundle holds the same dead letters and rewrites the
same name.

What it does not: it does not merge bundles, so a window can have several dead-letter files.
"""

from __future__ import annotations

from collections.abc import Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import BoundedWindow
from apache_beam.utils.windowed_value import WindowedValue

from enclave_workers.batch_processor import DeadLetter

from .dead_letters import (
    DEAD_LETTER_DIR,
    _file_chunks,
    _sort_key,
    dead_letter_file_name,
    dead_letters_content_id,
)
from .errors import TransformConfigError
from .metrics import DEAD_LETTER_ROWS, DEAD_LETTERS, NAMESPACE
from .write import commit_file

__all__ = ["WriteStreamDeadLetters"]


class _WritePerBundleFn(beam.DoFn):
    def __init__(self, output_root: str) -> None:
        self._output_root = output_root
        self._dead_letters = Metrics.counter(NAMESPACE, DEAD_LETTERS)
        self._dead_letter_rows = Metrics.counter(NAMESPACE, DEAD_LETTER_ROWS)
        self._held: dict[BoundedWindow, list[DeadLetter]] = {}

    def start_bundle(self) -> None:
        self._held = {}

    def process(self, dead_letter: DeadLetter,
                window: BoundedWindow = beam.DoFn.WindowParam) -> None:
        self._held.setdefault(window, []).append(dead_letter)

    def finish_bundle(self) -> Iterable[WindowedValue]:
        held, self._held = self._held, {}
        directory = FileSystems.join(self._output_root, DEAD_LETTER_DIR)
        for window, letters in held.items():
            for chunk in _file_chunks(sorted(letters, key=_sort_key)):
                name = dead_letter_file_name(window, dead_letters_content_id(d for d, _ in chunk))
                path = commit_file(directory, name, [line for _, line in chunk],
                                   "application/json")
                self._dead_letters.inc(sum(d.records for d, _ in chunk))
                self._dead_letter_rows.inc(sum(d.rows for d, _ in chunk))
                yield WindowedValue(path, window.max_timestamp(), [window])


class WriteStreamDeadLetters(beam.PTransform):
    """``DeadLetter`` elements -> JSONL files under ``<output_root>/dead-letter/`` (paths),
    written per bundle and window."""

    def __init__(self, output_root: str) -> None:
        super().__init__()
        if not output_root:
            raise TransformConfigError("WriteStreamDeadLetters needs an output_root")
        self._output_root = output_root

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "WritePerBundle" >> beam.ParDo(_WritePerBundleFn(self._output_root))
