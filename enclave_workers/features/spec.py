"""Load a feature spec (YAML or a dict) and validate it against the shipped JSON Schema.

What it does: reads YAML under hard limits (size, nesting, node count; no anchors/aliases, no
duplicate keys), remembers the line of every field, validates the document with
``schema.json`` and returns a frozen ``FeatureSpec``. Every problem found is reported at once,
each naming its field and (for YAML) its line.

What it does not: no semantic checks that need the whole spec (does the input column exist,
do boundaries increase, does the op fit the column's type): ``compiler.py`` makes those and
reports them the same way, through ``FeatureSpec.problem``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema
import pyarrow as pa
import yaml

from .errors import FeatureSpecError, SpecProblem
from .types import UnknownTypeError, parse_type

MAX_SPEC_BYTES = 1 << 20
MAX_SPEC_DEPTH = 16
MAX_SPEC_NODES = 200_000
MAX_REPORTED_PROBLEMS = 50

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class ColumnSpec:
    """One declared input column and the constraints a row must meet."""

    name: str
    type: pa.DataType
    type_name: str
    nullable: bool = True
    identifier: bool = False
    min: float | int | None = None
    max: float | int | None = None
    max_length: int | None = None


@dataclass(frozen=True)
class FeatureDef:
    """One feature as written: its name, op, input column and the op's own parameters."""

    index: int
    name: str
    op: str
    input: str
    params: Mapping[str, Any]
    allow_identifier: bool = False

    @property
    def path(self) -> Path_:
        return ("features", self.index)


@dataclass(frozen=True)
class KAnonymitySpec:
    k: int
    quasi_identifiers: tuple[str, ...]


@dataclass(frozen=True)
class FeatureSpec:
    """A validated feature spec: the document, its parsed parts, and where each field was."""

    document: Mapping[str, Any]
    columns: tuple[ColumnSpec, ...]
    features: tuple[FeatureDef, ...]
    k_anonymity: KAnonymitySpec | None
    unconsumed_columns: str
    source: str | None = None
    lines: Mapping[Path_, int] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpec:
        """Read and validate a YAML (or JSON) spec file."""
        path = Path(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise _single(f"cannot read spec file: {exc.strerror}", source=str(path)) from None
        if size > MAX_SPEC_BYTES:
            raise _single(f"spec file is {size} bytes, over the limit of {MAX_SPEC_BYTES}",
                          source=str(path))
        try:
            raw = path.read_bytes()[: MAX_SPEC_BYTES + 1]
        except OSError as exc:
            raise _single(f"cannot read spec file: {exc.strerror}", source=str(path)) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _single(f"spec file is not UTF-8 (byte {exc.start})", source=str(path)) from None
        return cls.from_yaml(text, source=str(path))

    @classmethod
    def from_yaml(cls, text: str, *, source: str | None = None) -> FeatureSpec:
        """Validate YAML text; problems name the field and its line."""
        if len(text.encode("utf-8")) > MAX_SPEC_BYTES:
            raise _single(f"spec text is over the limit of {MAX_SPEC_BYTES} bytes", source=source)
        document, lines = _parse_yaml(text, source)
        return cls._validated(document, lines, source)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any], *, source: str | None = None) -> FeatureSpec:
        """Validate an already-parsed spec; problems name the field (there are no lines)."""
        try:
            encoded = json.dumps(document, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _single(f"spec is not plain JSON data: {exc}", source=source) from None
        if len(encoded) > MAX_SPEC_BYTES:
            raise _single(f"spec is over the limit of {MAX_SPEC_BYTES} bytes", source=source)
        return cls._validated(json.loads(encoded), {}, source)

    @classmethod
    def _validated(cls, document: Any, lines: Mapping[Path_, int],
                   source: str | None) -> FeatureSpec:
        problems = _schema_problems(document, lines)
        if problems:
            raise FeatureSpecError(problems, source=source)
        columns, column_problems = _parse_columns(document["input"]["columns"], lines)
        if column_problems:
            raise FeatureSpecError(column_problems, source=source)
        features = tuple(_parse_feature(i, f) for i, f in enumerate(document["features"]))
        k_doc = document.get("k_anonymity")
        k_anonymity = None if k_doc is None else KAnonymitySpec(
            k=k_doc["k"], quasi_identifiers=tuple(k_doc["quasi_identifiers"]))
        return cls(
            document=_freeze(document),
            columns=columns,
            features=features,
            k_anonymity=k_anonymity,
            unconsumed_columns=document["input"].get("unconsumed_columns", "drop"),
            source=source,
            lines=MappingProxyType(dict(lines)),
        )

    def column(self, name: str) -> ColumnSpec | None:
        for column in self.columns:
            if column.name == name:
                return column
        return None

    def problem(self, path: Sequence[str | int], message: str) -> SpecProblem:
        """A problem at ``path``, with the line of the nearest enclosing field we know."""
        return SpecProblem(tuple(path), message, _line_for(self.lines, tuple(path)))

    def to_json_document(self) -> dict[str, Any]:
        """The spec as plain JSON data (what the fingerprint's canonical form is made from)."""
        return _thaw(self.document)


@cache
def json_schema() -> Mapping[str, Any]:
    """The shipped JSON Schema (package data ``schema.json``)."""
    text = resources.files(__package__).joinpath("schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _schema_problems(document: Any, lines: Mapping[Path_, int]) -> list[SpecProblem]:
    errors = sorted(_validator().iter_errors(document), key=lambda e: _error_order(e, lines))
    problems: list[SpecProblem] = []
    seen: set[tuple[Path_, str]] = set()
    for error in errors:
        for leaf in _leaf_errors(error):
            path = tuple(leaf.absolute_path)
            message = _describe(leaf)
            if (path, message) in seen:
                continue
            seen.add((path, message))
            problems.append(SpecProblem(path, message, _line_for(lines, path)))
    problems = _drop_echoes(problems)
    problems.sort(key=lambda p: (p.line or 0, p.field))
    return problems[:MAX_REPORTED_PROBLEMS]


def _leaf_errors(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """For ``if/then`` failures report what failed inside ``then``, not the wrapper."""
    if error.context:
        best = jsonschema.exceptions.best_match(error.context)
        return [best] if best is not None else [error]
    return [error]


def _drop_echoes(problems: list[SpecProblem]) -> list[SpecProblem]:
    """When an op's own parameters fail, jsonschema also calls them "unevaluated"; report the
    real failure only (a truly unknown field then shows up once the rest is fixed)."""
    real = [p.path for p in problems if "Unevaluated" not in p.message]
    kept = []
    for problem in problems:
        if "Unevaluated" in problem.message:
            if any(path[: len(problem.path)] == problem.path for path in real):
                continue
            listed = ", ".join(repr(n) for n in _quoted_names(problem.message))
            problem = SpecProblem(problem.path, f"unknown field(s) {listed} for this op",
                                  problem.line)
        kept.append(problem)
    return kept


def _quoted_names(message: str) -> list[str]:
    inside = message[message.find("(") + 1: message.rfind(")")]
    return [part.strip().strip("'\"") for part in inside.replace(" were unexpected", "")
            .replace(" was unexpected", "").split(",") if part.strip()]


def _describe(error: jsonschema.ValidationError) -> str:
    message = error.message
    if len(message) > 300:
        message = message[:300] + "..."
    if error.validator == "type" and isinstance(error.instance, bool) and "string" in str(
            error.validator_value):
        message += " (YAML reads unquoted yes/no/on/off/NO as booleans: quote the value)"
    return message


def _error_order(error: jsonschema.ValidationError, lines: Mapping[Path_, int]) -> tuple:
    path = tuple(error.absolute_path)
    return (_line_for(lines, path) or 0, [str(p) for p in path])


def _line_for(lines: Mapping[Path_, int], path: Path_) -> int | None:
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        path = path[:-1]


def _parse_columns(docs: Sequence[Mapping[str, Any]],
                   lines: Mapping[Path_, int]) -> tuple[tuple[ColumnSpec, ...], list[SpecProblem]]:
    columns: list[ColumnSpec] = []
    problems: list[SpecProblem] = []
    seen: set[str] = set()
    for index, doc in enumerate(docs):
        path: Path_ = ("input", "columns", index)
        if doc["name"] in seen:
            problems.append(SpecProblem((*path, "name"), f"column {doc['name']!r} declared twice",
                                        _line_for(lines, (*path, "name"))))
        seen.add(doc["name"])
        try:
            arrow_type = parse_type(doc["type"])
        except UnknownTypeError as exc:
            problems.append(SpecProblem((*path, "type"), str(exc),
                                        _line_for(lines, (*path, "type"))))
            continue
        columns.append(ColumnSpec(
            name=doc["name"], type=arrow_type, type_name=doc["type"],
            nullable=doc.get("nullable", True), identifier=doc.get("identifier", False),
            min=doc.get("min"), max=doc.get("max"), max_length=doc.get("max_length"),
        ))
    return tuple(columns), problems


_FEATURE_COMMON = ("name", "op", "input", "allow_identifier", "description")


def _parse_feature(index: int, doc: Mapping[str, Any]) -> FeatureDef:
    params = {k: v for k, v in doc.items() if k not in _FEATURE_COMMON}
    return FeatureDef(index=index, name=doc["name"], op=doc["op"], input=doc["input"],
                      params=_freeze(params), allow_identifier=doc.get("allow_identifier", False))


# --- YAML with line numbers -------------------------------------------------------------------

def _parse_yaml(text: str, source: str | None) -> tuple[Any, dict[Path_, int]]:
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                line = event.start_mark.line + 1
                raise FeatureSpecError([SpecProblem((), "YAML anchors and aliases are not "
                                                    "allowed in a feature spec", line)],
                                       source=source)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise _single("spec is empty", source=source)
            lines: dict[Path_, int] = {}
            document = _construct(_Walk(loader, lines, source), node, ())
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or "malformed YAML"
        if "'['" in problem or "']'" in problem:
            problem += (" (inside {...} or [...], quote a type with brackets: "
                        "\"timestamp[us, UTC]\")")
        raise FeatureSpecError([SpecProblem((), f"not valid YAML: {problem}", line)],
                               source=source) from None
    return document, lines


@dataclass
class _Walk:
    """State of one YAML walk: the loader that constructs scalars, lines seen, nodes counted."""

    loader: yaml.SafeLoader
    lines: dict[Path_, int]
    source: str | None
    nodes: int = 0


def _construct(walk: _Walk, node: yaml.Node, path: Path_) -> Any:
    """Plain data from a YAML node, recording the line of every path on the way."""
    walk.nodes += 1
    source = walk.source
    line = node.start_mark.line + 1
    if walk.nodes > MAX_SPEC_NODES:
        raise FeatureSpecError([SpecProblem(path, f"spec has more than {MAX_SPEC_NODES} "
                                            "YAML nodes", line)], source=source)
    if len(path) > MAX_SPEC_DEPTH:
        raise FeatureSpecError([SpecProblem(path, f"spec nests deeper than {MAX_SPEC_DEPTH} "
                                            "levels", line)], source=source)
    walk.lines[path] = line
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _construct_scalar(walk, key_node, path)
            if not isinstance(key, str):
                raise FeatureSpecError([SpecProblem(path, f"mapping key {key!r} is not a string",
                                                    key_node.start_mark.line + 1)], source=source)
            if key in result:
                raise FeatureSpecError([SpecProblem((*path, key), "duplicate key",
                                                    key_node.start_mark.line + 1)], source=source)
            result[key] = _construct(walk, value_node, (*path, key))
            walk.lines[(*path, key)] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(walk, item, (*path, i)) for i, item in enumerate(node.value)]
    return _construct_scalar(walk, node, path)


def _construct_scalar(walk: _Walk, node: yaml.Node, path: Path_) -> Any:
    source = walk.source
    if not isinstance(node, yaml.ScalarNode):
        raise FeatureSpecError([SpecProblem(path, "mapping keys must be plain scalars",
                                            node.start_mark.line + 1)], source=source)
    try:
        value = walk.loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise FeatureSpecError([SpecProblem(path, f"bad YAML value: {exc}",
                                            node.start_mark.line + 1)], source=source) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise FeatureSpecError([SpecProblem(path, "numbers must be finite (no .nan / .inf)",
                                            node.start_mark.line + 1)], source=source)
    if not isinstance(value, str | int | float | bool | type(None)):
        raise FeatureSpecError([SpecProblem(path, f"YAML {type(value).__name__} values are not "
                                            "allowed (quote dates and times)",
                                            node.start_mark.line + 1)], source=source)
    return value


def _single(message: str, *, source: str | None) -> FeatureSpecError:
    return FeatureSpecError([SpecProblem((), message)], source=source)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value
