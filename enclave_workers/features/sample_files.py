"""Plaintext sample files for trying a spec: Parquet or JSON Lines in, Parquet out.

What it does: reads a bounded Parquet or JSONL file into a ``pa.Table`` holding the spec's
declared columns, and writes a featurized table to Parquet (its schema metadata carries the
spec fingerprint). JSONL is read with ``json`` line by line -- this is a tool for small sample
files, not the enclave's data path. A JSONL column is built in its declared type when every
value allows it; otherwise it is kept as text (numbers and booleans as their JSON text), so that
the runner's conformance check reports the rows that do not parse, instead of the whole file
failing. A key missing from a JSONL object is a null.

What it does not: no encryption (sealed files go through ``sealbeam seal`` / ``open``), no
guessing of formats beyond the file suffix.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import FeatureInputError
from .spec import FeatureSpec

MAX_SAMPLE_BYTES = 1 << 30
MAX_JSONL_LINE_BYTES = 1 << 20
PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


def read_sample_table(path: str | Path, spec: FeatureSpec, *,
                      max_bytes: int = MAX_SAMPLE_BYTES) -> pa.Table:
    """The declared columns of a Parquet/JSONL file (extra columns are ignored)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise FeatureInputError(f"cannot read {path}: {exc.strerror}") from None
    if size > max_bytes:
        raise FeatureInputError(f"{path} is {size} bytes, over the limit of {max_bytes}")
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path, spec)
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path, spec)
    raise FeatureInputError(f"{path}: unknown input format {suffix!r} (use "
                            f"{', '.join(PARQUET_SUFFIXES + JSONL_SUFFIXES)})")


def write_parquet(table: pa.Table, path: str | Path) -> None:
    try:
        pq.write_table(table, str(path))
    except OSError as exc:
        raise FeatureInputError(f"cannot write {path}: {exc.strerror or 'I/O error'}") from None


def _read_parquet(path: Path, spec: FeatureSpec) -> pa.Table:
    try:
        schema = pq.read_schema(str(path))
        wanted = [c.name for c in spec.columns if c.name in schema.names]
        return pq.read_table(str(path), columns=wanted)
    except (pa.ArrowException, OSError):
        raise FeatureInputError(f"{path} is not a readable Parquet file") from None


def _read_jsonl(path: Path, spec: FeatureSpec) -> pa.Table:
    names = [c.name for c in spec.columns]
    values: dict[str, list] = {name: [] for name in names}
    with path.open("rb") as handle:
        for number, line in enumerate(_bounded_lines(handle, path), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise FeatureInputError(f"{path} line {number}: not a JSON object") from None
            if not isinstance(record, dict):
                raise FeatureInputError(f"{path} line {number}: not a JSON object")
            for name in names:
                values[name].append(record.get(name))
    arrays = [_column(values[c.name], c.type) for c in spec.columns]
    return pa.Table.from_arrays(arrays, names=names)


def _bounded_lines(handle, path: Path):
    while True:
        line = handle.readline(MAX_JSONL_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_JSONL_LINE_BYTES:
            raise FeatureInputError(f"{path}: a line is longer than {MAX_JSONL_LINE_BYTES} bytes")
        yield line


def _column(values: list, declared: pa.DataType) -> pa.Array:
    if not (pa.types.is_timestamp(declared) or pa.types.is_date32(declared)):
        try:
            if not any(isinstance(v, bool) for v in values) or pa.types.is_boolean(declared):
                return pa.array(values, type=declared)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
    return pa.array([_as_text(v) for v in values], type=pa.string())


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)
