"""What an authorized reader in a region runs: open the pipeline's feature outputs.

What it does: reads ``.sbatch`` files (sealed feature batches) and ``.parquet`` files (PME),
or every such file in given directories, and returns the rows as one ``pa.Table``;
``write_rows`` writes them as Parquet or JSON lines.

- ``.sbatch``: refuses a sealed header of another region or a DEK not wrapped under this
  region's KEK, unwraps the output DEK with the local keyring
  (``aad = dek_wrap_aad(region, producer)``) and opens the batch envelope.
- ``.parquet``: pyarrow's own PME reader with a ``KmsClient`` whose unwrap is
  ``pme_keys.keyring_unwrapper`` over ``LocalKeyring.unwrap``: each master-key blob must name
  this region and its KEK, and a reader may be limited to some master-key roles (e.g. only
  ``features``, together with the ``columns`` it may read).

What it does not: it never opens another region's outputs, never prints keys, and does not
re-identify anyone (outputs carry pseudonyms, not identifiers).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pqe

from enclave_workers.batch_processor import FEATURES_KIND, MAX_ENVELOPE_BYTES, SPEC_CONTEXT_KEY
from enclave_workers.features import FINGERPRINT_METADATA_KEY
from enclave_workers.features.pme import ParquetEncryptionError, read_encrypted_parquet
from enclave_workers.features.pme_kms import callback_kms_client_factory
from enclave_workers.pme_keys import ROLES, PmeKeyError, keyring_unwrapper
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
from transforms.write import OUTPUT_SUFFIX, PME_SUFFIX

from .errors import InputFileError, PipelineError, ReaderRegionError

ROW_FORMATS = ("jsonl", "parquet")
OUTPUT_FILE_SUFFIXES = (OUTPUT_SUFFIX, PME_SUFFIX)


def output_files(paths: Iterable[Path]) -> list[Path]:
    """Files to open: given files, plus every ``*.sbatch`` and ``*.parquet`` directly inside
    given directories."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir()
                                if p.is_file() and p.suffix in OUTPUT_FILE_SUFFIXES
                                and not p.name.startswith(".")))
        elif path.is_file():
            found.append(path)
        else:
            raise InputFileError(f"{path} does not exist")
    return found


def open_output(path: Path, *, keyring: LocalKeyring, region: str,
                columns: Sequence[str] | None = None,
                roles: Iterable[str] = ROLES) -> pa.Table:
    """Open one output of ``region`` (sealed batch or PME Parquet); refuse anything else.

    ``columns`` and ``roles`` apply to PME files: read only those columns, unwrapping only
    master keys of those roles.
    """
    if path.suffix == PME_SUFFIX:
        return open_pme_output(path, keyring=keyring, region=region, columns=columns,
                               roles=roles)
    table = open_sealed_output(path, keyring=keyring, region=region)
    return table if columns is None else _select(table, columns, path)


def open_sealed_output(path: Path, *, keyring: LocalKeyring, region: str) -> pa.Table:
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
        table = table_from_ipc(payload)
    except RecordError as exc:
        raise PipelineError(f"{path.name}: {exc}") from None
    declared = header.context.get(SPEC_CONTEXT_KEY)
    if declared is not None and spec_fingerprint_of(table) != declared:
        raise PipelineError(f"{path.name}: its rows carry another spec fingerprint than its "
                            "(authenticated) header")
    return table


def open_pme_output(path: Path, *, keyring: LocalKeyring, region: str,
                    columns: Sequence[str] | None = None,
                    roles: Iterable[str] = ROLES) -> pa.Table:
    """Open one PME Parquet output of ``region`` with pyarrow's PME reader and the keyring."""
    try:
        kek_uri = keyring.kek_for_region(region)
        unwrap = keyring_unwrapper(keyring.unwrap, region=region, expected_kek_uri=kek_uri,
                                   roles=roles)
    except (KmsError, PmeKeyError) as exc:
        raise PipelineError(f"{path.name}: {exc}") from None

    def refuse_wrap(key_bytes: bytes, master_key_id: str) -> bytes:
        raise PipelineError("a reader does not wrap keys")

    try:
        return read_encrypted_parquet(
            path, kms_client_factory=callback_kms_client_factory(refuse_wrap, unwrap),
            kms_connection_config=pqe.KmsConnectionConfig(), columns=columns)
    except ParquetEncryptionError as exc:
        raise PipelineError(f"{path.name}: {exc}") from None


def _select(table: pa.Table, columns: Sequence[str], path: Path) -> pa.Table:
    missing = [name for name in columns if name not in table.column_names]
    if missing:
        raise InputFileError(f"{path.name} has no column(s) {', '.join(missing)}")
    return table.select(list(columns))


def open_outputs(paths: Iterable[Path], *, keyring: LocalKeyring, region: str,
                 columns: Sequence[str] | None = None,
                 roles: Iterable[str] = ROLES) -> pa.Table:
    """Open every output file given (or found in given directories) as one table."""
    files = output_files(paths)
    if not files:
        raise InputFileError(f"no {' or '.join(OUTPUT_FILE_SUFFIXES)} files found")
    roles = tuple(roles)
    tables = [open_output(path, keyring=keyring, region=region, columns=columns, roles=roles)
              for path in files]
    fingerprints = {spec_fingerprint_of(t) for t in tables}
    if len(fingerprints) > 1:
        raise PipelineError("the outputs were made by different feature specs; open them "
                            "separately")
    schema = tables[0].schema
    try:
        return pa.concat_tables([t.replace_schema_metadata(schema.metadata) for t in tables])
    except pa.ArrowInvalid:
        raise PipelineError("the outputs do not share one schema; open them separately"
                            ) from None


def spec_fingerprint_of(table: pa.Table) -> str | None:
    """The feature spec fingerprint an opened output carries in its schema metadata."""
    value = (table.schema.metadata or {}).get(FINGERPRINT_METADATA_KEY)
    return value.decode("ascii", "replace") if value is not None else None


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
    return json.dumps({"rows": table.num_rows, "columns": table.column_names,
                       "spec_fingerprint": spec_fingerprint_of(table)})
