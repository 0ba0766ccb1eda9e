"""Keyed hashing of values: ``pseudonymize`` (HMAC-SHA-256) and ``hash_bucket``.

What it does: hashes each *distinct* value once and spreads the results back with
``pc.take``: Arrow has no HMAC kernel, so the one Python loop in featurization runs over the
distinct values of a batch (``pc.unique`` + ``pc.index_in``), never over its rows.

- ``pseudonymize``: HMAC-SHA-256(key, UTF-8 bytes of the value). ``output: hex`` (default) is the
  lowercase hex string, ``binary`` a ``fixed_size_binary(32)``. Integer columns are hashed as
  their decimal text (``-12`` -> ``b"-12"``). Deterministic per key: one tenant, one key.
- ``hash_bucket``: the first 8 bytes of SHA-256(UTF-8 value) -- or of HMAC-SHA-256(key, ...)
  when the feature names a ``key`` -- read big-endian as an unsigned integer, modulo
  ``num_buckets``, as int32. An identifier column may only be bucketed under a key (an unkeyed
  hash of an e-mail address can be reversed by guessing).

What it does not: never logs or returns key bytes; keys are looked up by name at apply time
(``runner.py`` checks that each named key is present and long enough).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from ..spec import ColumnSpec, FeatureDef, FeatureSpec
from .base import BoundFeature, Columns, Keys, operation, param, require

DIGEST_BYTES = 32


def hash_distinct(values: pa.ChunkedArray | pa.Array, hash_one: Callable[[bytes], object],
                  out_type: pa.DataType) -> pa.ChunkedArray | pa.Array:
    """Apply ``hash_one`` to the UTF-8 bytes of each distinct non-null value; nulls stay null."""
    if pa.types.is_integer(values.type):
        values = pc.cast(values, pa.string())
    as_bytes = pc.cast(values, pa.binary())
    distinct = pc.unique(as_bytes).drop_null()
    hashed = pa.array([hash_one(value) for value in distinct.to_pylist()], type=out_type)
    return pc.take(hashed, pc.index_in(as_bytes, value_set=distinct))


def _hashable(column: ColumnSpec) -> bool:
    return pa.types.is_string(column.type) or pa.types.is_integer(column.type)


@operation("pseudonymize", reveals_input=False, summary="HMAC-SHA-256 under a named key")
def bind_pseudonymize(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    require(_hashable(column), "input",
            f"pseudonymize needs a string or integer column, {column.name!r} is {column.type_name}")
    key_name = param(feature, "key")
    binary = param(feature, "output", "hex") == "binary"
    out_type = pa.binary(DIGEST_BYTES) if binary else pa.string()
    source = column.name

    def compute(columns: Columns, keys: Keys) -> list:
        key = keys[key_name]
        if binary:
            def hash_one(value: bytes) -> bytes:
                return hmac.digest(key, value, "sha256")
        else:
            def hash_one(value: bytes) -> str:
                return hmac.digest(key, value, "sha256").hex()
        return [hash_distinct(columns[source], hash_one, out_type)]

    return BoundFeature(feature, (pa.field(feature.name, out_type),), (source,), (key_name,),
                        compute)


@operation("hash_bucket", reveals_input=False, summary="stable hash of the value mod num_buckets")
def bind_hash_bucket(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    require(_hashable(column), "input",
            f"hash_bucket needs a string or integer column, {column.name!r} is {column.type_name}")
    key_name = param(feature, "key")
    require(key_name is not None or not column.identifier, "key",
            f"{column.name!r} is an identifier: hash_bucket on it needs a key "
            "(an unkeyed hash of an identifier can be reversed by guessing)")
    buckets = int(param(feature, "num_buckets"))
    source = column.name

    def compute(columns: Columns, keys: Keys) -> list:
        if key_name is None:
            def digest(value: bytes) -> bytes:
                return hashlib.sha256(value).digest()
        else:
            key = keys[key_name]

            def digest(value: bytes) -> bytes:
                return hmac.digest(key, value, "sha256")

        def bucket(value: bytes) -> int:
            return int.from_bytes(digest(value)[:8], "big") % buckets

        return [hash_distinct(columns[source], bucket, pa.int32())]

    return BoundFeature(feature, (pa.field(feature.name, pa.int32()),), (source,),
                        () if key_name is None else (key_name,), compute)
