"""YAML to plain data, remembering the line of every field, for messages that point at a line.

What it does: ``load_with_lines(text)`` returns the document (dicts, lists, strings, numbers,
booleans, None) and a map from each field's path (``("regions", "eu", "sink")``) to its
1-based line; refuses anchors/aliases, duplicate keys, non-string keys and YAML-only types
(dates), each as a ``YamlProblem`` with its line.

What it does not: validate the document's shape (the residency map's JSON Schema does).
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["FieldPath", "YamlProblem", "format_path", "load_with_lines"]

FieldPath = tuple[str | int, ...]
MAX_NODES = 50_000
MAX_DEPTH = 12


class YamlProblem(ValueError):
    """The text is not a plain YAML document; ``line`` says where (when known)."""

    def __init__(self, message: str, line: int | None, path: FieldPath = ()) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.path = path


def format_path(path: FieldPath) -> str:
    """``("regions", "eu", "locations", 1)`` -> ``regions.eu.locations[1]``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(document)"


def load_with_lines(text: str) -> tuple[Any, dict[FieldPath, int]]:
    """Parse ``text``; see the module docstring."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise YamlProblem("YAML anchors and aliases are not allowed",
                                  event.start_mark.line + 1)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise YamlProblem("the document is empty", None)
            lines: dict[FieldPath, int] = {}
            counter = [0]
            return _construct(loader, node, (), lines, counter), lines
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise YamlProblem(f"not valid YAML: {getattr(exc, 'problem', None) or exc}",
                          mark.line + 1 if mark is not None else None) from None


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: FieldPath,
               lines: dict[FieldPath, int], counter: list[int]) -> Any:
    counter[0] += 1
    line = node.start_mark.line + 1
    if counter[0] > MAX_NODES or len(path) > MAX_DEPTH:
        raise YamlProblem(f"the document is larger than {MAX_NODES} nodes or deeper than "
                          f"{MAX_DEPTH} levels", line, path)
    lines.setdefault(path, line)
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(loader, key_node, path)
            if not isinstance(key, str):
                raise YamlProblem(f"mapping key {key!r} is not a string",
                                  key_node.start_mark.line + 1, path)
            if key in result:
                raise YamlProblem(f"duplicate key {key!r}", key_node.start_mark.line + 1,
                                  (*path, key))
            lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = _construct(loader, value_node, (*path, key), lines, counter)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, item, (*path, index), lines, counter)
                for index, item in enumerate(node.value)]
    return _scalar(loader, node, path)


def _scalar(loader: yaml.SafeLoader, node: yaml.Node, path: FieldPath) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise YamlProblem("mapping keys must be plain scalars", node.start_mark.line + 1, path)
    value = loader.construct_object(node, deep=True)
    if not isinstance(value, str | int | float | bool | type(None)):
        raise YamlProblem(f"YAML {type(value).__name__} values are not allowed (quote it)",
                          node.start_mark.line + 1, path)
    return value
