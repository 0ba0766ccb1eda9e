"""Decoding for JOSE documents: bounded, duplicate-free JSON objects and the base64url alphabet.

Shared by the JWKS key sets (``keybroker.attestation.jwks``) and the token checks
(``keybroker.attestation.jwt_tokens``) so that both refuse the same inputs: documents over
``MAX_DOCUMENT_SIZE``, JSON that is not UTF-8, repeats a key or nests deeper than
``MAX_JSON_DEPTH``. This module fetches nothing and checks no signatures.
"""

from __future__ import annotations

import re
from typing import Any

from keybroker.attestation.json_bounded import load_bounded_object

__all__ = ["B64URL", "MAX_DOCUMENT_SIZE", "MAX_JSON_DEPTH", "load_json_object"]

MAX_DOCUMENT_SIZE = 256 * 1024
MAX_JSON_DEPTH = 16
B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def load_json_object(data: bytes, what: str, error: type[Exception]) -> dict[str, Any]:
    """A bounded, duplicate-free JSON object, or ``error`` naming ``what`` (json_bounded)."""
    return load_bounded_object(
        data, what=what, max_bytes=MAX_DOCUMENT_SIZE, max_depth=MAX_JSON_DEPTH, error=error
    )
