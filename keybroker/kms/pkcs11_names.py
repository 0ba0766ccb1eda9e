"""PKCS#11 KEK names: ``pkcs11://<token-label>/<key-label>`` URIs and their labels.

Labels are percent-encoded in the URI where they hold ``/``, ``%`` or non-ASCII, bounded in
length (a token label by CK_TOKEN_INFO's 32 bytes) and free of control characters; a
malformed URI raises ``KeyNotFoundError`` naming what was wrong. This module does not touch
a token or a PKCS#11 module (``keybroker.kms.pkcs11`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from keybroker.kms.base import KeyNotFoundError

__all__ = [
    "MAX_KEY_LABEL_BYTES",
    "MAX_TOKEN_LABEL_BYTES",
    "PKCS11_SCHEME",
    "Pkcs11KeyName",
    "parse_pkcs11_kek_uri",
    "pkcs11_kek_uri",
]

PKCS11_SCHEME = "pkcs11"
MAX_TOKEN_LABEL_BYTES = 32  # CK_TOKEN_INFO.label is 32 bytes, blank padded
MAX_KEY_LABEL_BYTES = 128
MAX_KEK_URI_CHARS = 1024


@dataclass(frozen=True)
class Pkcs11KeyName:
    """A KEK named by token label and key label."""

    token_label: str
    key_label: str

    @property
    def uri(self) -> str:
        return pkcs11_kek_uri(self.token_label, self.key_label)


def _check_label(field: str, label: str, maximum: int) -> str:
    if not isinstance(label, str) or not label:
        raise KeyNotFoundError(f"{field}: expected a non-empty label")
    encoded = label.encode("utf-8", errors="replace")
    if len(encoded) > maximum:
        raise KeyNotFoundError(f"{field}: {len(encoded)} bytes, at most {maximum}")
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in label):
        raise KeyNotFoundError(f"{field}: control characters are not allowed")
    return label


def pkcs11_kek_uri(token_label: str, key_label: str) -> str:
    """The KEK URI for a token and key label, percent-encoding what needs it."""
    _check_label("token label", token_label, MAX_TOKEN_LABEL_BYTES)
    _check_label("key label", key_label, MAX_KEY_LABEL_BYTES)
    return f"{PKCS11_SCHEME}://{quote(token_label, safe='')}/{quote(key_label, safe='')}"


def parse_pkcs11_kek_uri(uri: str) -> Pkcs11KeyName:
    """Split ``pkcs11://<token-label>/<key-label>``; KeyNotFoundError when malformed."""
    prefix = f"{PKCS11_SCHEME}://"
    if not isinstance(uri, str) or len(uri) > MAX_KEK_URI_CHARS or not uri.startswith(prefix):
        raise KeyNotFoundError(f"KEK URI {str(uri)[:80]!r}: expected {prefix}<token>/<key>")
    parts = uri[len(prefix) :].split("/")
    if len(parts) != 2 or not all(parts) or any(c in uri for c in "?#"):
        raise KeyNotFoundError(f"KEK URI {uri!r}: expected {prefix}<token-label>/<key-label>")
    try:
        token_label, key_label = (unquote(part, errors="strict") for part in parts)
    except UnicodeDecodeError:
        raise KeyNotFoundError(f"KEK URI {uri!r}: percent-encoding is not UTF-8") from None
    return Pkcs11KeyName(
        token_label=_check_label("token label", token_label, MAX_TOKEN_LABEL_BYTES),
        key_label=_check_label("key label", key_label, MAX_KEY_LABEL_BYTES),
    )
