"""Write late records, still sealed, under ``<output_root>/late/``.

Usage::

    timed = envelopes | StampEventTime(window_s=60, allowed_lateness_s=120)
    timed[StampEventTime.LATE] | WriteLateRecords("gs://features")

Each line is ``{"record_id", "event_time", "arrival", "sealed_b64"}``: the envelope exactly
as it arrived (base64) with the event time its header states and the time it arrived (UTC,
the form of ``event_time.format_event_time``), never plaintext or keys. A late record is
never written into its window's output, which has closed; these files are where an operator
finds and, if wanted, replays it (``sealbeam feed`` publishes such lines again).

A bundle writes one file, named by a digest of the sorted record ids it holds
(``late/late-<32 hex>.jsonl``), under a temporary name and then renamed: a retried bundle
with the same records rewrites the same name instead of adding a copy. The ``late`` metric
is counted where records are found late (``StampEventTime``), so it reconciles with
``records_in = records_out + dead_letters + duplicates + late``.

What it does not: no retention policy; replay is ``sealbeam feed`` (to Pub/Sub) of these
files.
"""

from __future__ import annotations

import base64
import hashlib
import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils.timestamp import Timestamp

from .errors import TransformConfigError
from .event_time import LateRecord, format_event_time
from .write import commit_file

__all__ = ["LATE_DIR", "WriteLateRecords", "late_file_name", "late_record_to_json"]

LATE_DIR = "late"


def late_record_to_json(record: LateRecord) -> bytes:
    """One JSON line for a late record (sealed bytes base64, the times, nothing else)."""
    arrival = Timestamp(micros=record.arrival_micros)
    return json.dumps({
        "record_id": record.record_id,
        "event_time": record.event_time,
        "arrival": format_event_time(float(arrival)),
        "sealed_b64": base64.b64encode(record.sealed).decode("ascii"),
    }, sort_keys=True).encode("utf-8") + b"\n"


def late_file_name(record_ids: list[str]) -> str:
    """``late-<first 32 hex of SHA-256 over the sorted ids>.jsonl``."""
    digest = hashlib.sha256("\n".join(sorted(record_ids)).encode("utf-8")).hexdigest()
    return f"late-{digest[:32]}.jsonl"


class _WriteLateFn(beam.DoFn):
    def __init__(self, output_root: str) -> None:
        self._output_root = output_root
        self._records: list[LateRecord] = []

    def start_bundle(self) -> None:
        self._records = []

    def process(self, record: LateRecord) -> None:
        self._records.append(record)

    def finish_bundle(self) -> None:
        records, self._records = sorted(self._records, key=lambda r: r.record_id), []
        if not records:
            return
        name = late_file_name([r.record_id for r in records])
        commit_file(FileSystems.join(self._output_root, LATE_DIR), name,
                    [late_record_to_json(record) for record in records], "application/json")


class WriteLateRecords(beam.PTransform):
    """``LateRecord`` elements -> JSONL files under ``<output_root>/late/``."""

    def __init__(self, output_root: str) -> None:
        super().__init__()
        if not output_root:
            raise TransformConfigError("WriteLateRecords needs an output_root")
        self._output_root = output_root

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "WriteJsonLines" >> beam.ParDo(_WriteLateFn(self._output_root))
