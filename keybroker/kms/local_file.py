"""The local keyring's file format: parsing and writing ``keyring.json``, and KEK URIs.

Parsing validates every field and names the first bad one (``keks['local://...'].primary``);
writing produces the same document. This module holds no lock and does no I/O: the
``LocalKeyring`` in ``local.py`` reads and writes the file and does the cryptography.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keybroker.kms.base import KeyNotFoundError, KeyringFormatError

__all__ = [
    "KEYRING_FORMAT",
    "KEYRING_FORMAT_VERSION",
    "Kek",
    "KekVersion",
    "check_file_format",
    "keyring_document",
    "local_kek_uri",
    "new_version",
    "parse_keyring",
    "parse_local_kek_uri",
]

KEYRING_FORMAT = "sealbeam-local-keyring"
KEYRING_FORMAT_VERSION = 1
KEK_BYTES = 32
_NAME = r"[a-z0-9][a-z0-9-]{0,31}"
_KEK_URI = re.compile(rf"^local://keyring/(?P<region>{_NAME})/(?P<name>{_NAME})$")
_VERSION = re.compile(r"^[1-9][0-9]{0,8}$")
_STATES = ("enabled", "disabled", "destroyed")


def local_kek_uri(region: str, name: str = "kek-1") -> str:
    """The URI of a local KEK; validates both parts."""
    uri = f"local://keyring/{region}/{name}"
    parse_local_kek_uri(uri)
    return uri


def parse_local_kek_uri(uri: str) -> tuple[str, str]:
    """Split ``local://keyring/<region>/<name>`` into (region, name)."""
    match = _KEK_URI.match(uri) if isinstance(uri, str) and len(uri) <= 128 else None
    if match is None:
        raise KeyNotFoundError(
            f"not a local KEK URI: {uri!r} (expected local://keyring/<region>/<name>, "
            "lowercase letters, digits and '-')"
        )
    return match["region"], match["name"]


@dataclass
class KekVersion:
    """One version of a KEK; ``material`` is None once destroyed and never shown in repr."""

    state: str
    created_at: str
    material: bytes | None = field(repr=False)


@dataclass
class Kek:
    """A KEK: its region, primary version and versions by number."""

    region: str
    primary: str
    versions: dict[str, KekVersion]


def keyring_document(keks: Mapping[str, Kek], region_keks: Mapping[str, str]) -> dict[str, object]:
    """The JSON document of a keyring (material base64, destroyed material null)."""
    return {
        "format": KEYRING_FORMAT,
        "format_version": KEYRING_FORMAT_VERSION,
        "regions": dict(sorted(region_keks.items())),
        "keks": {
            uri: {
                "region": kek.region,
                "primary": kek.primary,
                "versions": {
                    number: {
                        "state": entry.state,
                        "created_at": entry.created_at,
                        "material": None
                        if entry.material is None
                        else base64.b64encode(entry.material).decode("ascii"),
                    }
                    for number, entry in sorted(kek.versions.items(), key=lambda i: int(i[0]))
                },
            }
            for uri, kek in sorted(keks.items())
        },
    }


def new_version() -> KekVersion:
    return KekVersion(
        state="enabled",
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        material=AESGCM.generate_key(bit_length=256),
    )


def check_file_format(document: object, what: str, name: str, version: int) -> dict:
    """``document`` when it is a JSON object whose ``format`` and ``format_version`` are
    ``name`` and ``version`` (the header of the keyring and of the named-key file)."""
    if not isinstance(document, dict):
        raise KeyringFormatError(f"{what}: expected a JSON object")
    if document.get("format") != name:
        raise KeyringFormatError(f"format: expected {name!r}")
    if document.get("format_version") != version:
        raise KeyringFormatError(f"format_version: expected {version}")
    return document


def parse_keyring(document: object) -> tuple[dict[str, Kek], dict[str, str]]:
    """Validate the keyring JSON, naming the first bad field."""
    document = check_file_format(document, "keyring", KEYRING_FORMAT, KEYRING_FORMAT_VERSION)
    raw_keks = document.get("keks")
    if not isinstance(raw_keks, dict) or not raw_keks:
        raise KeyringFormatError("keks: expected a non-empty object")
    keks = {uri: _parse_kek(uri, raw) for uri, raw in raw_keks.items()}
    raw_regions = document.get("regions")
    if not isinstance(raw_regions, dict) or not raw_regions:
        raise KeyringFormatError("regions: expected a non-empty object of region -> KEK URI")
    region_keks: dict[str, str] = {}
    for region, uri in raw_regions.items():
        if uri not in keks:
            raise KeyringFormatError(f"regions[{region!r}]: KEK {uri!r} is not in keks")
        if keks[uri].region != region:
            raise KeyringFormatError(f"regions[{region!r}]: KEK {uri!r} belongs to another region")
        region_keks[region] = uri
    return keks, region_keks


def _parse_kek(uri: object, raw: object) -> Kek:
    field = f"keks[{uri!r}]"
    if not isinstance(uri, str):
        raise KeyringFormatError(f"{field}: KEK URI must be a string")
    try:
        region, _name = parse_local_kek_uri(uri)
    except KeyNotFoundError as error:
        raise KeyringFormatError(f"{field}: {error}") from None
    if not isinstance(raw, dict):
        raise KeyringFormatError(f"{field}: expected an object")
    if raw.get("region") != region:
        raise KeyringFormatError(f"{field}.region: expected {region!r} (from the URI)")
    versions_raw = raw.get("versions")
    if not isinstance(versions_raw, dict) or not versions_raw:
        raise KeyringFormatError(f"{field}.versions: expected a non-empty object")
    versions = {
        number: _parse_version(f"{field}.versions[{number!r}]", number, entry)
        for number, entry in versions_raw.items()
    }
    primary = raw.get("primary")
    if not isinstance(primary, str) or primary not in versions:
        raise KeyringFormatError(f"{field}.primary: expected one of its versions")
    if versions[primary].state != "enabled":
        raise KeyringFormatError(f"{field}.primary: version {primary} is not enabled")
    return Kek(region=region, primary=primary, versions=versions)


def _parse_version(field: str, number: object, raw: object) -> KekVersion:
    if not isinstance(number, str) or not _VERSION.match(number):
        raise KeyringFormatError(f"{field}: version must be a positive decimal number")
    if not isinstance(raw, Mapping):
        raise KeyringFormatError(f"{field}: expected an object")
    state = raw.get("state")
    if state not in _STATES:
        raise KeyringFormatError(f"{field}.state: expected one of {', '.join(_STATES)}")
    created_at = raw.get("created_at")
    if not isinstance(created_at, str) or len(created_at) > 64:
        raise KeyringFormatError(f"{field}.created_at: expected a timestamp string")
    encoded = raw.get("material")
    if state == "destroyed":
        if encoded is not None:
            raise KeyringFormatError(f"{field}.material: must be null for a destroyed version")
        return KekVersion(state=state, created_at=created_at, material=None)
    if not isinstance(encoded, str) or len(encoded) > 64:
        raise KeyringFormatError(f"{field}.material: expected base64 of {KEK_BYTES} bytes")
    try:
        material = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise KeyringFormatError(f"{field}.material: not valid base64") from None
    if len(material) != KEK_BYTES:
        raise KeyringFormatError(f"{field}.material: expected {KEK_BYTES} bytes")
    return KekVersion(state=state, created_at=created_at, material=material)
