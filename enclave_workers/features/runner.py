"""Apply a compiled spec to one batch: conform, featurize, enforce k-anonymity.

What it does, in order: checks the named keys (present, at least ``MIN_KEY_BYTES``); checks that
every declared column is in the batch; conforms each declared column (``conform.py``), reporting
each broken row as ``RowViolation(row_index, column, reason)`` -- the first reason per row and
column -- and excluding those rows; computes every feature with ``pyarrow.compute``; then, when
the spec sets ``k_anonymity``, suppresses the rows whose quasi-identifier combination occurs
fewer than ``k`` times among the remaining rows (nulls count as a value) and counts them.
Every input row ends up in exactly one place: the output table, a violation, or the suppressed
count (``FeatureResult.source_rows`` maps output rows back to input rows).

What it does not: never logs, prints or puts a data value or key byte into an error message;
Arrow's own messages (which can quote values) are not passed on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .compiler import CompiledSpec
from .conform import ConformedColumn, RowViolation, conform_column
from .errors import FeatureError, FeatureInputError, FeatureKeyError

MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class FeatureResult:
    """One featurized batch: the output, the rows refused and why, the rows suppressed."""

    table: pa.Table
    violations: list[RowViolation]
    suppressed_rows: int
    source_rows: pa.Int64Array

    @property
    def violating_rows(self) -> int:
        """How many input rows were excluded for breaking the input schema."""
        return len({v.row_index for v in self.violations})


def apply_compiled(compiled: CompiledSpec, table: pa.Table | pa.RecordBatch,
                   keys: Mapping[str, bytes]) -> FeatureResult:
    """Featurize one batch (see the module docstring for the order of steps)."""
    _check_keys(compiled, keys)
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not isinstance(table, pa.Table):
        raise FeatureInputError(f"expected a pyarrow Table, got {type(table).__name__}")
    spec = compiled.spec
    missing = [c.name for c in spec.columns if c.name not in table.column_names]
    if missing:
        raise FeatureInputError(f"batch lacks declared column(s): {', '.join(missing)}")
    if len(set(table.column_names)) != len(table.column_names):
        raise FeatureInputError("batch has duplicate column names")

    conformed = {c.name: conform_column(table.column(c.name), c) for c in spec.columns}
    violations, bad_rows = _violations(conformed, table.num_rows)
    columns = {name: c.values for name, c in conformed.items()}
    source_rows = pa.array(np.arange(table.num_rows, dtype=np.int64))
    if bad_rows is not None:
        keep = pc.invert(bad_rows)
        columns = {name: values.filter(keep) for name, values in columns.items()}
        source_rows = source_rows.filter(keep)

    output = _compute_features(compiled, columns, keys)
    suppressed = 0
    if spec.k_anonymity is not None and output.num_rows:
        sizes = group_sizes(output, compiled.quasi_identifier_columns)
        keep = pc.greater_equal(sizes, spec.k_anonymity.k)
        suppressed = output.num_rows - pc.sum(keep).as_py()
        if suppressed:
            output = output.filter(keep)
            source_rows = source_rows.filter(keep)
    return FeatureResult(output, violations, suppressed, source_rows)


def _check_keys(compiled: CompiledSpec, keys: Mapping[str, bytes]) -> None:
    for name in compiled.key_names:
        key = keys.get(name)
        if key is None:
            raise FeatureKeyError(f"the spec needs key {name!r}, which was not supplied")
        if not isinstance(key, bytes | bytearray):
            raise FeatureKeyError(f"key {name!r} must be bytes")
        if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
            raise FeatureKeyError(f"key {name!r} must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} "
                                  "bytes long")


def _violations(conformed: Mapping[str, ConformedColumn],
                num_rows: int) -> tuple[list[RowViolation], pa.Array | None]:
    """One violation per (row, column) -- its first reason -- and the mask of all bad rows."""
    found: list[tuple[int, int, str, str]] = []
    any_bad = None
    for order, (name, column) in enumerate(conformed.items()):
        already = None
        for reason, mask in column.problems:
            fresh = mask if already is None else pc.and_(mask, pc.invert(already))
            for row in pc.indices_nonzero(fresh).to_pylist():
                found.append((row, order, name, reason))
            already = mask if already is None else pc.or_(already, mask)
        if already is not None:
            any_bad = already if any_bad is None else pc.or_(any_bad, already)
    found.sort(key=lambda item: (item[0], item[1]))
    violations = [RowViolation(row, name, reason) for row, _, name, reason in found]
    if any_bad is not None and isinstance(any_bad, pa.ChunkedArray):
        any_bad = any_bad.combine_chunks()
    if not violations:
        return violations, None
    return violations, any_bad


def _compute_features(compiled: CompiledSpec, columns: Mapping[str, pa.ChunkedArray],
                      keys: Mapping[str, bytes]) -> pa.Table:
    arrays: list[pa.ChunkedArray] = []
    for bound in compiled.features:
        try:
            results = bound.compute(columns, {n: bytes(keys[n]) for n in bound.key_names})
        except pa.ArrowException as exc:
            raise FeatureError(f"feature {bound.feature.name!r} ({bound.feature.op}) failed in "
                               f"Arrow ({type(exc).__name__})") from None
        arrays += [_chunked(a, f.type) for a, f in zip(results, bound.outputs, strict=True)]
    arrays += [columns[name] for name in compiled.passthrough_columns]
    try:
        return pa.Table.from_arrays(arrays, schema=compiled.output_schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise FeatureError(f"computed features do not fit the output schema "
                           f"({type(exc).__name__})") from None


def _chunked(values: pa.Array | pa.ChunkedArray, arrow_type: pa.DataType) -> pa.ChunkedArray:
    if isinstance(values, pa.ChunkedArray):
        chunked = values
    else:
        chunked = pa.chunked_array([values], type=values.type)
    return chunked if chunked.type == arrow_type else chunked.cast(arrow_type)


def group_sizes(table: pa.Table, columns: tuple[str, ...]) -> pa.Array:
    """For each row, how many rows share its values in ``columns`` (nulls are a value)."""
    codes = None
    for name in columns:
        encoded = pc.dictionary_encode(table.column(name).combine_chunks(),
                                       null_encoding="encode")
        indices = pc.cast(encoded.indices, pa.int64())
        if codes is None:
            codes = indices
        else:
            combined = pc.add(pc.multiply(codes, len(encoded.dictionary)), indices)
            codes = pc.cast(pc.dictionary_encode(combined).indices, pa.int64())
    counts = pa.table({"code": codes}).group_by("code").aggregate([("code", "count")])
    counts = counts.sort_by("code")
    return pc.take(counts.column("code_count"), codes)
