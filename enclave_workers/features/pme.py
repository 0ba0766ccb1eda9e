"""Featurized tables out as Parquet Modular Encryption (PME) files, one master key per reader.

What it does: writes a featurized ``pa.Table`` with pyarrow's ``CryptoFactory`` so that every
column is encrypted under a data key wrapped (double wrapping, pyarrow's default) by the master
key its column-key assignment names, and the footer is encrypted too (``plaintext_footer=False``,
magic ``PARE``): a reader released only the ``features`` master key reads the feature columns
and nothing of the pseudonym columns. ``column_keys_for_spec`` derives that assignment from a
compiled spec (``pseudonymize`` outputs under one key, every other output column under
another); ``write_encrypted_parquet`` refuses an assignment that leaves a column out, names one
twice, or names one the table lacks, so no column is ever written in the clear. The settings
are fixed: AES-GCM for pages and metadata (``AES_GCM_V1``), 256-bit data keys, key material
inside the file, KEK/KMS caches that expire after ``KEY_CACHE_LIFETIME``. (Arrow C++ makes
the key-encryption keys of double wrapping 128-bit; that is not configurable.)
``read_encrypted_parquet`` reads such a file back, refusing anything whose footer is not
encrypted, and reads column by column (``ParquetFile.iter_batches``) so that a projection
needs only the keys of the projected columns. (Arrow 25's row-group readers --
``pq.read_table``, ``ParquetFile.read`` -- also unwrap the first column's key, whatever the
projection.)

What it does not: fetch master keys (the KMS callables of ``pme_kms`` do, backed by the broker
in the pipeline), write nested columns (a feature spec describes flat records), write to URIs
(pass a file object opened on the destination's filesystem), or log anything.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pqe

from .compiler import CompiledSpec
from .pme_kms import (
    MAX_MASTER_KEY_ID_CHARS,
    CallbackKmsClient,
    KmsClientFactory,
    ParquetEncryptionError,
    ParquetKmsError,
    callback_kms_client_factory,
)

__all__ = [
    "DATA_KEY_LENGTH_BITS",
    "ENCRYPTION_ALGORITHM",
    "KEY_CACHE_LIFETIME",
    "MAX_FILE_BYTES",
    "MAX_TABLE_BYTES",
    "CallbackKmsClient",
    "ParquetDecryptionError",
    "ParquetEncryptionError",
    "ParquetKeyAssignmentError",
    "ParquetKmsError",
    "callback_kms_client_factory",
    "column_keys_for_spec",
    "encryption_configuration",
    "pseudonymized_columns",
    "read_encrypted_parquet",
    "write_encrypted_parquet",
]

ENCRYPTION_ALGORITHM = "AES_GCM_V1"
DATA_KEY_LENGTH_BITS = 256
KEY_CACHE_LIFETIME = datetime.timedelta(minutes=10)
MAX_KEY_CACHE_LIFETIME = datetime.timedelta(hours=1)
MAX_FILE_BYTES = 2 * 1024**3
MAX_TABLE_BYTES = 4 * 1024**3
ENCRYPTED_FOOTER_MAGIC = b"PARE"
COMPRESSIONS = ("none", "snappy", "gzip", "brotli", "lz4", "zstd")
PSEUDONYMIZE_OP = "pseudonymize"
# pyarrow passes the assignment to C++ as "key: col, col; key: col" and trims each part.
_ASSIGNMENT_SEPARATORS = frozenset(":;,")


class ParquetKeyAssignmentError(ParquetEncryptionError):
    """The column-key assignment (or footer key id) does not cover the table exactly once."""


class ParquetDecryptionError(ParquetEncryptionError):
    """An encrypted Parquet file cannot be read: not PME with an encrypted footer, over a size
    limit, damaged or tampered with, or a key it needs is not available."""


def pseudonymized_columns(compiled: CompiledSpec) -> tuple[str, ...]:
    """The output columns made by ``pseudonymize`` features, in output order."""
    return tuple(field.name for bound in compiled.features
                 if bound.feature.op == PSEUDONYMIZE_OP for field in bound.outputs)


def column_keys_for_spec(compiled: CompiledSpec, *, pseudonym_key_id: str,
                         features_key_id: str) -> dict[str, list[str]]:
    """Pseudonym columns under one master key, every other output column under another.

    A key with no columns is left out (pyarrow refuses an empty list).
    """
    for key_id in (pseudonym_key_id, features_key_id):
        _check_key_id(key_id)
    if pseudonym_key_id == features_key_id:
        raise ParquetKeyAssignmentError(
            f"pseudonym and feature columns need distinct master keys, both are "
            f"{pseudonym_key_id!r}")
    pseudonyms = set(pseudonymized_columns(compiled))
    names = compiled.output_schema.names
    assignment = {
        pseudonym_key_id: [name for name in names if name in pseudonyms],
        features_key_id: [name for name in names if name not in pseudonyms],
    }
    return {key_id: columns for key_id, columns in assignment.items() if columns}


def encryption_configuration(column_keys: Mapping[str, Sequence[str]], footer_key: str, *,
                             cache_lifetime: datetime.timedelta = KEY_CACHE_LIFETIME
                             ) -> pqe.EncryptionConfiguration:
    """The one PME configuration sealbeam writes (see the module docstring for why)."""
    _check_key_id(footer_key, what="footer key id")
    _check_cache_lifetime(cache_lifetime)
    return pqe.EncryptionConfiguration(
        footer_key=footer_key,
        column_keys={key_id: list(columns) for key_id, columns in column_keys.items()},
        encryption_algorithm=ENCRYPTION_ALGORITHM,
        plaintext_footer=False,
        double_wrapping=True,
        internal_key_material=True,
        data_key_length_bits=DATA_KEY_LENGTH_BITS,
        cache_lifetime=cache_lifetime,
    )


def write_encrypted_parquet(table: pa.Table | pa.RecordBatch, path_or_sink: Any, *,
                            column_keys: Mapping[str, Sequence[str]], footer_key: str,
                            kms_client_factory: KmsClientFactory,
                            kms_connection_config: pqe.KmsConnectionConfig,
                            cache_lifetime: datetime.timedelta = KEY_CACHE_LIFETIME,
                            compression: str = "snappy") -> None:
    """Write ``table`` as PME Parquet; every column under the master key ``column_keys`` names.

    ``path_or_sink`` is a local path (written to a temporary file beside it, then renamed, so
    a failure leaves nothing behind) or a writable binary file object. Keys are wrapped before
    anything is written.
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not isinstance(table, pa.Table):
        raise ParquetEncryptionError(f"expected a pyarrow Table, got {type(table).__name__}")
    if not isinstance(compression, str) or compression.lower() not in COMPRESSIONS:
        raise ParquetEncryptionError(f"compression must be one of {', '.join(COMPRESSIONS)}")
    assignment = check_column_keys(table.schema, column_keys)
    config = encryption_configuration(assignment, footer_key, cache_lifetime=cache_lifetime)
    properties = _call_arrow("preparing PME encryption", lambda: pqe.CryptoFactory(
        kms_client_factory).file_encryption_properties(_checked_connection_config(
            kms_connection_config), config))

    def write_to(target: Any) -> None:
        _call_arrow("writing encrypted Parquet", lambda: pq.write_table(
            table, target, compression=compression.lower(), encryption_properties=properties))

    if isinstance(path_or_sink, str | os.PathLike):
        _write_atomically(_local_path(path_or_sink), write_to)
    else:
        write_to(path_or_sink)


def read_encrypted_parquet(path: str | os.PathLike[str], *,
                           kms_client_factory: KmsClientFactory,
                           kms_connection_config: pqe.KmsConnectionConfig,
                           columns: Sequence[str] | None = None,
                           cache_lifetime: datetime.timedelta = KEY_CACHE_LIFETIME,
                           max_file_bytes: int = MAX_FILE_BYTES,
                           max_table_bytes: int = MAX_TABLE_BYTES) -> pa.Table:
    """Read a PME file with an encrypted footer, all columns or the ``columns`` projection.

    Sizes are checked before reading: the file against ``max_file_bytes``, the uncompressed
    size its (decrypted) footer declares against ``max_table_bytes``.
    """
    local = _local_path(path)
    _check_file(local, max_file_bytes)
    _check_cache_lifetime(cache_lifetime)
    connection = _checked_connection_config(kms_connection_config)
    properties = _call_arrow("preparing PME decryption", lambda: pqe.CryptoFactory(
        kms_client_factory).file_decryption_properties(
            connection, pqe.DecryptionConfiguration(cache_lifetime=cache_lifetime)))
    try:
        with pq.ParquetFile(local, decryption_properties=properties) as parquet_file:
            declared = sum(parquet_file.metadata.row_group(i).total_byte_size
                           for i in range(parquet_file.metadata.num_row_groups))
            if declared > max_table_bytes:
                raise ParquetDecryptionError(
                    f"{local} declares {declared} uncompressed bytes; the limit is "
                    f"{max_table_bytes}")
            schema = _projected_schema(parquet_file.schema_arrow, columns, local)
            batches = list(parquet_file.iter_batches(columns=schema.names))
    except ParquetEncryptionError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ParquetDecryptionError(
            f"cannot read or decrypt {local} ({type(exc).__name__}): the file is damaged or "
            "tampered with, or a key it needs is not available") from None
    return pa.Table.from_batches(batches, schema=schema) if batches else schema.empty_table()


def check_column_keys(schema: pa.Schema,
                      column_keys: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Every column of ``schema`` under exactly one valid master key id; the assignment in
    schema order. Fails closed: PME would write an unlisted column in the clear."""
    if not isinstance(column_keys, Mapping) or not column_keys:
        raise ParquetKeyAssignmentError("column_keys must map master key ids to column lists")
    names = schema.names
    if not names:
        raise ParquetKeyAssignmentError("the table has no columns to encrypt")
    if len(set(names)) != len(names):
        raise ParquetKeyAssignmentError("the table has duplicate column names")
    for field in schema:
        _check_column_name(field.name)
        if pa.types.is_nested(field.type):
            raise ParquetKeyAssignmentError(
                f"column {field.name!r} is nested ({field.type}); only flat columns are "
                "written")
    owner: dict[str, str] = {}
    for key_id, columns in column_keys.items():
        _check_key_id(key_id)
        if isinstance(columns, str | bytes) or not isinstance(columns, Sequence) or not columns:
            raise ParquetKeyAssignmentError(
                f"master key {key_id!r} must map to a non-empty list of column names")
        for column in columns:
            if not isinstance(column, str):
                raise ParquetKeyAssignmentError(
                    f"master key {key_id!r} lists a {type(column).__name__}, not a column name")
            if column in owner:
                raise ParquetKeyAssignmentError(
                    f"column {column!r} is assigned to master keys {owner[column]!r} and "
                    f"{key_id!r}")
            owner[column] = key_id
    unknown = [column for column in owner if column not in names]
    if unknown:
        raise ParquetKeyAssignmentError(f"column_keys names column(s) the table lacks: "
                                        f"{', '.join(map(repr, unknown))}")
    uncovered = [name for name in names if name not in owner]
    if uncovered:
        raise ParquetKeyAssignmentError(f"no master key for column(s) "
                                        f"{', '.join(map(repr, uncovered))}: every column must "
                                        "be encrypted")
    return {key_id: [name for name in names if owner[name] == key_id] for key_id in column_keys}


def _check_key_id(key_id: object, *, what: str = "master key id") -> None:
    if not isinstance(key_id, str) or not key_id:
        raise ParquetKeyAssignmentError(f"a {what} must be a non-empty string")
    if len(key_id) > MAX_MASTER_KEY_ID_CHARS:
        raise ParquetKeyAssignmentError(f"a {what} is {len(key_id)} characters; allowed up to "
                                        f"{MAX_MASTER_KEY_ID_CHARS}")
    if _breaks_assignment_text(key_id):
        raise ParquetKeyAssignmentError(
            f"{what} {key_id!r} contains ':', ';', ',', a control character or edge whitespace")


def _check_column_name(name: str) -> None:
    if not name or _breaks_assignment_text(name):
        raise ParquetKeyAssignmentError(
            f"column name {name!r} cannot be given a PME key: it is empty or contains ':', "
            "';', ',', a control character or edge whitespace")


def _breaks_assignment_text(text: str) -> bool:
    return (text != text.strip() or any(c in _ASSIGNMENT_SEPARATORS for c in text)
            or not text.isprintable())


def _check_cache_lifetime(cache_lifetime: datetime.timedelta) -> None:
    if not isinstance(cache_lifetime, datetime.timedelta):
        raise ParquetEncryptionError("cache_lifetime must be a datetime.timedelta")
    if not datetime.timedelta(0) < cache_lifetime <= MAX_KEY_CACHE_LIFETIME:
        raise ParquetEncryptionError(f"cache_lifetime must be positive and at most "
                                     f"{MAX_KEY_CACHE_LIFETIME}")


def _checked_connection_config(config: pqe.KmsConnectionConfig) -> pqe.KmsConnectionConfig:
    if not isinstance(config, pqe.KmsConnectionConfig):
        raise ParquetEncryptionError(f"kms_connection_config must be a KmsConnectionConfig, "
                                     f"got {type(config).__name__}")
    return config


def _local_path(path: str | os.PathLike[str]) -> Path:
    text = os.fspath(path)
    if not isinstance(text, str) or "://" in text:
        raise ParquetEncryptionError("a local file path is needed; for a URI pass a file "
                                     "object opened on its filesystem")
    return Path(text)


def _check_file(path: Path, max_file_bytes: int) -> None:
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(4)
            handle.seek(max(size - 4, 0))
            tail = handle.read(4)
    except OSError as exc:
        raise ParquetDecryptionError(f"cannot open {path} ({type(exc).__name__})") from None
    if size > max_file_bytes:
        raise ParquetDecryptionError(f"{path} is {size} bytes; the limit is {max_file_bytes}")
    if size < 12 or head != ENCRYPTED_FOOTER_MAGIC or tail != ENCRYPTED_FOOTER_MAGIC:
        raise ParquetDecryptionError(f"{path} is not a Parquet file with an encrypted footer "
                                     "(magic PARE)")


def _projected_schema(schema: pa.Schema, columns: Sequence[str] | None, path: Path) -> pa.Schema:
    if columns is None:
        return schema
    if isinstance(columns, str) or not isinstance(columns, Sequence):
        raise ParquetDecryptionError("columns must be a list of column names")
    if len(set(columns)) != len(columns):
        raise ParquetDecryptionError("columns names a column more than once")
    missing = [name for name in columns if name not in schema.names]
    if missing:
        raise ParquetDecryptionError(f"{path} has no column(s) {', '.join(map(repr, missing))}")
    return pa.schema([schema.field(name) for name in columns], metadata=schema.metadata)


def _call_arrow(action: str, call: Any) -> Any:
    """Run an Arrow call; KMS and assignment errors pass, Arrow's own become typed errors
    that name only the exception type (Arrow messages can quote values)."""
    try:
        return call()
    except ParquetEncryptionError:
        raise
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        raise ParquetEncryptionError(f"{action} failed ({type(exc).__name__})") from None


def _write_atomically(path: Path, write_to: Any) -> None:
    """Write beside ``path`` under a temporary name, then rename; remove it on failure."""
    try:
        descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                            suffix=".partial")
    except OSError as exc:
        raise ParquetEncryptionError(f"cannot create a file in {path.parent} "
                                     f"({type(exc).__name__})") from None
    os.close(descriptor)
    partial = Path(name)
    try:
        write_to(str(partial))
        os.replace(partial, path)
    except OSError as exc:
        raise ParquetEncryptionError(f"cannot write {path} ({type(exc).__name__})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
