"""Readable reasons from cryptography's parse errors, without the Rust debug text they carry.

cryptography's ASN.1 errors read ``error parsing asn1 value: ParseError { kind:
UnexpectedTag { actual: Tag { value: 2, ... } }, location: ["Certificate::tbs_cert"] }``:
the debug print of a Rust structure, which should not reach an HTTP reason or a command's
error line. ``library_reason`` keeps the leading phrase and the location path, so
``error parsing asn1 value (at Certificate::tbs_cert)``. It formats text; it decides nothing.
"""

from __future__ import annotations

import re

__all__ = ["library_reason"]

_DEBUG_STRUCT = re.compile(r"[:\s]*\b[A-Z][A-Za-z0-9_]*\s*\{")
_LOCATION = re.compile(r'location:\s*\[\s*"([A-Za-z0-9_:]{1,80})"')
MAX_REASON = 160


def library_reason(error: BaseException) -> str:
    """A short reason for ``error``: its message up to any Rust debug structure."""
    text = " ".join(str(error).split())
    match = _DEBUG_STRUCT.search(text)
    if match is None:
        return text[:MAX_REASON] or type(error).__name__
    head = text[: match.start()].strip(" :") or type(error).__name__
    location = _LOCATION.search(text)
    where = f" (at {location.group(1)})" if location else ""
    return f"{head[:MAX_REASON]}{where}"
