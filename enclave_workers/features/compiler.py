"""Compile a validated ``FeatureSpec`` into a ``CompiledSpec``: bound ops, output schema,
fingerprint.

What it does: the checks that need the whole spec (each feature's input column is declared and
fits its op; ops that output raw values do not read identifiers unless allowed; output names
are unique; quasi-identifiers name features; column constraints fit column types), reported
all at once with field and line; then the output schema, in feature order, followed by any
unconsumed columns kept by ``input.unconsumed_columns: passthrough``. Identifier columns never
reach the output unless a feature consumes them.

What it does not: touches no data; ``runner.py`` applies the plan (``CompiledSpec.apply``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

from .errors import FeatureSpecError, SpecProblem
from .fingerprint import spec_fingerprint
from .ops import OPERATIONS, BoundFeature, OpSpecError
from .spec import FeatureSpec
from .types import is_numeric

FINGERPRINT_METADATA_KEY = b"sealbeam.feature_spec.fingerprint"


@dataclass(frozen=True)
class CompiledSpec:
    """A spec ready to run: ``apply(table, keys)`` featurizes one batch."""

    spec: FeatureSpec
    features: tuple[BoundFeature, ...]
    passthrough_columns: tuple[str, ...]
    output_schema: pa.Schema
    fingerprint: str
    key_names: tuple[str, ...]
    quasi_identifier_columns: tuple[str, ...]

    @property
    def fingerprint_bytes(self) -> bytes:
        """The 32 raw bytes of the fingerprint (an envelope's ``schema_fingerprint``)."""
        return bytes.fromhex(self.fingerprint)

    def apply(self, table: pa.Table | pa.RecordBatch, keys: Mapping[str, bytes]):
        """Featurize one batch; see ``runner.apply_compiled``."""
        from .runner import apply_compiled

        return apply_compiled(self, table, keys)


def compile_spec(spec: FeatureSpec) -> CompiledSpec:
    """Check ``spec`` as a whole and bind every feature; ``FeatureSpecError`` lists problems."""
    problems: list[SpecProblem] = _column_problems(spec)
    bound: list[BoundFeature] = []
    for feature in spec.features:
        column = spec.column(feature.input)
        if column is None:
            problems.append(spec.problem((*feature.path, "input"),
                                         f"input column {feature.input!r} is not declared in "
                                         "input.columns"))
            continue
        info = OPERATIONS[feature.op]
        if info.reveals_input and column.identifier and not feature.allow_identifier:
            problems.append(spec.problem(
                (*feature.path, "op"),
                f"{feature.op} outputs raw values and {column.name!r} is an identifier: "
                "pseudonymize it, or set allow_identifier: true on this feature"))
            continue
        try:
            bound.append(info.binder(feature, column, spec))
        except OpSpecError as exc:
            problems.append(spec.problem((*feature.path, exc.field), exc.message))

    passthrough = _unconsumed_passthrough(spec, bound)
    fields = [field for b in bound for field in b.outputs]
    fields += [pa.field(name, spec.column(name).type) for name in passthrough]
    problems += _duplicate_output_problems(spec, bound, passthrough)
    quasi_identifiers = _quasi_identifier_columns(spec, bound, problems)
    if problems:
        problems.sort(key=lambda p: (p.line or 0, p.field))
        raise FeatureSpecError(problems, source=spec.source)

    fingerprint = spec_fingerprint(spec.to_json_document())
    schema = pa.schema(fields, metadata={FINGERPRINT_METADATA_KEY: fingerprint.encode("ascii")})
    key_names = tuple(sorted({name for b in bound for name in b.key_names}))
    return CompiledSpec(spec, tuple(bound), passthrough, schema, fingerprint, key_names,
                        quasi_identifiers)


def _column_problems(spec: FeatureSpec) -> list[SpecProblem]:
    problems = []
    for index, column in enumerate(spec.columns):
        path = ("input", "columns", index)
        for bound_name in ("min", "max"):
            if getattr(column, bound_name) is not None and not is_numeric(column.type):
                problems.append(spec.problem((*path, bound_name),
                                             f"{bound_name} needs a numeric column, "
                                             f"{column.name!r} is {column.type_name}"))
        if column.min is not None and column.max is not None and column.min > column.max:
            problems.append(spec.problem((*path, "max"),
                                         f"max ({column.max}) is below min ({column.min})"))
        if column.max_length is not None and not pa.types.is_string(column.type):
            problems.append(spec.problem((*path, "max_length"),
                                         f"max_length needs a string column, {column.name!r} "
                                         f"is {column.type_name}"))
    return problems


def _unconsumed_passthrough(spec: FeatureSpec, bound: list[BoundFeature]) -> tuple[str, ...]:
    if spec.unconsumed_columns != "passthrough":
        return ()
    consumed = {name for b in bound for name in b.inputs}
    return tuple(c.name for c in spec.columns if c.name not in consumed and not c.identifier)


def _duplicate_output_problems(spec: FeatureSpec, bound: list[BoundFeature],
                               passthrough: tuple[str, ...]) -> list[SpecProblem]:
    problems = []
    seen_features: set[str] = set()
    seen_columns: dict[str, str] = {}
    for b in bound:
        if b.feature.name in seen_features:
            problems.append(spec.problem((*b.feature.path, "name"),
                                         f"feature name {b.feature.name!r} is used twice"))
        seen_features.add(b.feature.name)
        for field in b.outputs:
            if field.name in seen_columns:
                problems.append(spec.problem(
                    (*b.feature.path, "name"),
                    f"output column {field.name!r} is also made by {seen_columns[field.name]}"))
            seen_columns[field.name] = f"feature {b.feature.name!r}"
    for name in passthrough:
        if name in seen_columns:
            problems.append(spec.problem(
                ("input", "unconsumed_columns"),
                f"unconsumed column {name!r} would be passed through, but "
                f"{seen_columns[name]} already makes an output column of that name"))
    return problems


def _quasi_identifier_columns(spec: FeatureSpec, bound: list[BoundFeature],
                              problems: list[SpecProblem]) -> tuple[str, ...]:
    if spec.k_anonymity is None:
        return ()
    by_feature = {b.feature.name: [f.name for f in b.outputs] for b in bound}
    output_columns = {f.name for b in bound for f in b.outputs}
    columns: list[str] = []
    for index, name in enumerate(spec.k_anonymity.quasi_identifiers):
        path = ("k_anonymity", "quasi_identifiers", index)
        if by_feature.get(name):
            columns += by_feature[name]
        elif name in output_columns:
            columns.append(name)
        else:
            problems.append(spec.problem(path, f"{name!r} is not a feature (or feature output "
                                               "column) of this spec"))
    return tuple(dict.fromkeys(columns))
