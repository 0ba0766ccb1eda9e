"""What a partner runs before sending data: seal JSONL or Parquet into envelopes.

What it does: reads a partner file (JSONL, one JSON object per line, or Parquet), and writes
either sealed records or one sealed batch (an Arrow IPC stream of the rows, also written as
one base64 line, so that ``sealbeam run batch`` reads both the same way). Sealed records come
in two profiles (docs/FORMAT.md): profile 2 (the default), one base64 ``record-stream``
envelope per line holding up to ``records_per_stream`` records (default
``DEFAULT_RECORDS_PER_STREAM``) under one DEK, with one key derivation and commitment per
stream and a nonce and tag per record, so the per-record overhead is a frame instead of a
whole header; and profile 1, one base64 v1 record envelope per line (a whole header a
record). Each file (or
each N records) gets a fresh DEK, wrapped under the region's KEK from the local keyring with
``aad = dek_wrap_aad(region, producer_id)``. Outputs are written to a temporary name and
renamed, so a partial file never looks finished.

What it does not: it does not send anything anywhere, and it keeps no DEK after sealing.
With a cloud KMS the partner would wrap through that KMS instead of the local keyring; the
envelope format is the same.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from enclave_workers.records import (
    INPUT_SCHEMA_FINGERPRINT,
    MAX_RECORD_BYTES,
    RecordError,
    conform_to_input_schema,
    parse_records,
    table_to_ipc,
    table_to_json_records,
)
from envelope import (
    DataKey,
    WrappedKey,
    dek_wrap_aad,
    seal_batch,
    seal_record,
    seal_record_stream,
)
from envelope.limits import MAX_STREAM_RECORDS
from keybroker.kms.base import KmsError
from keybroker.kms.local import LocalKeyring
from transforms.event_time import EVENT_TIME_CONTEXT_KEY, format_event_time
from transforms.read import iter_bounded_lines

from .errors import InputFileError, PipelineError

INPUT_FORMATS = ("jsonl", "parquet")
OUTPUT_KINDS = ("records", "batch")
RECORD_PROFILES = (1, 2)
DEFAULT_RECORD_PROFILE = 2         # what ``sealbeam seal`` writes unless --profile says 1
# 1000 records a stream: the stream's ~300-byte header is then 0.3 B a record beside the
# 44-byte frame (docs/FORMAT.md 13), and a stream is at most a few hundred kB of JSON
# records, what one confidential batch takes whole (a streaming run splits a stream whose
# records fall into several windows, so a long stream costs no latency there).
DEFAULT_RECORDS_PER_STREAM = 1000
MAX_INPUT_BYTES = 4 << 30
PARTNER_RECORDS_KIND = "partner-records"
MAX_RECORDS_PER_STREAM = MAX_STREAM_RECORDS


@dataclass(frozen=True)
class SealReport:
    """What a seal run produced (counts only; no content)."""

    input_records: int
    envelopes: int
    data_keys: int
    output_path: str
    kind: str
    profile: int = 1


def detect_input_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise InputFileError(f"cannot tell the format of {path.name}; pass --input-format "
                         f"({' or '.join(INPUT_FORMATS)})")


def _check_input_file(path: Path) -> None:
    if not path.is_file():
        raise InputFileError(f"input file {path} does not exist")
    size = path.stat().st_size
    if size > MAX_INPUT_BYTES:
        raise InputFileError(f"input file {path} is {size} bytes, over {MAX_INPUT_BYTES}")


def iter_jsonl_records(path: Path) -> Iterator[bytes]:
    """Each non-blank line of a JSONL file, checked to be one JSON object within bounds."""
    with path.open("rb") as stream:
        for line_no, line, length in iter_bounded_lines(stream, MAX_RECORD_BYTES):
            if line is None:
                raise InputFileError(f"{path.name}:{line_no}: line is {length} bytes, over "
                                     f"{MAX_RECORD_BYTES}")
            line = line.strip()
            if not line:
                continue
            try:
                value = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise InputFileError(f"{path.name}:{line_no}: not valid JSON") from None
            if not isinstance(value, dict):
                raise InputFileError(f"{path.name}:{line_no}: not a JSON object")
            yield line


def load_partner_table(path: Path, input_format: str) -> pa.Table:
    """The partner file as a table of ``records.INPUT_SCHEMA`` (for sealed batches)."""
    if input_format == "parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputFileError(f"{path.name}: not a readable Parquet file "
                                 f"({type(exc).__name__})") from None
        try:
            return conform_to_input_schema(table)
        except RecordError as exc:
            raise InputFileError(f"{path.name}: {exc}") from None
    records = list(iter_jsonl_records(path))
    parsed = parse_records(records)
    if parsed.failures:
        index, (_, reason) = min(parsed.failures.items())
        raise InputFileError(f"{path.name}: record {index + 1}: {reason}")
    return parsed.table


def iter_partner_records(path: Path, input_format: str) -> Iterator[bytes]:
    """The partner file as JSON record bytes (for sealed records)."""
    if input_format == "jsonl":
        yield from iter_jsonl_records(path)
        return
    yield from table_to_json_records(load_partner_table(path, "parquet"))


class _KeyIssuer:
    """Fresh DEKs wrapped under the region KEK, one per ``records_per_key`` records."""

    def __init__(self, keyring: LocalKeyring, region: str, producer_id: str,
                 records_per_key: int) -> None:
        try:
            self._kek_uri = keyring.kek_for_region(region)
        except KmsError as exc:
            raise PipelineError(str(exc)) from None
        self._keyring = keyring
        self._aad = dek_wrap_aad(region, producer_id)
        self._records_per_key = records_per_key
        self._current: tuple[DataKey, WrappedKey] | None = None
        self._uses = 0
        self.issued = 0

    def next_key(self) -> tuple[DataKey, WrappedKey]:
        if self._current is None or (self._records_per_key and
                                     self._uses >= self._records_per_key):
            data_key = DataKey.generate()
            try:
                wrapped = self._keyring.wrap(self._kek_uri, data_key.secret_bytes(), self._aad)
            except KmsError as exc:
                raise PipelineError(f"cannot wrap a data key: {exc}") from None
            self._current = (data_key, wrapped)
            self._uses = 0
            self.issued += 1
        self._uses += 1
        return self._current


def _write_atomically(output_path: Path, chunks: Iterator[bytes]) -> None:
    output_path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = output_path.with_name(f".{output_path.name}.tmp")
    try:
        with temp_path.open("wb") as out:
            for chunk in chunks:
                out.write(chunk)
        os.replace(temp_path, output_path)
    finally:
        temp_path.unlink(missing_ok=True)


def seal_file(input_path: Path, output_path: Path, *, keyring: LocalKeyring, region: str,
              producer_id: str, output_kind: str = "records", records_per_key: int = 0,
              input_format: str | None = None, event_time: float | None = None,
              on_sealed: Callable[[int], None] | None = None,
              profile: int = DEFAULT_RECORD_PROFILE,
              records_per_stream: int = DEFAULT_RECORDS_PER_STREAM) -> SealReport:
    """Seal a partner file; ``records_per_key=0`` means one DEK for the whole file.

    ``profile`` (sealed records only): 2 (the default) writes a ``record-stream`` envelope
    per ``records_per_stream`` records, 1 a v1 record envelope per record (a stream never spans two
    DEKs, so ``records_per_key`` also ends a stream); ``SealReport.envelopes`` counts the
    envelopes (lines) written, ``input_records`` the records.

    Every envelope states ``event_time`` (seconds since the epoch; default: now) in its
    authenticated header (context ``sealbeam.event_time``, docs/FORMAT.md 2.1), which the
    streaming pipeline windows by. ``on_sealed(n)`` is told of every ``n`` records sealed
    (the CLI's progress)."""
    input_path, output_path = Path(input_path), Path(output_path)
    if output_kind not in OUTPUT_KINDS:
        raise PipelineError(f"output kind must be one of {', '.join(OUTPUT_KINDS)}")
    if records_per_key < 0:
        raise PipelineError("records per key must be 0 (one key per file) or more")
    if profile not in RECORD_PROFILES:
        raise PipelineError(f"record profile must be one of "
                            f"{', '.join(map(str, RECORD_PROFILES))}, not {profile}")
    if not 1 <= records_per_stream <= MAX_RECORDS_PER_STREAM:
        raise PipelineError(f"records per stream must be between 1 and "
                            f"{MAX_RECORDS_PER_STREAM}")
    _check_input_file(input_path)
    input_format = input_format or detect_input_format(input_path)
    if input_format not in INPUT_FORMATS:
        raise PipelineError(f"input format must be one of {', '.join(INPUT_FORMATS)}")
    issuer = _KeyIssuer(keyring, region, producer_id, records_per_key)
    counts = {"records": 0}
    stated_time = format_event_time(time.time() if event_time is None else event_time)

    if output_kind == "batch":
        table = load_partner_table(input_path, input_format)
        data_key, wrapped = issuer.next_key()
        envelope = seal_batch(
            table_to_ipc(table), data_key=data_key, wrapped_key=wrapped, region=region,
            producer_id=producer_id, schema_fingerprint=INPUT_SCHEMA_FINGERPRINT,
            context={"sealbeam.kind": PARTNER_RECORDS_KIND, "sealbeam.rows": str(table.num_rows),
                     EVENT_TIME_CONTEXT_KEY: stated_time},
        )
        _write_atomically(output_path, iter([base64.b64encode(envelope) + b"\n"]))
        if on_sealed is not None:
            on_sealed(table.num_rows)
        return SealReport(table.num_rows, 1, issuer.issued, str(output_path), output_kind)

    context = {"sealbeam.kind": PARTNER_RECORDS_KIND, EVENT_TIME_CONTEXT_KEY: stated_time}
    if profile == 2:
        envelopes = _write_streams(input_path, output_path, input_format, issuer, region,
                                   producer_id, context, records_per_stream, counts, on_sealed)
        return SealReport(counts["records"], envelopes, issuer.issued, str(output_path),
                          output_kind, profile)

    def sealed_lines() -> Iterator[bytes]:
        for record in iter_partner_records(input_path, input_format):
            data_key, wrapped = issuer.next_key()
            envelope = seal_record(
                record, data_key=data_key, wrapped_key=wrapped, region=region,
                producer_id=producer_id, schema_fingerprint=INPUT_SCHEMA_FINGERPRINT,
                context={"sealbeam.kind": PARTNER_RECORDS_KIND,
                         EVENT_TIME_CONTEXT_KEY: stated_time},
            )
            counts["records"] += 1
            if on_sealed is not None:
                on_sealed(1)
            yield base64.b64encode(envelope) + b"\n"

    _write_atomically(output_path, sealed_lines())
    return SealReport(counts["records"], counts["records"], issuer.issued, str(output_path),
                      output_kind)


def _write_streams(input_path: Path, output_path: Path, input_format: str, issuer: _KeyIssuer,
                   region: str, producer_id: str, context: dict[str, str],
                   records_per_stream: int, counts: dict[str, int],
                   on_sealed: Callable[[int], None] | None) -> int:
    """Profile 2: one base64 ``record-stream`` line per ``records_per_stream`` records (or
    fewer where the DEK changes); returns the envelopes written."""
    streams = {"written": 0}

    def seal(records: list[bytes], key: tuple[DataKey, WrappedKey]) -> bytes:
        data_key, wrapped = key
        envelope = seal_record_stream(
            records, data_key=data_key, wrapped_key=wrapped, region=region,
            producer_id=producer_id, schema_fingerprint=INPUT_SCHEMA_FINGERPRINT,
            context=context)
        streams["written"] += 1
        counts["records"] += len(records)
        if on_sealed is not None:
            on_sealed(len(records))
        return base64.b64encode(envelope) + b"\n"

    def sealed_lines() -> Iterator[bytes]:
        pending: list[bytes] = []
        current: tuple[DataKey, WrappedKey] | None = None
        for record in iter_partner_records(input_path, input_format):
            key = issuer.next_key()
            if current is not None and (key is not current
                                        or len(pending) >= records_per_stream):
                yield seal(pending, current)
                pending = []
            current = key
            pending.append(record)
        if pending and current is not None:
            yield seal(pending, current)

    _write_atomically(output_path, sealed_lines())
    return streams["written"]
