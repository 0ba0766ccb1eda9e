"""Plaintext partner records <-> Arrow tables, with the limits every parser here needs.

What it does: fixes the partner record schema that partners seal (``INPUT_SCHEMA``); turns the
plaintext JSON of many opened record envelopes into one ``pa.Table`` with a single
``pyarrow.json.read_json`` over the joined NDJSON (isolating a bad record when that fails),
reading the columns a feature spec declares (``json_read_schema``: numbers and booleans as
JSON gives them, dates and timestamps as text that the spec's conformance parses strictly);
flags rows that break the limits every spec shares (``row_limit_problems``: an overlong
string, a ``region`` unlike the envelope's); and converts tables to and from Arrow IPC bytes.

What it does not: no decryption, no keys, no I/O beyond in-memory buffers, no featurization
(``features`` does that). It never logs or prints record contents; error messages name the
field or limit that failed, never a value.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.json as pa_json

MAX_RECORD_BYTES = 1 << 20          # one plaintext record (a JSON object)
MAX_IPC_BYTES = 256 << 20           # one Arrow IPC stream (a batch envelope's plaintext)
MAX_TABLE_ROWS = 5_000_000          # rows in one IPC stream
MAX_FIELD_CHARS = 4096              # any string field of a record

INPUT_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string()),
        pa.field("name", pa.string()),
        pa.field("email", pa.string()),
        pa.field("amount", pa.float64()),
        pa.field("event_time", pa.timestamp("us", tz="UTC")),
        pa.field("region", pa.string()),
    ]
)
REGION_COLUMN = "region"               # checked against the envelope's region when present


class RecordError(Exception):
    """Base of every error raised while turning plaintext records into tables."""


class RecordFormatError(RecordError):
    """The plaintext is not a JSON object / Arrow stream of the partner schema."""


class RecordLimitError(RecordFormatError):
    """A plaintext, a stream or a field is over its bound."""


def schema_fingerprint(schema: pa.Schema) -> bytes:
    """SHA-256 of the schema's serialized Arrow bytes: what envelopes bind as the schema."""
    return hashlib.sha256(schema.serialize().to_pybytes()).digest()


INPUT_SCHEMA_FINGERPRINT = schema_fingerprint(INPUT_SCHEMA)


@dataclass(frozen=True)
class ParsedRecords:
    """The rows that parsed (in input order) and, by input index, the ones that did not."""

    table: pa.Table
    row_sources: tuple[int, ...]           # input index of each table row
    failures: dict[int, tuple[str, str]]   # input index -> (stage, reason)


def json_read_schema(columns: Iterable[tuple[str, pa.DataType]]) -> pa.Schema:
    """The schema records are read with, for declared (name, type) columns.

    Integers read as int64 and floats as float64 (the spec narrows them and checks ranges);
    dates and timestamps read as strings, so that a bad one becomes a row violation naming
    the column instead of failing the whole read.
    """
    fields = []
    for name, arrow_type in columns:
        if pa.types.is_integer(arrow_type):
            read_type = pa.int64()
        elif pa.types.is_floating(arrow_type):
            read_type = pa.float64()
        elif pa.types.is_boolean(arrow_type):
            read_type = pa.bool_()
        else:
            read_type = pa.string()
        fields.append(pa.field(name, read_type))
    return pa.schema(fields)


def _parse_options(schema: pa.Schema) -> pa_json.ParseOptions:
    return pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")


def _read_ndjson(payload: bytes, schema: pa.Schema) -> pa.Table:
    table = pa_json.read_json(
        io.BytesIO(payload),
        read_options=pa_json.ReadOptions(use_threads=False, block_size=max(1 << 20, len(payload))),
        parse_options=_parse_options(schema),
    )
    return table.select(schema.names)


def _precheck(plaintext: bytes) -> str | None:
    """Cheap structural checks before handing bytes to the JSON reader; None when fine."""
    if len(plaintext) > MAX_RECORD_BYTES:
        return f"record is {len(plaintext)} bytes, over the {MAX_RECORD_BYTES}-byte limit"
    try:
        plaintext.decode("utf-8")
    except UnicodeDecodeError:
        return "record is not valid UTF-8"
    stripped = plaintext.strip()
    if not stripped.startswith(b"{") or not stripped.endswith(b"}"):
        return "record is not a JSON object"
    return None


def _parse_one(plaintext: bytes, schema: pa.Schema) -> pa.Table:
    """Parse a single record strictly (also multi-line JSON), as one row."""
    try:
        value = json.loads(plaintext)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordFormatError(f"record is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise RecordFormatError("record is not a JSON object")
    compact = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    try:
        table = _read_ndjson(compact, schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise RecordFormatError(
            f"record does not match the partner schema: {_arrow_reason(exc)}") from None
    if table.num_rows != 1:
        raise RecordFormatError(f"record produced {table.num_rows} rows, expected 1")
    return table


_COLUMN_IN_MESSAGE = re.compile(r"Column\((/[A-Za-z0-9_./-]{0,64})\)")
_TYPE_IN_MESSAGE = re.compile(r"Failed to convert JSON to ([a-z0-9\[\], =_]{1,48})")


def _arrow_reason(exc: Exception) -> str:
    """A reason naming the column or type Arrow complained about, never the value.

    Arrow's own messages can quote the offending value (plaintext), so they are not passed on.
    """
    text = str(exc)
    column = _COLUMN_IN_MESSAGE.search(text)
    if column:
        return f"column {column.group(1).lstrip('/')!r} has the wrong JSON type"
    target = _TYPE_IN_MESSAGE.search(text)
    if target:
        return f"a value does not convert to {target.group(1).rstrip(',')}"
    return f"JSON does not fit the partner schema ({type(exc).__name__})"


def parse_records(plaintexts: Sequence[bytes], schema: pa.Schema = INPUT_SCHEMA
                  ) -> ParsedRecords:
    """Parse many plaintext records with one read_json; isolate bad ones only on failure.

    Records containing a line break are parsed one by one, so one record can never become
    two rows of the joined NDJSON. Fields outside ``schema`` are ignored; a field of
    ``schema`` that a record lacks is null.
    """
    failures: dict[int, tuple[str, str]] = {}
    joinable: list[int] = []
    singles: list[int] = []
    for index, plaintext in enumerate(plaintexts):
        problem = _precheck(plaintext)
        if problem is not None:
            failures[index] = ("decode", problem)
        elif b"\n" in plaintext or b"\r" in plaintext:
            singles.append(index)
        else:
            joinable.append(index)

    parts: list[tuple[list[int], pa.Table]] = []
    if joinable:
        payload = b"\n".join(plaintexts[i] for i in joinable)
        try:
            table = _read_ndjson(payload, schema)
            if table.num_rows != len(joinable):
                raise RecordFormatError("joined NDJSON row count differs from record count")
            parts.append((joinable, table))
        except (pa.ArrowInvalid, pa.ArrowTypeError, RecordFormatError):
            singles.extend(joinable)
    for index in sorted(singles):
        try:
            parts.append(([index], _parse_one(plaintexts[index], schema)))
        except RecordFormatError as exc:
            failures[index] = ("decode", str(exc))

    if not parts:
        return ParsedRecords(schema.empty_table(), (), failures)
    order = [i for indices, _ in parts for i in indices]
    table = pa.concat_tables([t for _, t in parts])
    if order != sorted(order):
        permutation = sorted(range(len(order)), key=order.__getitem__)
        table = table.take(pa.array(permutation, type=pa.int64()))
        order = sorted(order)
    return ParsedRecords(table, tuple(order), failures)


def row_limit_problems(table: pa.Table, expected_region: str
                       ) -> list[tuple[str, str] | None]:
    """Per row, the first (column, reason) that breaks a limit every spec shares, or None.

    The limits: no string field over ``MAX_FIELD_CHARS`` characters, and a ``region`` field
    (when the table has one) equal to the region the envelope was sealed for.
    """
    problems: list[tuple[str, str] | None] = [None] * table.num_rows
    for field in table.schema:
        if not pa.types.is_string(field.type):
            continue
        lengths = pc.utf8_length(table.column(field.name)).to_pylist()
        for row, length in enumerate(lengths):
            if length is not None and length > MAX_FIELD_CHARS and problems[row] is None:
                problems[row] = (field.name, f"over {MAX_FIELD_CHARS} characters")
    if REGION_COLUMN in table.column_names:
        regions = table.column(REGION_COLUMN).to_pylist()
        for row, region in enumerate(regions):
            if region is not None and region != expected_region and problems[row] is None:
                problems[row] = (REGION_COLUMN, "differs from the envelope's region")
    return problems


def select_columns(table: pa.Table, names: Sequence[str]) -> pa.Table:
    """The ``names`` columns of ``table`` (e.g. an opened sealed batch), in that order."""
    missing = [name for name in names if name not in table.column_names]
    if missing:
        raise RecordFormatError(f"table lacks declared column(s): {', '.join(missing)}")
    if len(set(table.column_names)) != len(table.column_names):
        raise RecordFormatError("table has duplicate column names")
    return table.select(list(names))


def conform_to_input_schema(table: pa.Table) -> pa.Table:
    """Select and cast a table (e.g. from a sealed batch) to ``INPUT_SCHEMA``."""
    missing = [f.name for f in INPUT_SCHEMA if f.name not in table.column_names]
    if missing:
        raise RecordFormatError(f"table lacks partner schema column(s): {', '.join(missing)}")
    try:
        return table.select(INPUT_SCHEMA.names).cast(INPUT_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise RecordFormatError(f"table columns do not cast to the partner schema: "
                                f"{_arrow_reason(exc)}") from None


def table_to_ipc(table: pa.Table) -> bytes:
    """Serialize a table as an Arrow IPC stream (what a batch envelope carries)."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def table_from_ipc(payload: bytes | pa.Buffer, *, max_rows: int = MAX_TABLE_ROWS) -> pa.Table:
    """Read an Arrow IPC stream, bounded in bytes and rows.

    ``payload`` may be an Arrow buffer (e.g. what ``envelope.open_batch_into`` decrypted into
    ``pa.allocate_buffer``): the table's columns then point into it, without a copy.
    """
    size = payload.size if isinstance(payload, pa.Buffer) else len(payload)
    if size > MAX_IPC_BYTES:
        raise RecordLimitError(f"Arrow stream is {size} bytes, over {MAX_IPC_BYTES}")
    try:
        source = payload if isinstance(payload, pa.Buffer) else pa.py_buffer(payload)
        reader = ipc.open_stream(source)
        batches = []
        rows = 0
        for batch in reader:
            rows += batch.num_rows
            if rows > max_rows:
                raise RecordLimitError(f"Arrow stream has over {max_rows} rows")
            batches.append(batch)
        return pa.Table.from_batches(batches, schema=reader.schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise RecordFormatError(f"not a readable Arrow IPC stream ({type(exc).__name__})"
                                ) from None


def table_to_json_records(table: pa.Table) -> list[bytes]:
    """One compact JSON object per row (timestamps as ISO-8601 UTC): the partner's record form."""
    records: list[bytes] = []
    for row in table.to_pylist():
        records.append(json.dumps(row, default=_json_default, separators=(",", ":"),
                                  ensure_ascii=False).encode("utf-8"))
    return records


def _json_default(value: object) -> object:
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")
