"""Write dead letters as JSON lines under ``<output_root>/dead-letter/``.

Usage::

    dead = (read_dead, parse_dead, process_dead, write_dead) | beam.Flatten()
    dead | WriteDeadLetters("gs://features")

Each line is ``{"record_id", "reason", "stage", "records", "rows", "sealed_b64"}``: sealed
bytes only (the input as it arrived, or a batch envelope's violating rows resealed under an
output key of its region; empty when the input was not an envelope at all), never plaintext
or keys. Each bundle writes one file per window it holds (temporary name, then renamed), which
works for bounded and unbounded input alike: ``dead-letter/dl-<uuid>.jsonl`` in the global
window, ``dead-letter/dl-<window start>-<window end>-<uuid>.jsonl`` (UTC, e.g.
``19700101T000100.000Z``) in a fixed window, so a streaming run's dead letters land per
window. The ``dead_letters`` metric counts the input envelopes the dead letters stand for,
``dead_letter_rows`` the rows of resealed parts.

What it does not: no retries or replays; a separate tool can re-submit the sealed bytes.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import BoundedWindow, IntervalWindow
from apache_beam.utils.timestamp import Timestamp

from enclave_workers.batch_processor import DeadLetter

from .errors import TransformConfigError
from .metrics import DEAD_LETTER_ROWS, DEAD_LETTERS, NAMESPACE

__all__ = ["DEAD_LETTER_DIR", "WriteDeadLetters", "dead_letter_file_name", "dead_letter_to_json"]

DEAD_LETTER_DIR = "dead-letter"


def dead_letter_to_json(dead_letter: DeadLetter) -> bytes:
    """One JSON line for a dead letter (sealed bytes base64, nothing else of the data)."""
    return json.dumps({
        "record_id": dead_letter.record_id,
        "reason": dead_letter.reason,
        "stage": dead_letter.stage,
        "records": dead_letter.records,
        "rows": dead_letter.rows,
        "sealed_b64": base64.b64encode(dead_letter.sealed).decode("ascii"),
    }, sort_keys=True).encode("utf-8") + b"\n"


def _utc_label(timestamp: Timestamp) -> str:
    moment = timestamp.to_utc_datetime()
    return moment.strftime("%Y%m%dT%H%M%S.") + f"{moment.microsecond // 1000:03d}Z"


def dead_letter_file_name(window: BoundedWindow) -> str:
    """``dl-<uuid>.jsonl``, with the window's UTC bounds before the uuid for an interval
    window, so a streaming run's dead letters can be found per window."""
    if isinstance(window, IntervalWindow):
        return (f"dl-{_utc_label(window.start)}-{_utc_label(window.end)}-"
                f"{uuid.uuid4()}.jsonl")
    return f"dl-{uuid.uuid4()}.jsonl"


class _OpenFile:
    """One dead-letter file being written: its writer under the temporary name."""

    def __init__(self, output_root: str, window: BoundedWindow) -> None:
        name = dead_letter_file_name(window)
        self.final_path = FileSystems.join(output_root, DEAD_LETTER_DIR, name)
        self.temp_path = FileSystems.join(output_root, DEAD_LETTER_DIR, f".{name}.tmp")
        self.writer: Any = FileSystems.create(self.temp_path, mime_type="application/json",
                                              compression_type="uncompressed")

    def commit(self) -> None:
        self.writer.close()
        FileSystems.rename([self.temp_path], [self.final_path])


class _WriteDeadLettersFn(beam.DoFn):
    def __init__(self, output_root: str) -> None:
        self._output_root = output_root
        self._dead_letters = Metrics.counter(NAMESPACE, DEAD_LETTERS)
        self._dead_letter_rows = Metrics.counter(NAMESPACE, DEAD_LETTER_ROWS)
        self._files: dict[BoundedWindow, _OpenFile] = {}

    def start_bundle(self) -> None:
        self._files = {}

    def process(self, dead_letter: DeadLetter,
                window: BoundedWindow = beam.DoFn.WindowParam) -> None:
        open_file = self._files.get(window)
        if open_file is None:
            open_file = self._files[window] = _OpenFile(self._output_root, window)
        open_file.writer.write(dead_letter_to_json(dead_letter))
        self._dead_letters.inc(dead_letter.records)
        self._dead_letter_rows.inc(dead_letter.rows)

    def finish_bundle(self) -> None:
        files, self._files = self._files, {}
        for open_file in files.values():
            open_file.commit()


class WriteDeadLetters(beam.PTransform):
    """``DeadLetter`` elements -> JSONL files under ``<output_root>/dead-letter/``."""

    def __init__(self, output_root: str) -> None:
        super().__init__()
        if not output_root:
            raise TransformConfigError("WriteDeadLetters needs an output_root")
        self._output_root = output_root

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "WriteJsonLines" >> beam.ParDo(_WriteDeadLettersFn(self._output_root))
