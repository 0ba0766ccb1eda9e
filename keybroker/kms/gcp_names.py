"""Cloud KMS names and checksums: KEK URIs, CryptoKey resource names, versions, CRC32C.

``gcp-kms://projects/P/locations/L/keyRings/R/cryptoKeys/K`` is parsed into a ``GcpKeyName``
(bounded in length, each segment checked against Cloud KMS's own resource-id rules) and a
KEK's location is checked against the residency region it serves. ``crc32c`` is the checksum
Cloud KMS's data-integrity fields carry. This module makes no Cloud KMS calls and maps no
service errors (``keybroker.kms.gcp_errors`` does); it never sees key bytes.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from keybroker.kms.base import KeyNotFoundError, KmsError

__all__ = [
    "GCP_KMS_SCHEME",
    "VERSION_PATTERN",
    "GcpKeyName",
    "KeyLocationError",
    "check_location",
    "checked_version",
    "crc32c",
    "parse_gcp_kek_uri",
]

GCP_KMS_SCHEME = "gcp-kms"
MAX_KEK_URI_CHARS = 512

_PROJECT = r"[a-z0-9][a-z0-9.:-]{0,99}"  # includes domain-scoped ids (example.com:project)
_LOCATION = r"[a-z0-9][a-z0-9-]{0,62}"
_RESOURCE_ID = r"[a-zA-Z0-9_-]{1,63}"
_KEY_NAME = re.compile(
    rf"^projects/(?P<project>{_PROJECT})/locations/(?P<location>{_LOCATION})"
    rf"/keyRings/(?P<key_ring>{_RESOURCE_ID})/cryptoKeys/(?P<crypto_key>{_RESOURCE_ID})$"
)
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,18}$")


class KeyLocationError(KmsError):
    """A KEK's location is not one the residency region it serves may use."""


def crc32c(data: bytes) -> int:
    """The CRC32C of ``data`` as Cloud KMS expects it (``google-crc32c``, the [gcp] extra)."""
    import google_crc32c

    return int(google_crc32c.value(bytes(data)))


@dataclass(frozen=True)
class GcpKeyName:
    """The parts of a Cloud KMS CryptoKey resource name."""

    project: str
    location: str
    key_ring: str
    crypto_key: str

    @property
    def resource_name(self) -> str:
        return (
            f"projects/{self.project}/locations/{self.location}"
            f"/keyRings/{self.key_ring}/cryptoKeys/{self.crypto_key}"
        )

    @property
    def uri(self) -> str:
        return f"{GCP_KMS_SCHEME}://{self.resource_name}"

    def version_name(self, version: str) -> str:
        return f"{self.resource_name}/cryptoKeyVersions/{version}"

    def version_in(self, version_name: str) -> str | None:
        """The version number in a CryptoKeyVersion name of this key; None for any other name."""
        prefix = f"{self.resource_name}/cryptoKeyVersions/"
        if not version_name.startswith(prefix):
            return None
        version = version_name[len(prefix) :]
        return version if VERSION_PATTERN.match(version) else None


def parse_gcp_kek_uri(uri: str) -> GcpKeyName:
    """Split a ``gcp-kms://projects/.../cryptoKeys/K`` URI; KeyNotFoundError when malformed."""
    prefix = f"{GCP_KMS_SCHEME}://"
    if not isinstance(uri, str) or len(uri) > MAX_KEK_URI_CHARS or not uri.startswith(prefix):
        raise KeyNotFoundError(
            f"KEK URI {str(uri)[:80]!r}: expected {prefix}projects/P/locations/L/keyRings/R"
            "/cryptoKeys/K"
        )
    match = _KEY_NAME.match(uri[len(prefix) :])
    if match is None:
        raise KeyNotFoundError(
            f"KEK URI {uri!r}: expected {prefix}projects/P/locations/L/keyRings/R/cryptoKeys/K "
            "(a CryptoKey, not a version)"
        )
    return GcpKeyName(**match.groupdict())


def checked_version(key: GcpKeyName, version: str) -> str:
    """``version`` when it is a Cloud KMS version number; KeyNotFoundError otherwise."""
    if not isinstance(version, str) or not VERSION_PATTERN.match(version):
        raise KeyNotFoundError(
            f"KEK {key.uri}: version {str(version)[:40]!r} is not a Cloud KMS version number"
        )
    return version


def check_location(
    kek_uri: str, region: str, region_locations: Mapping[str, Collection[str]]
) -> None:
    """Refuse a KEK whose key ring lives outside the locations allowed for ``region``.

    ``region_locations`` maps each residency region the broker serves to the Cloud KMS
    locations allowed for it, e.g. ``{"eu": {"europe-west1", "europe-west3", "eu"}}``.
    A region missing from the map allows nothing: fail closed.
    """
    location = parse_gcp_kek_uri(kek_uri).location
    allowed = region_locations.get(region)
    if not allowed:
        raise KeyLocationError(f"region {region!r}: no Cloud KMS locations are allowed for it")
    if location not in allowed:
        raise KeyLocationError(
            f"KEK {kek_uri} is in location {location!r}, which region {region!r} does not "
            f"allow (allowed: {', '.join(sorted(allowed))})"
        )
