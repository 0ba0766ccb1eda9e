"""The fingerprint of a feature spec: hex SHA-256 of one canonical encoding of it.

What it does: encodes the validated spec document as canonical JSON (keys sorted, no
insignificant whitespace, UTF-8, no NaN; integers and floats keep their distinction, so
``1`` and ``1.0`` differ), prefixed by a domain label that carries ``SEMANTICS_VERSION``, and
hashes it. The same spec gives the same fingerprint however its YAML is laid out (key order,
comments, quoting, flow or block style); any change to any value gives another one. The batch
processor writes it into output envelope headers (as the 32-byte ``schema_fingerprint``) and
the audit ledger.

What it does not: keys are named in a spec, never contained in it, so no secret goes into the
fingerprint. ``SEMANTICS_VERSION`` is bumped whenever an op's meaning changes, so that outputs
made under different meanings never share a fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

SEMANTICS_VERSION = 1
DOMAIN = f"sealbeam/feature-spec/v{SEMANTICS_VERSION}\n".encode("ascii")


def canonical_bytes(document: Mapping[str, Any]) -> bytes:
    """The canonical encoding that the fingerprint hashes."""
    body = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return DOMAIN + body.encode("utf-8")


def spec_fingerprint(document: Mapping[str, Any]) -> str:
    """Lowercase hex SHA-256 of ``canonical_bytes(document)``."""
    return hashlib.sha256(canonical_bytes(document)).hexdigest()
