"""Open any sealed envelope for a caller who holds its key through the KMS (``sealbeam unseal``).

What it does: reads sealed files in either layout of docs/FORMAT.md section 8 (one base64
envelope per line, or one raw envelope such as a ``.sbatch``), standard input included; in a
first pass reads every header and unwraps each distinct data key once through the KMS that
serves its KEK (``pipelines.state_keys.kms_for_kek``: the local keyring, or the cloud/HSM
backend that broker.yaml configures), with ``aad = dek_wrap_aad(region, producer_id)``; records
the decision in the audit ledger (``unseal``, granted or denied); and only then, in a second
pass, opens the envelopes: a record's plaintext is one JSON object, a record stream's (profile
2) each of its records one, a batch's plaintext an Arrow IPC stream (section 7). Rows go out as
JSON lines, an Arrow IPC stream or Parquet.

What it does not: it never asks the key broker (no attestation; the caller *is* a key holder,
e.g. the partner who sealed, or a region's reader with KMS rights), never logs keys or rows,
and never writes a partial output file: a refusal comes before any row is written, and a
damaged envelope aborts the run with the file replaced only on success.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from enclave_workers.records import MAX_IPC_BYTES, RecordError, table_from_ipc
from envelope import (
    KIND_RECORD_STREAM,
    MAGIC,
    DataKey,
    EnvelopeAuthenticationError,
    EnvelopeError,
    EnvelopeHeader,
    WrappedKey,
    dek_wrap_aad,
    open_batch,
    open_record,
    open_record_stream,
    read_header,
)
from keybroker.config import ConfigError
from keybroker.kms.base import KeyManagementService, KmsError
from keybroker.ledger import AuditLedger

from .errors import InputFileError, PipelineError
from .progress import track
from .stdio import STDIO, input_path

__all__ = ["UNSEAL_EVENT", "UNSEAL_FORMATS", "UnsealAccessError", "UnsealError",
           "UnsealReport", "unseal_files"]

UNSEAL_EVENT = "unseal"
UNSEAL_FORMATS = ("jsonl", "arrow", "parquet")
MAX_LINE_BYTES = 64 << 20
MAX_RAW_ENVELOPE_BYTES = MAX_IPC_BYTES + (64 << 10) + (1 << 20)
_BASE64_MAGIC = base64.b64encode(MAGIC)[:5]      # b"U0JFV": every base64 line starts so


class UnsealError(PipelineError):
    """An input cannot be unsealed (not an envelope, failed authentication, bad payload)."""


class UnsealAccessError(UnsealError):
    """The caller's KMS refused to unwrap a data key: the caller does not hold the key."""


@dataclass
class UnsealReport:
    """Counts of one unseal run (no content)."""

    files: int = 0
    envelopes: int = 0
    records: int = 0
    batches: int = 0
    rows: int = 0
    data_keys: int = 0
    output: str = STDIO
    format: str = "jsonl"
    keks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"files": self.files, "envelopes": self.envelopes, "records": self.records,
                "batches": self.batches, "rows": self.rows, "data_keys": self.data_keys,
                "output": self.output, "format": self.format, "keks": self.keks}


@dataclass(frozen=True)
class _Located:
    """An envelope and where it came from (``file:line`` for record files)."""

    where: str
    envelope: bytes


# -- reading the file layouts ----------------------------------------------------------------

def iter_envelopes(path: Path, name: str) -> Iterator[_Located]:
    """The envelopes of one file, in either layout (FORMAT.md section 8)."""
    with path.open("rb") as source:
        start = source.read(len(_BASE64_MAGIC))
        source.seek(0)
        if start.startswith(MAGIC):
            yield _Located(name, _read_raw(source, name))
        elif start == _BASE64_MAGIC:
            yield from _iter_lines(source, name)
        elif start.strip() == b"":
            raise InputFileError(f"{name} is empty")
        else:
            raise InputFileError(f"{name} is not a sealed file (neither a raw envelope nor "
                                 "base64 envelope lines)")


def _read_raw(source: BinaryIO, name: str) -> bytes:
    envelope = source.read(MAX_RAW_ENVELOPE_BYTES + 1)
    if len(envelope) > MAX_RAW_ENVELOPE_BYTES:
        raise InputFileError(f"{name} is over {MAX_RAW_ENVELOPE_BYTES} bytes")
    return envelope


def _iter_lines(source: BinaryIO, name: str) -> Iterator[_Located]:
    for number, line in enumerate(iter(lambda: source.readline(MAX_LINE_BYTES + 1), b""),
                                  start=1):
        if len(line) > MAX_LINE_BYTES:
            raise InputFileError(f"{name}:{number}: line over {MAX_LINE_BYTES} bytes")
        body = line.strip()
        if not body:
            continue
        try:
            envelope = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise InputFileError(f"{name}:{number}: not a base64 envelope") from None
        yield _Located(f"{name}:{number}", envelope)


# -- keys ------------------------------------------------------------------------------------

class _KeyHolder:
    """One KMS unwrap per distinct wrapped DEK; refusals become ``UnsealAccessError``."""

    def __init__(self, kms_for: Callable[[str], KeyManagementService]) -> None:
        self._kms_for = kms_for
        self._backends: dict[str, KeyManagementService] = {}
        self._keys: dict[str, DataKey] = {}
        self.keks: set[str] = set()

    def __len__(self) -> int:
        return len(self._keys)

    def key_for(self, header: EnvelopeHeader, where: str) -> DataKey:
        wrapped: WrappedKey = header.wrapped_key
        cache_key = wrapped.key_id + "\0" + header.region + "\0" + header.producer_id
        found = self._keys.get(cache_key)
        if found is not None:
            return found
        kek = wrapped.kek
        try:
            backend = self._backends.get(kek.uri)
            if backend is None:
                backend = self._backends[kek.uri] = self._kms_for(kek.uri)
            secret = backend.unwrap(wrapped, dek_wrap_aad(header.region, header.producer_id))
        except (KmsError, ConfigError) as exc:
            raise UnsealAccessError(
                f"{where}: access refused: the KMS did not unwrap the data key under "
                f"{kek.uri} version {kek.version} ({type(exc).__name__})") from None
        self.keks.add(f"{kek.uri}#{kek.version}")
        data_key = self._keys[cache_key] = DataKey(secret)
        return data_key


# -- writing rows ----------------------------------------------------------------------------

class _RowWriter:
    """Rows out as JSON lines (streamed), or as one Arrow IPC stream / Parquet file."""

    def __init__(self, out: BinaryIO, row_format: str) -> None:
        self._out = out
        self._format = row_format
        self._tables: list[pa.Table] = []
        self.rows = 0

    def records(self, plaintexts: list[bytes]) -> None:
        if not plaintexts:
            return
        self.rows += len(plaintexts)
        if self._format == "jsonl":
            for plaintext in plaintexts:
                self._out.write(plaintext + b"\n")
            return
        joined = b"\n".join(plaintexts)
        try:
            table = pa_json.read_json(pa.py_buffer(joined))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise UnsealError(f"records do not form one table ({type(exc).__name__})") from None
        self._tables.append(table)

    def table(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        if self._format == "jsonl":
            from enclave_workers.records import table_to_json_records

            for record in table_to_json_records(table):
                self._out.write(record + b"\n")
            return
        self._tables.append(table)

    def finish(self) -> None:
        if self._format == "jsonl":
            return
        if not self._tables:
            raise UnsealError("nothing to write: no rows were unsealed")
        try:
            table = pa.concat_tables(self._tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            raise UnsealError("the envelopes' rows do not share one schema; unseal them "
                              "separately or use --format jsonl") from None
        if self._format == "parquet":
            pq.write_table(table, self._out)
            return
        with ipc.new_stream(self._out, table.schema) as writer:
            writer.write_table(table)


def _record_plaintext(plaintext: bytes, where: str) -> bytes:
    """A record's plaintext, checked to be one JSON object, as one line."""
    try:
        value = json.loads(plaintext)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UnsealError(f"{where}: the record's plaintext is not JSON") from None
    if not isinstance(value, dict):
        raise UnsealError(f"{where}: the record's plaintext is not a JSON object")
    if b"\n" in plaintext or b"\r" in plaintext:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return plaintext


# -- the run ---------------------------------------------------------------------------------

def unseal_files(inputs: Iterable[str], output: str, *, row_format: str,
                 kms_for: Callable[[str], KeyManagementService],
                 ledger_path: Path) -> UnsealReport:
    """Unseal ``inputs`` (paths, or ``-`` for stdin) into ``output`` (a path, or ``-``)."""
    if row_format not in UNSEAL_FORMATS:
        raise UnsealError(f"format must be one of {', '.join(UNSEAL_FORMATS)}")
    names = list(inputs)
    if not names:
        raise InputFileError("no input given")
    if names.count(STDIO) > 1:
        raise InputFileError("standard input ('-') can be given once")
    if output == STDIO and row_format != "jsonl" and sys.stdout.isatty():
        raise UnsealError(f"refusing to write {row_format} to a terminal; pass --output")
    report = UnsealReport(output=output, format=row_format)
    with _materialized(names) as files:
        for _, path in files:
            if not path.is_file():
                raise InputFileError(f"{path} does not exist or is not a file")
        keys = _KeyHolder(kms_for)
        with AuditLedger(ledger_path) as ledger:
            try:
                _unwrap_all(files, keys, report)
            except UnsealAccessError as exc:
                ledger.append(UNSEAL_EVENT, "denied", {
                    "files": len(files), "reason": str(exc)[:512],
                    "keks": sorted(keys.keks)})
                raise
            report.data_keys = len(keys)
            report.keks = sorted(keys.keks)
            ledger.append(UNSEAL_EVENT, "granted", {
                "files": len(files), "envelopes": report.envelopes,
                "data_keys": report.data_keys, "keks": report.keks,
                "output_format": row_format})
        with _destination(output) as out:
            writer = _RowWriter(out, row_format)
            _open_all(files, keys, writer, report)
            writer.finish()
        report.rows = writer.rows
    return report


@contextmanager
def _materialized(names: list[str]) -> Iterator[list[tuple[str, Path]]]:
    if STDIO not in names:
        yield [(name, Path(name)) for name in names]
        return
    with input_path(STDIO) as spooled:
        yield [(("<stdin>" if name == STDIO else name),
                (spooled if name == STDIO else Path(name))) for name in names]


def _unwrap_all(files: list[tuple[str, Path]], keys: _KeyHolder, report: UnsealReport) -> None:
    """Pass 1: every header parsed, every distinct DEK unwrapped, before a row is written."""
    report.files = len(files)
    with track("unseal: keys", unit="envelopes") as progress:
        for name, path in files:
            for located in iter_envelopes(path, name):
                keys.key_for(_header(located), located.where)
                report.envelopes += 1
                progress.update()


def _open_all(files: list[tuple[str, Path]], keys: _KeyHolder, writer: _RowWriter,
              report: UnsealReport) -> None:
    """Pass 2: open each envelope and hand its rows to the writer, in input order."""
    with track("unseal", total=report.envelopes, unit="envelopes") as progress:
        for name, path in files:
            pending: list[bytes] = []
            for located in iter_envelopes(path, name):
                header = _header(located)
                data_key = keys.key_for(header, located.where)
                try:
                    if header.kind == "record":
                        pending.append(_record_plaintext(
                            open_record(located.envelope, data_key), located.where))
                        report.records += 1
                    elif header.kind == KIND_RECORD_STREAM:
                        pending.extend(_stream_plaintexts(located, data_key))
                        report.records += header.record_count or 0
                    else:
                        writer.records(pending)
                        pending = []
                        payload = open_batch(located.envelope, data_key)
                        writer.table(table_from_ipc(payload))
                        report.batches += 1
                except EnvelopeAuthenticationError:
                    raise UnsealError(f"{located.where}: envelope authentication failed"
                                      ) from None
                except (EnvelopeError, RecordError) as exc:
                    raise UnsealError(f"{located.where}: {exc}") from None
                progress.update()
                if len(pending) >= 4096:
                    writer.records(pending)
                    pending = []
            writer.records(pending)


def _stream_plaintexts(located: _Located, data_key: DataKey) -> list[bytes]:
    """Every record of a record stream (profile 2), in order; a record that fails
    authentication fails the unseal, as a failed v1 record does."""
    opened = open_record_stream(located.envelope, data_key)
    if opened.failures:
        failure = opened.failures[0]
        raise UnsealError(f"{located.where}: record {failure.index} of the stream failed "
                          f"authentication")
    return [_record_plaintext(record.plaintext, f"{located.where} record {record.index}")
            for record in opened.records]


def _header(located: _Located) -> EnvelopeHeader:
    try:
        header, _ = read_header(located.envelope)
    except EnvelopeError as exc:
        raise InputFileError(f"{located.where}: not a sealed envelope: {exc}") from None
    return header


@contextmanager
def _destination(output: str) -> Iterator[BinaryIO]:
    """stdout, or a sibling temporary file renamed over ``output`` only on success."""
    if output == STDIO:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.unseal-tmp")
    try:
        with temporary.open("wb") as out:
            yield out
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
