"""What an authorized reader in a region runs: open the pipeline's sealed feature batches.

What it does: reads ``.sbatch`` files (or every ``.sbatch`` in given directories), refuses any
whose sealed header names another region or whose DEK is not wrapped under this region's KEK,
unwraps the output DEK with the local keyring (``aad = dek_wrap_aad(region, producer)``),
opens the batch envelope and returns the rows as one ``pa.Table``; ``write_rows`` writes them
as Parquet or JSON lines.

What it does not: it never opens another region's outputs, never prints keys, and does not
re-identify anyone (outputs carry pseudonyms, not identifiers).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from enclave_workers.batch_processor import FEATURES_KIND, MAX_ENVELOPE_BYTES
from enclave_workers.records import RecordError, table_from_ipc, table_to_json_records
from envelope import (
    DataKey,
    EnvelopeAuthenticationError,
    EnvelopeError,
    dek_wrap_aad,
    open_batch,
    read_header,
)
from keybroker.kms.base import KmsError
from keybroker.kms.local import LocalKeyring
from transforms.write import OUTPUT_SUFFIX

from .errors import InputFileError, PipelineError, ReaderRegionError

ROW_FORMATS = ("jsonl", "parquet")


def output_files(paths: Iterable[Path]) -> list[Path]:
    """Files to open: given files, plus every ``*.sbatch`` directly inside given directories."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(path.glob(f"*{OUTPUT_SUFFIX}")))
        elif path.is_file():
            found.append(path)
        else:
            raise InputFileError(f"{path} does not exist")
    return found


def open_output(path: Path, *, keyring: LocalKeyring, region: str) -> pa.Table:
    """Open one sealed feature batch of ``region``; refuse anything else."""
    size = path.stat().st_size
    if size > MAX_ENVELOPE_BYTES:
        raise InputFileError(f"{path.name} is {size} bytes, over {MAX_ENVELOPE_BYTES}")
    envelope = path.read_bytes()
    try:
        header, _ = read_header(envelope)
    except EnvelopeError as exc:
        raise InputFileError(f"{path.name} is not a sealed envelope: {exc}") from None
    if header.region != region:
        raise ReaderRegionError(f"{path.name} belongs to region {header.region!r}; this reader "
                                f"opens only {region!r}")
    if header.kind != "batch" or header.context.get("sealbeam.kind") != FEATURES_KIND:
        raise InputFileError(f"{path.name} is not a sealed feature batch")
    try:
        if header.wrapped_key.kek.uri != keyring.kek_for_region(region):
            raise ReaderRegionError(f"{path.name}: its key is not wrapped under the KEK of "
                                    f"region {region!r}")
        secret = keyring.unwrap(header.wrapped_key, dek_wrap_aad(region, header.producer_id))
    except KmsError as exc:
        raise PipelineError(f"{path.name}: cannot unwrap its data key: "
                            f"{type(exc).__name__}") from None
    try:
        payload = open_batch(envelope, DataKey(secret))
    except EnvelopeAuthenticationError:
        raise PipelineError(f"{path.name} failed authentication") from None
    except EnvelopeError as exc:
        raise PipelineError(f"{path.name}: {exc}") from None
    try:
        return table_from_ipc(payload)
    except RecordError as exc:
        raise PipelineError(f"{path.name}: {exc}") from None


def open_outputs(paths: Iterable[Path], *, keyring: LocalKeyring, region: str) -> pa.Table:
    """Open every output file given (or found in given directories) as one table."""
    files = output_files(paths)
    if not files:
        raise InputFileError(f"no {OUTPUT_SUFFIX} files found")
    tables = [open_output(path, keyring=keyring, region=region) for path in files]
    return pa.concat_tables(tables)


def write_rows(table: pa.Table, destination: Path | None, row_format: str) -> None:
    """Write rows to a file (Parquet or JSONL), or as JSONL to stdout when no destination."""
    if row_format not in ROW_FORMATS:
        raise PipelineError(f"row format must be one of {', '.join(ROW_FORMATS)}")
    if destination is None:
        if row_format != "jsonl":
            raise PipelineError("Parquet output needs --output")
        _write_jsonl(table, sys.stdout.buffer)
        sys.stdout.flush()
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    if row_format == "parquet":
        pq.write_table(table, destination)
        return
    with destination.open("wb") as out:
        _write_jsonl(table, out)


def _write_jsonl(table: pa.Table, out: BinaryIO) -> None:
    for record in table_to_json_records(table):
        out.write(record + b"\n")


def summarize(table: pa.Table) -> str:
    """One JSON line describing what was opened (no row content)."""
    return json.dumps({"rows": table.num_rows, "columns": table.column_names})
