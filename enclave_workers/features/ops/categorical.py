"""Vocabulary lookups: ``categorical`` (one int32 code) and ``one_hot`` (one int8 per entry).

What it does: ``pc.index_in`` against the spec's vocabulary, once per batch.

- ``categorical``: the vocabulary index as int32; a value outside the vocabulary gets the OOV code
  (``oov_code``, default ``len(vocabulary)``).
- ``one_hot``: for each entry ``v`` a column ``<name>__<v>`` (1 where the value is ``v``, else 0)
  plus ``<name>__oov`` (1 where the value is outside the vocabulary), all int8.

A null value stays null (in every one-hot column). Matching is exact (case-sensitive); a string
column takes a string vocabulary, an integer column an integer vocabulary.

What it does not: no vocabulary is learned from the data.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ..spec import ColumnSpec, FeatureDef, FeatureSpec
from .base import (
    BoundFeature,
    Columns,
    Keys,
    OpSpecError,
    operation,
    param,
    require,
    single_output,
)

OOV_SUFFIX = "oov"


def _vocabulary(feature: FeatureDef, column: ColumnSpec) -> pa.Array:
    vocabulary = list(param(feature, "vocabulary"))
    if pa.types.is_string(column.type):
        require(all(isinstance(v, str) for v in vocabulary), "vocabulary",
                f"{column.name!r} is a string column: every vocabulary entry must be a string")
    elif pa.types.is_integer(column.type):
        require(all(isinstance(v, int) and not isinstance(v, bool) for v in vocabulary),
                "vocabulary",
                f"{column.name!r} is an integer column: every vocabulary entry must be an integer")
    else:
        raise OpSpecError("input", f"{feature.op} needs a string or integer column, "
                                   f"{column.name!r} is {column.type_name}")
    try:
        return pa.array(vocabulary, type=column.type)
    except (pa.ArrowInvalid, OverflowError):
        raise OpSpecError("vocabulary",
                          f"a vocabulary entry does not fit {column.type_name}") from None


def category_codes(values: pa.ChunkedArray, vocabulary: pa.Array, oov_code: int) -> pa.ChunkedArray:
    """int32 vocabulary index per value; ``oov_code`` outside it; null where the value is null."""
    index = pc.index_in(values, value_set=vocabulary)
    codes = pc.fill_null(index, pa.scalar(oov_code, pa.int32()))
    if values.null_count:
        codes = pc.if_else(pc.is_null(values), pa.scalar(None, pa.int32()), codes)
    return codes


@operation("categorical", reveals_input=False, summary="int32 vocabulary code with an OOV code")
def bind_categorical(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    vocabulary = _vocabulary(feature, column)
    oov_code = param(feature, "oov_code", len(vocabulary))
    require(not 0 <= oov_code < len(vocabulary), "oov_code",
            f"oov_code {oov_code} collides with a vocabulary code (0..{len(vocabulary) - 1})")
    return single_output(feature, column, pa.int32(),
                         lambda x: category_codes(x, vocabulary, oov_code))


def one_hot_names(feature_name: str, vocabulary: pa.Array) -> list[str]:
    return [f"{feature_name}__{v}" for v in vocabulary.to_pylist()] + [
        f"{feature_name}__{OOV_SUFFIX}"]


@operation("one_hot", reveals_input=False, summary="an int8 column per vocabulary entry + OOV")
def bind_one_hot(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    vocabulary = _vocabulary(feature, column)
    names = one_hot_names(feature.name, vocabulary)
    require(len(set(names)) == len(names), "vocabulary",
            f"one-hot column names collide (an entry named {OOV_SUFFIX!r}?)")
    source, size = column.name, len(vocabulary)

    def compute(columns: Columns, keys: Keys) -> list:
        codes = category_codes(columns[source], vocabulary, size)
        return [pc.cast(pc.equal(codes, code), pa.int8()) for code in range(size + 1)]

    outputs = tuple(pa.field(name, pa.int8()) for name in names)
    return BoundFeature(feature, outputs, (source,), (), compute)
