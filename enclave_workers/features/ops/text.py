"""Text measures: ``text_length`` (characters) and ``token_count`` (whitespace-separated words).

What it does: ``text_length`` counts Unicode code points (``pc.utf8_length``); ``token_count``
counts maximal runs of non-whitespace characters (``pc.count_substring_regex``), with
whitespace as Python's ``str.split()`` defines it, so ``len(s.split())`` is the reference. Both
int32; nulls stay null.

What it does not: no language-aware tokenization, no normalization.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ..spec import ColumnSpec, FeatureDef, FeatureSpec
from .base import BoundFeature, operation, require, single_output

# Every character for which Python's str.isspace() is true, as an RE2 class.
_WHITESPACE = (r"\t\n\x{0B}\f\r\x{1C}-\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}"
               r"\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}")
TOKEN_PATTERN = f"[^{_WHITESPACE}]+"


def _require_string(feature: FeatureDef, column: ColumnSpec) -> None:
    require(pa.types.is_string(column.type), "input",
            f"{feature.op} needs a string column, {column.name!r} is {column.type_name}")


@operation("text_length", reveals_input=False, summary="number of characters, int32")
def bind_text_length(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    _require_string(feature, column)
    return single_output(feature, column, pa.int32(), pc.utf8_length)


@operation("token_count", reveals_input=False, summary="number of whitespace-separated tokens")
def bind_token_count(feature: FeatureDef, column: ColumnSpec, spec: FeatureSpec) -> BoundFeature:
    _require_string(feature, column)
    return single_output(feature, column, pa.int32(),
                         lambda x: pc.count_substring_regex(x, TOKEN_PATTERN))
