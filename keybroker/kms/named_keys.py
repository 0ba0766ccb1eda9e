"""The store of named keys (``pseudonym/acme`` ...), kept wrapped by a KMS in a JSON file.

A named key is a long-lived secret that is not a data key: for example a tenant's HMAC key
for pseudonymizing customer ids, which must be the same for every batch. The file holds
only wrapped keys (the KMS ciphertext plus the KEK reference); the associated data of each
wrap binds the key's name, so a wrapped key moved under another name does not unwrap.
This module does not unwrap by itself and does not decide who may have a key.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import threading
from collections.abc import Mapping
from pathlib import Path

from envelope.keys import KeyReference, WrappedKey
from keybroker.kms.base import KeyNotFoundError, KeyringFormatError, KmsError
from keybroker.kms.files import read_private_file, write_private_file
from keybroker.kms.local_file import check_file_format

__all__ = [
    "NAMED_KEYS_FORMAT",
    "NamedKeyStore",
    "named_key_aad",
    "validate_key_name",
]

NAMED_KEYS_FORMAT = "sealbeam-named-keys"
NAMED_KEYS_FORMAT_VERSION = 1
MAX_NAMED_KEYS_BYTES = 1 << 20
MAX_KEY_NAME_LENGTH = 128
MAX_WRAPPED_BYTES = 2048
NAMED_KEY_AAD_LABEL = b"sealbeam/named-key/v1"
_SEGMENT = r"[a-z0-9][a-z0-9._-]{0,63}"
_KEY_NAME = re.compile(rf"^{_SEGMENT}(/{_SEGMENT}){{0,3}}$")


def validate_key_name(name: object) -> str:
    """A key name is 1-4 '/'-separated lowercase segments, e.g. ``pseudonym/acme``."""
    if not isinstance(name, str) or len(name) > MAX_KEY_NAME_LENGTH or not _KEY_NAME.match(name):
        raise KeyNotFoundError(
            f"not a valid key name: {name!r} (lowercase segments separated by '/')"
        )
    return name


def named_key_aad(name: str) -> bytes:
    """Associated data bound to a named key's wrap: label and name, each length-prefixed."""
    fields = (NAMED_KEY_AAD_LABEL, validate_key_name(name).encode("ascii"))
    return b"".join(struct.pack(">I", len(field)) + field for field in fields)


class NamedKeyStore:
    """Name -> wrapped key, persisted to a 0600 JSON file on every change. Thread-safe."""

    def __init__(self, path: Path, keys: Mapping[str, WrappedKey] | None = None) -> None:
        self._path = Path(path)
        self._keys: dict[str, WrappedKey] = dict(keys or {})
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> NamedKeyStore:
        content = read_private_file(Path(path), MAX_NAMED_KEYS_BYTES)
        try:
            document = json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise KeyringFormatError(f"named keys {path}: not UTF-8 JSON ({error})") from None
        return cls(path, _parse_named_keys(document))

    @property
    def path(self) -> Path:
        return self._path

    def names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._keys))

    def wrapped_key(self, name: str) -> WrappedKey:
        validate_key_name(name)
        with self._lock:
            try:
                return self._keys[name]
            except KeyError:
                raise KeyNotFoundError(f"no named key {name!r}") from None

    def put(self, name: str, wrapped: WrappedKey) -> None:
        """Store (or replace) a wrapped named key and persist the file."""
        validate_key_name(name)
        if not 1 <= len(wrapped.ciphertext) <= MAX_WRAPPED_BYTES:
            raise KmsError(f"wrapped key for {name!r}: expected 1..{MAX_WRAPPED_BYTES} bytes")
        with self._lock:
            previous = self._keys.get(name)
            self._keys[name] = wrapped
            try:
                self._save()
            except BaseException:
                if previous is None:
                    del self._keys[name]
                else:
                    self._keys[name] = previous
                raise

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        document = {
            "format": NAMED_KEYS_FORMAT,
            "format_version": NAMED_KEYS_FORMAT_VERSION,
            "keys": {
                name: {
                    "kek_uri": wrapped.kek.uri,
                    "kek_version": wrapped.kek.version,
                    "wrapped": base64.b64encode(wrapped.ciphertext).decode("ascii"),
                }
                for name, wrapped in sorted(self._keys.items())
            },
        }
        write_private_file(self._path, json.dumps(document, indent=2).encode("utf-8") + b"\n")


def _parse_named_keys(document: object) -> dict[str, WrappedKey]:
    document = check_file_format(document, "named keys", NAMED_KEYS_FORMAT,
                                 NAMED_KEYS_FORMAT_VERSION)
    raw_keys = document.get("keys")
    if not isinstance(raw_keys, dict):
        raise KeyringFormatError("keys: expected an object")
    keys: dict[str, WrappedKey] = {}
    for name, entry in raw_keys.items():
        field = f"keys[{name!r}]"
        try:
            validate_key_name(name)
        except KeyNotFoundError as error:
            raise KeyringFormatError(f"{field}: {error}") from None
        if not isinstance(entry, dict):
            raise KeyringFormatError(f"{field}: expected an object")
        kek_uri, kek_version, encoded = (
            entry.get("kek_uri"),
            entry.get("kek_version"),
            entry.get("wrapped"),
        )
        if not isinstance(kek_uri, str) or not 1 <= len(kek_uri) <= 512:
            raise KeyringFormatError(f"{field}.kek_uri: expected a KEK URI string")
        if not isinstance(kek_version, str) or not 1 <= len(kek_version) <= 128:
            raise KeyringFormatError(f"{field}.kek_version: expected a version string")
        if not isinstance(encoded, str) or len(encoded) > (MAX_WRAPPED_BYTES * 4) // 3 + 4:
            raise KeyringFormatError(f"{field}.wrapped: expected base64 of a wrapped key")
        try:
            ciphertext = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise KeyringFormatError(f"{field}.wrapped: not valid base64") from None
        if not ciphertext:
            raise KeyringFormatError(f"{field}.wrapped: empty")
        keys[name] = WrappedKey(KeyReference(kek_uri, kek_version), ciphertext)
    return keys
