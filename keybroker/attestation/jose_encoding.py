"""Decoding for JOSE documents: bounded, duplicate-free JSON objects and the base64url alphabet.

Shared by the JWKS key sets (``keybroker.attestation.jwks``) and the token checks
(``keybroker.attestation.jwt_tokens``) so that both refuse the same inputs: documents over
``MAX_DOCUMENT_SIZE``, JSON that is not UTF-8, repeats a key or nests deeper than
``MAX_JSON_DEPTH``. This module fetches nothing and checks no signatures.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["B64URL", "MAX_DOCUMENT_SIZE", "MAX_JSON_DEPTH", "load_json_object"]

MAX_DOCUMENT_SIZE = 256 * 1024
MAX_JSON_DEPTH = 16
B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def _too_deep(value: Any, level: int = 0) -> bool:
    if level > MAX_JSON_DEPTH:
        return True
    if isinstance(value, dict):
        return any(_too_deep(item, level + 1) for item in value.values())
    if isinstance(value, list):
        return any(_too_deep(item, level + 1) for item in value)
    return False


def load_json_object(data: bytes, what: str, error: type[Exception]) -> dict[str, Any]:
    """A bounded, duplicate-free JSON object, or ``error`` naming ``what``."""
    if len(data) > MAX_DOCUMENT_SIZE:
        raise error(f"{what} is {len(data)} bytes, over the {MAX_DOCUMENT_SIZE}-byte limit")
    try:
        document = json.loads(bytes(data).decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"{what} is not a JSON document ({exc})") from None
    if not isinstance(document, dict):
        raise error(f"{what} is not a JSON object")
    if _too_deep(document):
        raise error(f"{what} is nested too deeply")
    return document
