"""The named-key file's header: a JSON object of its own format and version, else a
KeyringFormatError naming the field (the same check as the keyring's)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from keybroker.kms.base import KeyringFormatError
from keybroker.kms.named_keys import NAMED_KEYS_FORMAT, NamedKeyStore


def _store_file(path: Path, document: object) -> Path:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(json.dumps(document).encode("utf-8"))
    return path


def test_an_empty_store_of_the_right_format_opens(tmp_path: Path) -> None:
    path = _store_file(tmp_path / "named.json",
                       {"format": NAMED_KEYS_FORMAT, "format_version": 1, "keys": {}})
    assert NamedKeyStore.open(path).names() == ()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], r"^named keys: expected a JSON object$"),
        ({"format": "other", "format_version": 1, "keys": {}},
         rf"^format: expected '{NAMED_KEYS_FORMAT}'$"),
        ({"format": NAMED_KEYS_FORMAT, "format_version": 2, "keys": {}},
         r"^format_version: expected 1$"),
    ],
)
def test_a_wrong_header_names_the_field(tmp_path: Path, document: object, message: str) -> None:
    path = _store_file(tmp_path / "named.json", document)
    with pytest.raises(KeyringFormatError, match=message):
        NamedKeyStore.open(path)
