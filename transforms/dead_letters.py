"""Write dead letters as JSON lines under ``<output_root>/dead-letter/``.

Usage::

    dead = (read_dead, parse_dead, process_dead, write_dead) | beam.Flatten()
    dead | WriteDeadLetters("gs://features")

Each line is ``{"record_id", "reason", "stage", "records", "rows", "sealed_b64"}``: sealed
bytes only (the input as it arrived, or a batch envelope's violating rows resealed under an
output key of its region; empty when the input was not an envelope at all), never plaintext
or keys.

Files are named by what they hold, so a retried bundle or a rerun of the job rewrites the same
names instead of adding files with the same dead letters: dead letters are keyed by a stable
hash of their record id into ``DEAD_LETTER_SHARDS`` groups, grouped (per window), sorted, cut
into files of at most ``MAX_LINES_PER_FILE`` lines and ``MAX_FILE_BYTES`` bytes (a longer line
is a file alone), and each file is named by a digest of its
sorted (record id, stage, reason) list: ``dead-letter/dl-<digest as uuid>.jsonl`` in the global
window, ``dead-letter/dl-<window start>-<window end>-<digest as uuid>.jsonl`` (UTC, e.g.
``19700101T000100.000Z``) in an interval window. Files are committed as outputs are
(``write.commit_file``: temporary name, rename, no orphan on failure). The ``dead_letters``
metric counts the input envelopes the dead letters stand for, ``dead_letter_rows`` the rows of
resealed parts. ``WRITTEN`` is the written paths.

What it does not: no retries or replays; a separate tool can re-submit the sealed bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import BoundedWindow

from enclave_workers.batch_processor import DeadLetter

from .errors import TransformConfigError
from .metrics import DEAD_LETTER_ROWS, DEAD_LETTERS, NAMESPACE
from .windows import window_label
from .write import commit_file

__all__ = ["DEAD_LETTER_DIR", "DEAD_LETTER_SHARDS", "MAX_FILE_BYTES", "MAX_LINES_PER_FILE",
           "WriteDeadLetters",
           "dead_letter_file_name", "dead_letter_to_json", "dead_letters_content_id"]

DEAD_LETTER_DIR = "dead-letter"
DEAD_LETTER_SHARDS = 16
MAX_LINES_PER_FILE = 10_000
MAX_FILE_BYTES = 256 << 20      # a line may carry a 64 MiB envelope (base64: 4/3 of it)
_CONTENT_DOMAIN = b"sealbeam.dead-letters.v1\x00"


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


def _sort_key(dead_letter: DeadLetter) -> tuple[str, str, str, int, int]:
    return (dead_letter.record_id, dead_letter.stage, dead_letter.reason, dead_letter.records,
            dead_letter.rows)


def dead_letters_content_id(dead_letters: Iterable[DeadLetter]) -> bytes:
    """16 bytes of SHA-256 over the sorted (record id, stage, reason, records, rows) list."""
    hasher = hashlib.sha256(_CONTENT_DOMAIN)
    for key in sorted(_sort_key(d) for d in dead_letters):
        hasher.update(json.dumps(key).encode("utf-8") + b"\n")
    return hasher.digest()[:16]


def dead_letter_file_name(window: BoundedWindow, content_id: bytes) -> str:
    """``dl-[<window start>-<window end>-]<content id as uuid>.jsonl``."""
    label = window_label(window)
    return f"dl-{label + '-' if label else ''}{uuid.UUID(bytes=content_id)}.jsonl"


def _shard(dead_letter: DeadLetter) -> int:
    digest = hashlib.sha256(dead_letter.record_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:4], "big") % DEAD_LETTER_SHARDS


class _WriteDeadLettersFn(beam.DoFn):
    def __init__(self, output_root: str) -> None:
        self._directory = FileSystems.join(output_root, DEAD_LETTER_DIR)
        self._dead_letters = Metrics.counter(NAMESPACE, DEAD_LETTERS)
        self._dead_letter_rows = Metrics.counter(NAMESPACE, DEAD_LETTER_ROWS)

    def process(self, group: tuple[int, Iterable[DeadLetter]],
                window: BoundedWindow = beam.DoFn.WindowParam) -> Iterable[str]:
        _, letters = group
        for chunk in _file_chunks(sorted(letters, key=_sort_key)):
            lines = [line for _, line in chunk]
            name = dead_letter_file_name(window, dead_letters_content_id(d for d, _ in chunk))
            yield commit_file(self._directory, name, lines, "application/json")
            self._dead_letters.inc(sum(d.records for d, _ in chunk))
            self._dead_letter_rows.inc(sum(d.rows for d, _ in chunk))


def _file_chunks(ordered: list[DeadLetter]) -> Iterable[list[tuple[DeadLetter, bytes]]]:
    """Consecutive runs of at most ``MAX_LINES_PER_FILE`` lines and ``MAX_FILE_BYTES``."""
    chunk: list[tuple[DeadLetter, bytes]] = []
    size = 0
    for dead_letter in ordered:
        line = dead_letter_to_json(dead_letter)
        if chunk and (len(chunk) >= MAX_LINES_PER_FILE or size + len(line) > MAX_FILE_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append((dead_letter, line))
        size += len(line)
    if chunk:
        yield chunk


class WriteDeadLetters(beam.PTransform):
    """``DeadLetter`` elements -> JSONL files under ``<output_root>/dead-letter/`` (paths)."""

    def __init__(self, output_root: str) -> None:
        super().__init__()
        if not output_root:
            raise TransformConfigError("WriteDeadLetters needs an output_root")
        self._output_root = output_root

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return (
            pcoll
            | "KeyByRecordId" >> beam.Map(lambda d: (_shard(d), d))
            | "GroupDeadLetters" >> beam.GroupByKey()
            | "WriteJsonLines" >> beam.ParDo(_WriteDeadLettersFn(self._output_root))
        )
