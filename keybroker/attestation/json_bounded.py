"""The one JSON loader for untrusted input: bounded in size and depth, duplicate keys refused.

Python's ``json`` recurses once per nesting level, so ``[[[[...]]]]`` a few thousand deep
raises ``RecursionError`` (neither a ``ValueError`` nor a typed error: a 500 and a
traceback). ``load_bounded_json`` measures the nesting before parsing, with a scan that
does not recurse, and refuses a document deeper than ``max_depth``; it also refuses a
document over ``max_bytes``, invalid UTF-8, duplicate object keys (two parsers could
disagree about which one counts), the non-JSON constants ``NaN``/``Infinity`` and
integers too long to convert. Every refusal is the caller's ``error`` type with a message
that names ``what`` was being read and never quotes the input.

Used by every loader of evidence, endorsements, tokens, JWKS and collateral in
keybroker/attestation and by the worker's evidence and release-token readers in
enclave_workers (this module imports nothing of ours, so both may use it). It parses; it
does not interpret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "JsonBoundsError",
    "load_bounded_json",
    "load_bounded_object",
    "nesting_depth",
]

DEFAULT_MAX_DEPTH = 32
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")


class JsonBoundsError(ValueError):
    """A JSON document is too large, too deep, malformed or has duplicate keys."""


def nesting_depth(text: str, stop_above: int | None = None) -> int:
    """How deeply arrays and objects nest in ``text`` (strings skipped), without recursion.

    Linear regex passes, no Python loop over characters: drop escapes, then strings, then
    everything but brackets; then each pass removes the innermost ``[]``/``{}`` pairs, so
    the number of passes is the depth. Unbalanced brackets count as deeper than
    ``stop_above`` (where the scan stops); the parser refuses them anyway.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    depth = 0
    while brackets:
        brackets, removed = _INNERMOST.subn("", brackets)
        if removed == 0:  # unbalanced or mismatched
            return depth + 1 if stop_above is None else max(depth, stop_above) + 1
        depth += 1
        if stop_above is not None and depth > stop_above:
            break
    return depth


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JsonBoundsError("duplicate JSON key")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise JsonBoundsError(f"{name} is not JSON")


def load_bounded_json(
    data: bytes | bytearray | memoryview | str,
    *,
    what: str,
    max_bytes: int,
    max_depth: int = DEFAULT_MAX_DEPTH,
    error: Callable[[str], Exception] = JsonBoundsError,
) -> Any:
    """Parse ``data`` as JSON within the bounds, or raise ``error`` naming ``what``."""
    size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
    if size > max_bytes:
        raise error(f"{what}: {size} bytes exceeds the limit (over the {max_bytes}-byte bound)")
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise error(f"{what}: not valid JSON (not UTF-8)") from None
    if (
        text.count("[") + text.count("{") > max_depth
        and nesting_depth(text, stop_above=max_depth) > max_depth
    ):
        raise error(f"{what}: nested more than {max_depth} levels deep")
    try:
        return json.loads(
            text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant
        )
    except JsonBoundsError as problem:
        raise error(f"{what}: {problem}") from None
    except (ValueError, RecursionError) as problem:
        where = f" at character {problem.pos}" if isinstance(problem, json.JSONDecodeError) else ""
        raise error(f"{what}: not valid JSON{where}") from None


def load_bounded_object(
    data: bytes | bytearray | memoryview | str,
    *,
    what: str,
    max_bytes: int,
    max_depth: int = DEFAULT_MAX_DEPTH,
    error: Callable[[str], Exception] = JsonBoundsError,
) -> dict[str, Any]:
    """``load_bounded_json`` that also requires a JSON object at the top."""
    document = load_bounded_json(
        data, what=what, max_bytes=max_bytes, max_depth=max_depth, error=error
    )
    if not isinstance(document, dict):
        raise error(f"{what}: not a JSON object")
    return document
