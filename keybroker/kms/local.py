"""The embedded KMS: a JSON keyring file of per-region KEKs with numbered versions.

Each KEK (``local://keyring/<region>/kek-1``) has versions "1", "2", ...; new wraps use the
primary version, ``rotate`` adds a version and makes it primary, and older versions still
unwrap until they are disabled or destroyed. A DEK is wrapped with AES-256-GCM under a
random 96-bit nonce, with associated data binding the KEK URI, the KEK version and the
caller's associated data (docs/PROTOCOL.md, section 9). The file is written
atomically with mode 0600 and refused when group or other may read it.

This is the development and single-host backend: the key material sits in a file on the
broker's disk. It does not talk to any cloud and does not decide who may unwrap (the
release policy does).
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from envelope.keys import KeyReference, WrappedKey
from keybroker.kms.base import (
    KeyDestroyedError,
    KeyNotFoundError,
    KeyringExistsError,
    KeyringFormatError,
    KmsError,
    KmsPermissionError,
    KmsUnwrapError,
)
from keybroker.kms.files import read_private_file, write_private_file
from keybroker.kms.local_file import (
    KEYRING_FORMAT,
    Kek,
    KekVersion,
    keyring_document,
    local_kek_uri,
    new_version,
    parse_keyring,
    parse_local_kek_uri,
)

__all__ = [
    "KEYRING_FORMAT",
    "LOCAL_SCHEME",
    "MAX_KEYRING_BYTES",
    "MAX_WRAPPED_SECRET_BYTES",
    "LocalKeyring",
    "local_kek_uri",
    "parse_local_kek_uri",
]

LOCAL_SCHEME = "local"
MAX_KEYRING_BYTES = 1 << 20
MAX_WRAPPED_SECRET_BYTES = 1024
NONCE_BYTES = 12
TAG_BYTES = 16
WRAP_MAGIC = b"SBLW"
WRAP_FORMAT_VERSION = 1
WRAP_HEADER_BYTES = len(WRAP_MAGIC) + 1 + NONCE_BYTES
WRAP_AAD_LABEL = b"sealbeam/local-kms/wrap/v1"


def wrap_associated_data(kek_uri: str, version: str, aad: bytes) -> bytes:
    """AES-GCM associated data: label, KEK URI, KEK version, caller aad, each length-prefixed."""
    fields = (WRAP_AAD_LABEL, kek_uri.encode("utf-8"), version.encode("ascii"), bytes(aad))
    return b"".join(struct.pack(">I", len(field)) + field for field in fields)


class LocalKeyring:
    """A keyring file of per-region KEKs. Thread-safe; every change is persisted at once."""

    scheme = LOCAL_SCHEME

    def __init__(self, path: Path, keks: dict[str, Kek], region_keks: dict[str, str]) -> None:
        self._path = Path(path)
        self._keks = keks
        self._region_keks = region_keks
        self._lock = threading.RLock()

    # -- opening and creating -------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, regions: Iterable[str], *, overwrite: bool = False) -> LocalKeyring:
        """Create a keyring with one KEK (``kek-1``, version 1) per region."""
        path = Path(path)
        region_list = list(regions)
        if not region_list:
            raise KeyringFormatError("regions: at least one region is required")
        if len(set(region_list)) != len(region_list):
            raise KeyringFormatError(f"regions: duplicates in {region_list!r}")
        if path.exists() and not overwrite:
            raise KeyringExistsError(
                f"keyring {path} already exists; refusing to overwrite it (its KEKs wrap live keys)"
            )
        keks: dict[str, Kek] = {}
        region_keks: dict[str, str] = {}
        for region in region_list:
            uri = local_kek_uri(region)
            keks[uri] = Kek(region=region, primary="1", versions={"1": new_version()})
            region_keks[region] = uri
        keyring = cls(path, keks, region_keks)
        keyring._save()
        return keyring

    @classmethod
    def open(cls, path: Path) -> LocalKeyring:
        """Open a keyring file, refusing loose permissions and malformed content."""
        path = Path(path)
        content = read_private_file(path, MAX_KEYRING_BYTES)
        try:
            document = json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise KeyringFormatError(f"keyring {path}: not UTF-8 JSON ({error})") from None
        keks, region_keks = parse_keyring(document)
        return cls(path, keks, region_keks)

    # -- queries ---------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def regions(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._region_keks))

    def kek_for_region(self, region: str) -> str:
        """The URI of the KEK that new data keys for ``region`` are wrapped under."""
        with self._lock:
            try:
                return self._region_keks[region]
            except KeyError:
                raise KeyNotFoundError(f"no KEK for region {region!r} in the keyring") from None

    def primary_version(self, kek_uri: str) -> str:
        with self._lock:
            return self._kek(kek_uri).primary

    def versions(self, kek_uri: str) -> dict[str, str]:
        """Version -> state ("enabled", "disabled", "destroyed") of one KEK."""
        with self._lock:
            return {number: entry.state for number, entry in self._kek(kek_uri).versions.items()}

    # -- changes ---------------------------------------------------------------------------

    def rotate(self, kek_uri: str) -> KeyReference:
        """Add a version to ``kek_uri`` and make it primary; earlier versions still unwrap."""
        with self._lock:
            kek = self._kek(kek_uri)
            number = str(max(int(existing) for existing in kek.versions) + 1)
            kek.versions[number] = new_version()
            previous_primary = kek.primary
            kek.primary = number
            try:
                self._save()
            except BaseException:
                del kek.versions[number]
                kek.primary = previous_primary
                raise
            return KeyReference(kek_uri, number)

    def disable_version(self, kek_uri: str, version: str) -> None:
        """Stop a non-primary version from unwrapping, keeping its material (reversible)."""
        self._set_state(kek_uri, version, "disabled")

    def enable_version(self, kek_uri: str, version: str) -> None:
        self._set_state(kek_uri, version, "enabled")

    def destroy_version(self, kek_uri: str, version: str) -> None:
        """Erase a non-primary version's material for good: what it wrapped is lost."""
        self._set_state(kek_uri, version, "destroyed")

    # -- wrap / unwrap ---------------------------------------------------------------------

    def wrap(self, kek_uri: str, dek: bytes, aad: bytes) -> WrappedKey:
        """Wrap ``dek`` under the primary version of ``kek_uri``, binding ``aad``."""
        if not isinstance(dek, bytes | bytearray) or not 1 <= len(dek) <= MAX_WRAPPED_SECRET_BYTES:
            raise KmsError(f"dek: expected 1..{MAX_WRAPPED_SECRET_BYTES} bytes")
        with self._lock:
            kek = self._kek(kek_uri)
            version = kek.primary
            material = self._usable_material(kek_uri, kek, version)
        nonce = os.urandom(NONCE_BYTES)
        associated = wrap_associated_data(kek_uri, version, aad)
        sealed = AESGCM(material).encrypt(nonce, bytes(dek), associated)
        ciphertext = WRAP_MAGIC + bytes([WRAP_FORMAT_VERSION]) + nonce + sealed
        return WrappedKey(KeyReference(kek_uri, version), ciphertext)

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        """Return the DEK; KmsUnwrapError when the ciphertext or ``aad`` does not match."""
        ciphertext = wrapped.ciphertext
        maximum = WRAP_HEADER_BYTES + MAX_WRAPPED_SECRET_BYTES + TAG_BYTES
        if not WRAP_HEADER_BYTES + 1 + TAG_BYTES <= len(ciphertext) <= maximum:
            raise KmsUnwrapError()
        if ciphertext[: len(WRAP_MAGIC)] != WRAP_MAGIC or ciphertext[4] != WRAP_FORMAT_VERSION:
            raise KmsUnwrapError()
        kek_uri, version = wrapped.kek.uri, wrapped.kek.version
        with self._lock:
            kek = self._kek(kek_uri)
            material = self._usable_material(kek_uri, kek, version)
        nonce = ciphertext[5:WRAP_HEADER_BYTES]
        associated = wrap_associated_data(kek_uri, version, aad)
        try:
            return AESGCM(material).decrypt(nonce, ciphertext[WRAP_HEADER_BYTES:], associated)
        except InvalidTag:
            raise KmsUnwrapError() from None

    # -- internals -------------------------------------------------------------------------

    def _kek(self, kek_uri: str) -> Kek:
        parse_local_kek_uri(kek_uri)
        try:
            return self._keks[kek_uri]
        except KeyError:
            raise KeyNotFoundError(f"KEK {kek_uri} is not in keyring") from None

    def _usable_material(self, kek_uri: str, kek: Kek, version: str) -> bytes:
        entry = kek.versions.get(version)
        if entry is None:
            raise KeyNotFoundError(f"KEK {kek_uri} has no version {version!r}")
        if entry.state == "destroyed" or entry.material is None:
            raise KeyDestroyedError(f"KEK {kek_uri} version {version} was destroyed")
        if entry.state == "disabled":
            raise KmsPermissionError(f"KEK {kek_uri} version {version} is disabled")
        return entry.material

    def _set_state(self, kek_uri: str, version: str, state: str) -> None:
        with self._lock:
            kek = self._kek(kek_uri)
            entry = kek.versions.get(version)
            if entry is None:
                raise KeyNotFoundError(f"KEK {kek_uri} has no version {version!r}")
            if version == kek.primary and state != "enabled":
                raise KmsPermissionError(
                    f"KEK {kek_uri} version {version} is primary; rotate before retiring it"
                )
            if entry.state == "destroyed" and state != "destroyed":
                raise KeyDestroyedError(f"KEK {kek_uri} version {version} was destroyed")
            previous = KekVersion(entry.state, entry.created_at, entry.material)
            entry.state = state
            if state == "destroyed":
                entry.material = None
            try:
                self._save()
            except BaseException:
                kek.versions[version] = previous
                raise

    def _save(self) -> None:
        document = keyring_document(self._keks, self._region_keks)
        write_private_file(self._path, json.dumps(document, indent=2).encode("utf-8") + b"\n")

    def __repr__(self) -> str:
        return f"LocalKeyring(path={str(self._path)!r}, keks={sorted(self._keks)!r})"
