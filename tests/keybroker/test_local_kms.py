"""The local keyring KMS: round trips, bindings, versions, file permissions, typed errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from envelope.keys import KeyReference, WrappedKey, dek_wrap_aad
from keybroker.kms.base import (
    InsecureKeyringError,
    KeyDestroyedError,
    KeyManagementService,
    KeyNotFoundError,
    KeyringExistsError,
    KeyringFormatError,
    KmsError,
    KmsPermissionError,
    KmsUnwrapError,
    UnsupportedKmsSchemeError,
)
from keybroker.kms.local import (
    WRAP_HEADER_BYTES,
    LocalKeyring,
    parse_local_kek_uri,
    wrap_associated_data,
)
from keybroker.kms.local_file import new_version
from keybroker.kms.registry import KmsRegistry, kms_for_uri, uri_scheme

EU_KEK = "local://keyring/eu/kek-1"
US_KEK = "local://keyring/us/kek-1"
DEK = bytes(range(32))


@pytest.fixture
def keyring(tmp_path: Path) -> LocalKeyring:
    return LocalKeyring.create(tmp_path / "keyring.json", ["eu", "us"])


def test_keyring_is_a_key_management_service(keyring: LocalKeyring) -> None:
    assert isinstance(keyring, KeyManagementService)
    assert keyring.scheme == "local"
    assert keyring.regions == ("eu", "us")
    assert keyring.kek_for_region("eu") == EU_KEK


def test_round_trip_and_reopen(keyring: LocalKeyring, tmp_path: Path) -> None:
    aad = dek_wrap_aad("eu", "acme")
    wrapped = keyring.wrap(EU_KEK, DEK, aad)
    assert wrapped.kek == KeyReference(EU_KEK, "1")
    assert len(wrapped.ciphertext) == WRAP_HEADER_BYTES + len(DEK) + 16
    assert DEK not in wrapped.ciphertext
    assert keyring.unwrap(wrapped, aad) == DEK
    reopened = LocalKeyring.open(tmp_path / "keyring.json")
    assert reopened.unwrap(wrapped, aad) == DEK


def test_each_wrap_uses_a_fresh_nonce(keyring: LocalKeyring) -> None:
    aad = dek_wrap_aad("eu", "acme")
    first, second = keyring.wrap(EU_KEK, DEK, aad), keyring.wrap(EU_KEK, DEK, aad)
    assert first.ciphertext != second.ciphertext


@pytest.mark.parametrize(
    "aad",
    [dek_wrap_aad("us", "acme"), dek_wrap_aad("eu", "globex"), b""],
    ids=["other-region", "other-producer", "empty"],
)
def test_wrong_aad_fails_with_one_uniform_error(keyring: LocalKeyring, aad: bytes) -> None:
    wrapped = keyring.wrap(EU_KEK, DEK, dek_wrap_aad("eu", "acme"))
    with pytest.raises(KmsUnwrapError) as caught:
        keyring.unwrap(wrapped, aad)
    assert str(caught.value) == str(KmsUnwrapError())


def test_tampered_ciphertext_and_moved_kek_fail(keyring: LocalKeyring) -> None:
    aad = dek_wrap_aad("eu", "acme")
    wrapped = keyring.wrap(EU_KEK, DEK, aad)
    flipped = bytearray(wrapped.ciphertext)
    flipped[-1] ^= 1
    with pytest.raises(KmsUnwrapError):
        keyring.unwrap(WrappedKey(wrapped.kek, bytes(flipped)), aad)
    with pytest.raises(KmsUnwrapError):  # the same bytes presented as the US KEK's
        keyring.unwrap(WrappedKey(KeyReference(US_KEK, "1"), wrapped.ciphertext), aad)
    with pytest.raises(KmsUnwrapError):  # truncated below header + tag
        keyring.unwrap(WrappedKey(wrapped.kek, wrapped.ciphertext[:20]), aad)


def test_associated_data_binds_uri_version_and_caller_aad() -> None:
    base = wrap_associated_data(EU_KEK, "1", b"x")
    assert base != wrap_associated_data(US_KEK, "1", b"x")
    assert base != wrap_associated_data(EU_KEK, "2", b"x")
    assert base != wrap_associated_data(EU_KEK, "1", b"y")
    # length prefixes keep field boundaries: moving a byte between fields changes the encoding
    assert wrap_associated_data(EU_KEK, "1", b"2") != wrap_associated_data(EU_KEK, "12", b"")


def test_rotate_adds_a_primary_version_and_old_versions_unwrap(
    keyring: LocalKeyring, tmp_path: Path
) -> None:
    aad = dek_wrap_aad("eu", "acme")
    old = keyring.wrap(EU_KEK, DEK, aad)
    reference = keyring.rotate(EU_KEK)
    assert reference == KeyReference(EU_KEK, "2")
    new = keyring.wrap(EU_KEK, DEK, aad)
    assert new.kek.version == "2"
    reopened = LocalKeyring.open(tmp_path / "keyring.json")
    assert reopened.primary_version(EU_KEK) == "2"
    assert reopened.unwrap(old, aad) == DEK
    assert reopened.unwrap(new, aad) == DEK
    # a version-1 ciphertext relabelled as version 2 does not authenticate
    with pytest.raises(KmsUnwrapError):
        reopened.unwrap(WrappedKey(KeyReference(EU_KEK, "2"), old.ciphertext), aad)


def test_disable_and_destroy_versions(keyring: LocalKeyring, tmp_path: Path) -> None:
    aad = dek_wrap_aad("eu", "acme")
    old = keyring.wrap(EU_KEK, DEK, aad)
    with pytest.raises(KmsPermissionError, match="primary"):
        keyring.disable_version(EU_KEK, "1")
    keyring.rotate(EU_KEK)
    keyring.disable_version(EU_KEK, "1")
    with pytest.raises(KmsPermissionError, match="disabled"):
        keyring.unwrap(old, aad)
    keyring.enable_version(EU_KEK, "1")
    assert keyring.unwrap(old, aad) == DEK
    keyring.destroy_version(EU_KEK, "1")
    with pytest.raises(KeyDestroyedError, match="destroyed"):
        keyring.unwrap(old, aad)
    with pytest.raises(KeyDestroyedError):
        keyring.enable_version(EU_KEK, "1")
    document = json.loads((tmp_path / "keyring.json").read_text())
    assert document["keks"][EU_KEK]["versions"]["1"] == {
        "state": "destroyed",
        "created_at": document["keks"][EU_KEK]["versions"]["1"]["created_at"],
        "material": None,
    }
    with pytest.raises(KeyDestroyedError):
        LocalKeyring.open(tmp_path / "keyring.json").unwrap(old, aad)


def test_unknown_keys_and_versions_are_typed(keyring: LocalKeyring) -> None:
    with pytest.raises(KeyNotFoundError, match="ap"):
        keyring.kek_for_region("ap")
    with pytest.raises(KeyNotFoundError, match="not in keyring"):
        keyring.wrap("local://keyring/ap/kek-1", DEK, b"")
    with pytest.raises(KeyNotFoundError, match="not a local KEK URI"):
        keyring.wrap("local://elsewhere/eu", DEK, b"")
    wrapped = keyring.wrap(EU_KEK, DEK, b"")
    with pytest.raises(KeyNotFoundError, match="no version '7'"):
        keyring.unwrap(WrappedKey(KeyReference(EU_KEK, "7"), wrapped.ciphertext), b"")


def test_secret_size_is_bounded(keyring: LocalKeyring) -> None:
    with pytest.raises(KmsError, match="dek"):
        keyring.wrap(EU_KEK, b"", b"")
    with pytest.raises(KmsError, match="dek"):
        keyring.wrap(EU_KEK, bytes(1025), b"")


def test_file_is_0600_and_written_atomically(keyring: LocalKeyring, tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keyring.rotate(EU_KEK)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keyring.json"]  # no temporary left behind


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_refuses_a_keyring_readable_by_others(
    keyring: LocalKeyring, tmp_path: Path, mode: int
) -> None:
    path = tmp_path / "keyring.json"
    os.chmod(path, mode)
    with pytest.raises(InsecureKeyringError, match="chmod 600"):
        LocalKeyring.open(path)


def test_refuses_a_symlinked_keyring(keyring: LocalKeyring, tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "keyring.json")
    with pytest.raises(InsecureKeyringError):
        LocalKeyring.open(link)


def test_create_refuses_to_overwrite(keyring: LocalKeyring, tmp_path: Path) -> None:
    with pytest.raises(KeyringExistsError):
        LocalKeyring.create(tmp_path / "keyring.json", ["eu"])
    replaced = LocalKeyring.create(tmp_path / "keyring.json", ["eu"], overwrite=True)
    assert replaced.regions == ("eu",)


def test_missing_keyring_is_key_not_found(tmp_path: Path) -> None:
    with pytest.raises(KeyNotFoundError, match="does not exist"):
        LocalKeyring.open(tmp_path / "absent.json")


def _write_private(path: Path, content: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(format_version=2), "format_version"),
        (lambda d: d.update(keks=[]), "keks"),
        (lambda d: d["keks"][EU_KEK].update(primary="9"), "primary"),
        (lambda d: d["keks"][EU_KEK].update(region="us"), "region"),
        (lambda d: d["keks"][EU_KEK]["versions"]["1"].update(material="AAAA"), "material"),
        (lambda d: d["keks"][EU_KEK]["versions"]["1"].update(material="!!"), "material"),
        (lambda d: d["keks"][EU_KEK]["versions"]["1"].update(state="lost"), "state"),
        (lambda d: d["regions"].update(eu=US_KEK), "regions"),
        (lambda d: d["keks"].update({"local://keyring/EU/x": {}}), "keks"),
    ],
)
def test_malformed_keyring_names_the_field(
    keyring: LocalKeyring, tmp_path: Path, mutate, field: str
) -> None:
    path = tmp_path / "keyring.json"
    document = json.loads(path.read_text())
    mutate(document)
    _write_private(path, json.dumps(document).encode())
    with pytest.raises(KeyringFormatError, match=field):
        LocalKeyring.open(path)


def test_oversized_or_non_json_keyring_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    _write_private(path, b"{" * ((1 << 20) + 1))
    with pytest.raises(KeyringFormatError, match="over the limit"):
        LocalKeyring.open(path)
    _write_private(path, b"\xff\xfe")
    with pytest.raises(KeyringFormatError, match="JSON"):
        LocalKeyring.open(path)


def test_repr_never_shows_material(keyring: LocalKeyring, tmp_path: Path) -> None:
    document = json.loads((tmp_path / "keyring.json").read_text())
    material = document["keks"][EU_KEK]["versions"]["1"]["material"]
    assert material not in repr(keyring)
    version = new_version()
    assert version.material is not None
    assert version.material.hex() not in repr(version)
    assert repr(version.material)[2:-1] not in repr(version)


def test_parse_local_kek_uri() -> None:
    assert parse_local_kek_uri(EU_KEK) == ("eu", "kek-1")
    with pytest.raises(KeyNotFoundError):
        parse_local_kek_uri("local://keyring/eu/kek-1/extra")


class _Settings:
    def __init__(self, keyring_path: Path) -> None:
        self.keyring_path = keyring_path


def test_registry_dispatches_on_scheme(keyring: LocalKeyring, tmp_path: Path) -> None:
    settings = _Settings(tmp_path / "keyring.json")
    assert uri_scheme(EU_KEK) == "local"
    assert isinstance(kms_for_uri(EU_KEK, settings), LocalKeyring)
    registry = KmsRegistry(settings)
    aad = dek_wrap_aad("eu", "acme")
    wrapped = registry.wrap(EU_KEK, DEK, aad)
    assert registry.unwrap(wrapped, aad) == DEK
    assert registry.for_uri(EU_KEK) is registry.for_uri(US_KEK)
    with pytest.raises(UnsupportedKmsSchemeError, match="no KMS backend for scheme 'vault'"):
        kms_for_uri("vault://x/y", settings)
    with pytest.raises(UnsupportedKmsSchemeError, match="not a KEK URI"):
        registry.for_uri("no-scheme")
    assert issubclass(UnsupportedKmsSchemeError, KeyNotFoundError)
