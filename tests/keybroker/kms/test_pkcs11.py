"""The PKCS#11 backend against SoftHSM2 tokens initialised in a temporary directory.

Skips only when the SoftHSM2 module is not installed (CI installs it with
scripts/install-system-deps.sh). Each test generates its own key labels, so tests share
the session's tokens without seeing each other's keys.
"""

from __future__ import annotations

import logging
import os
import random
import uuid

import pkcs11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pkcs11 import Attribute, KeyType, MechanismFlag

from envelope.keys import KeyReference, WrappedKey
from keybroker.kms.base import (
    KeyManagementService,
    KeyNotFoundError,
    KmsError,
    KmsPermissionError,
    KmsUnwrapError,
)
from keybroker.kms.pkcs11 import (
    MAX_AAD_BYTES,
    MAX_DEK_BYTES,
    MODULE_ENV,
    PIN_ENV,
    Pkcs11ConfigurationError,
    Pkcs11Kms,
    TokenNotFoundError,
    parse_pkcs11_kek_uri,
    pkcs11_kek_uri,
)
from keybroker.kms.retry import Backoff
from tests.keybroker.kms.softhsm import TokenSpec, activate, create_softhsm, find_softhsm_module

EU = TokenSpec("sealbeam-eu", "eu-user-pin-4711", "eu-so-pin-0815")
US = TokenSpec("sealbeam-us", EU.user_pin, "us-so-pin-0815")  # one backend, one user PIN
LOCKED = TokenSpec("sealbeam-pin-test", "right-pin-1234", "so-pin-5678")
AAD = b"region=eu;producer=acme"
# python-pkcs11 finalises a search whose C_FindObjectsInit failed on a dead session, and the
# finaliser's own SessionHandleInvalid is reported as "Exception ignored": noise, not ours.
IGNORE_DEAD_SEARCH_FINALISER = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory):
    module = find_softhsm_module()
    if module is None:
        pytest.skip("SoftHSM2 module (libsofthsm2.so) not installed: apt-get install softhsm2")
    hsm = create_softhsm(tmp_path_factory.mktemp("softhsm"), module, [EU, US, LOCKED])
    with activate(hsm):
        yield hsm


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def kms(softhsm, sleeps):
    backend = Pkcs11Kms(
        softhsm.module,
        pin=EU.user_pin,
        backoff=Backoff(attempts=3, initial_delay=0.01, max_delay=0.02),
        sleep=sleeps.append,
        rng=random.Random(3),
    )
    yield backend
    backend.close()


@pytest.fixture
def kek(kms) -> KeyReference:
    return kms.generate_kek(EU.label, f"kek-{uuid.uuid4().hex[:12]}")


def _token_keys(softhsm, token: TokenSpec, label: str) -> list:
    """Look at the token directly (the backend's login is shared by the application)."""
    with pkcs11.lib(str(softhsm.module)).get_token(token_label=token.label).open() as session:
        return [
            {attribute: key[attribute] for attribute in (
                Attribute.ID, Attribute.SENSITIVE, Attribute.EXTRACTABLE,
                Attribute.ALWAYS_SENSITIVE, Attribute.NEVER_EXTRACTABLE, Attribute.LOCAL,
                Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.WRAP, Attribute.UNWRAP,
                Attribute.SIGN, Attribute.DERIVE, Attribute.VALUE_LEN, Attribute.TOKEN,
            )}
            for key in session.get_objects({Attribute.LABEL: label})
        ]


# --- keys -------------------------------------------------------------------------------


def test_pkcs11_kms_satisfies_the_kms_protocol(kms):
    assert isinstance(kms, KeyManagementService)
    assert kms.scheme == "pkcs11"


def test_generate_kek_makes_a_non_extractable_sensitive_aes256_key(kms, softhsm):
    kek = kms.generate_kek(EU.label, "kek-attributes")
    assert kek.uri == "pkcs11://sealbeam-eu/kek-attributes"
    assert len(bytes.fromhex(kek.version)) == 16
    (attributes,) = _token_keys(softhsm, EU, "kek-attributes")
    assert attributes[Attribute.ID].hex() == kek.version
    assert attributes[Attribute.VALUE_LEN] == 32
    assert attributes[Attribute.TOKEN] is True
    for flag in (Attribute.SENSITIVE, Attribute.ALWAYS_SENSITIVE, Attribute.NEVER_EXTRACTABLE,
                 Attribute.LOCAL, Attribute.ENCRYPT, Attribute.DECRYPT):
        assert attributes[flag] is True, flag
    for flag in (Attribute.EXTRACTABLE, Attribute.WRAP, Attribute.UNWRAP, Attribute.SIGN,
                 Attribute.DERIVE):
        assert attributes[flag] is False, flag


# --- round trips and authentication ------------------------------------------------------


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(dek=st.binary(min_size=1, max_size=MAX_DEK_BYTES), aad=st.binary(max_size=256))
def test_wrap_then_unwrap_returns_the_dek(kms, kek, dek, aad):
    wrapped = kms.wrap(kek.uri, dek, aad)
    assert wrapped.kek == kek
    assert len(wrapped.ciphertext) == 1 + 12 + len(dek) + 16
    assert wrapped.ciphertext[0] == 1
    if len(dek) >= 16:
        assert dek not in wrapped.ciphertext
    assert kms.unwrap(wrapped, aad) == dek


def test_two_wraps_of_one_dek_differ(kms, kek):
    dek = os.urandom(32)
    assert kms.wrap(kek.uri, dek, AAD).ciphertext != kms.wrap(kek.uri, dek, AAD).ciphertext


def test_unwrap_with_other_aad_fails(kms, kek, sleeps):
    wrapped = kms.wrap(kek.uri, os.urandom(32), AAD)
    with pytest.raises(KmsUnwrapError):
        kms.unwrap(wrapped, b"region=us;producer=acme")
    assert sleeps == []


@pytest.mark.parametrize("position", [0, 1, 12, 13, -1])
def test_unwrap_of_tampered_ciphertext_fails(kms, kek, position):
    wrapped = kms.wrap(kek.uri, os.urandom(32), AAD)
    tampered = bytearray(wrapped.ciphertext)
    tampered[position] ^= 0x01
    with pytest.raises(KmsUnwrapError):
        kms.unwrap(WrappedKey(kek, bytes(tampered)), AAD)


@pytest.mark.parametrize("length", [1, 13, 29, 1 + 12 + MAX_DEK_BYTES + 16 + 1])
def test_unwrap_of_a_wrongly_sized_ciphertext_fails(kms, kek, length):
    with pytest.raises(KmsUnwrapError):
        kms.unwrap(WrappedKey(kek, b"\x01" * length), AAD)


def test_unwrap_under_another_key_fails(kms, kek):
    other = kms.generate_kek(EU.label, f"other-{uuid.uuid4().hex[:8]}")
    wrapped = kms.wrap(kek.uri, os.urandom(32), AAD)
    with pytest.raises(KmsUnwrapError):
        kms.unwrap(WrappedKey(other, wrapped.ciphertext), AAD)
    with pytest.raises(KeyNotFoundError, match="has no version"):
        kms.unwrap(WrappedKey(KeyReference(other.uri, kek.version), wrapped.ciphertext), AAD)


def test_keys_in_another_token_are_separate(kms, kek):
    label = parse_pkcs11_kek_uri(kek.uri).key_label
    us_kek = kms.generate_kek(US.label, label)  # same key label, other token
    assert us_kek.uri == f"pkcs11://sealbeam-us/{label}"
    dek = os.urandom(32)
    wrapped_in_us = kms.wrap(us_kek.uri, dek, AAD)
    assert kms.unwrap(wrapped_in_us, AAD) == dek
    moved = WrappedKey(KeyReference(kek.uri, us_kek.version), wrapped_in_us.ciphertext)
    with pytest.raises(KeyNotFoundError, match="has no version"):
        kms.unwrap(moved, AAD)


def test_rotation_needs_the_old_version_retired_and_old_wraps_still_open(kms, kek):
    dek = os.urandom(32)
    old = kms.wrap(kek.uri, dek, AAD)
    label = parse_pkcs11_kek_uri(kek.uri).key_label
    new_kek = kms.generate_kek(EU.label, label)
    with pytest.raises(KmsError, match=r"2 keys labeled .* may encrypt; retire all but"):
        kms.wrap(kek.uri, dek, AAD)
    kms.retire_kek(kek)
    new = kms.wrap(kek.uri, dek, AAD)
    assert new.kek == new_kek
    assert kms.unwrap(old, AAD) == dek
    assert kms.unwrap(new, AAD) == dek
    kms.retire_kek(new_kek)
    with pytest.raises(KeyNotFoundError, match="may encrypt"):
        kms.wrap(kek.uri, dek, AAD)


# --- typed errors -----------------------------------------------------------------------


def test_unknown_key_label_is_key_not_found(kms):
    with pytest.raises(KeyNotFoundError, match="no AES key labeled 'missing'"):
        kms.wrap("pkcs11://sealbeam-eu/missing", os.urandom(32), AAD)


def test_unknown_token_is_token_not_found(kms):
    with pytest.raises(TokenNotFoundError, match="no PKCS#11 token labeled 'nowhere'") as raised:
        kms.wrap("pkcs11://nowhere/kek", os.urandom(32), AAD)
    assert isinstance(raised.value, KeyNotFoundError)


@pytest.mark.parametrize("version", ["xyz", "ABCD", "abc", "0" * 127])
def test_unwrap_refuses_a_version_that_is_not_a_hex_id(kms, kek, version):
    wrapped = kms.wrap(kek.uri, os.urandom(32), AAD)
    with pytest.raises(KeyNotFoundError, match="is not a hex CKA_ID"):
        kms.unwrap(WrappedKey(KeyReference(kek.uri, version), wrapped.ciphertext), AAD)


def test_unknown_version_is_key_not_found(kms, kek):
    wrapped = kms.wrap(kek.uri, os.urandom(32), AAD)
    with pytest.raises(KeyNotFoundError, match="has no version"):
        kms.unwrap(WrappedKey(KeyReference(kek.uri, "00" * 16), wrapped.ciphertext), AAD)


def test_wrong_pin_is_a_permission_error_without_the_pin(softhsm):
    backend = Pkcs11Kms(softhsm.module, pin="wrong-pin-0000")
    try:
        with pytest.raises(KmsPermissionError, match="PinIncorrect") as raised:
            backend.generate_kek(LOCKED.label, "kek")
        assert "wrong-pin-0000" not in str(raised.value)
        assert "wrong-pin-0000" not in repr(backend)
    finally:
        backend.close()


def test_an_extractable_kek_is_refused(kms, kek, softhsm):  # kek: the backend is logged in
    with pkcs11.lib(str(softhsm.module)).get_token(token_label=EU.label).open(rw=True) as session:
        session.generate_key(
            KeyType.AES, 256, id=os.urandom(16), label="weak", store=True,
            capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
            template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
        )
    with pytest.raises(KmsError, match="extractable or not sensitive; refusing"):
        kms.wrap("pkcs11://sealbeam-eu/weak", os.urandom(32), AAD)


@IGNORE_DEAD_SEARCH_FINALISER
def test_a_session_the_token_dropped_is_reopened(kms, kek, softhsm, sleeps):
    dek = os.urandom(32)
    wrapped = kms.wrap(kek.uri, dek, AAD)
    pkcs11.lib(str(softhsm.module)).reinitialize()  # every session handle becomes invalid
    assert kms.unwrap(wrapped, AAD) == dek
    assert len(sleeps) == 1


# --- inputs, configuration, hygiene ------------------------------------------------------


@pytest.mark.parametrize(
    ("dek", "aad", "message"),
    [
        (b"", AAD, r"dek: expected 1\.\.1024 bytes, got 0"),
        (b"k" * (MAX_DEK_BYTES + 1), AAD, r"dek: expected 1\.\.1024 bytes, got 1025"),
        (b"k" * 32, b"a" * (MAX_AAD_BYTES + 1), r"aad: expected 0\.\.4096 bytes, got 4097"),
        (bytearray(32), "aad", "aad: expected bytes, got str"),
    ],
)
def test_wrap_refuses_out_of_bounds_input(kms, kek, dek, aad, message):
    with pytest.raises(KmsError, match=message):
        kms.wrap(kek.uri, dek, aad)


@pytest.mark.parametrize(
    "uri",
    [
        "gcp-kms://projects/p/locations/eu/keyRings/r/cryptoKeys/k",
        "pkcs11://token-only",
        "pkcs11://token/key/extra",
        "pkcs11:///key",
        "pkcs11://token/key?pin-value=1234",
        "pkcs11://" + "t" * 33 + "/key",
        "pkcs11://token/%ff",
        "pkcs11://token/a%0Ab",
    ],
)
def test_malformed_kek_uris_are_refused(uri):
    with pytest.raises(KeyNotFoundError):
        parse_pkcs11_kek_uri(uri)


def test_labels_are_percent_encoded_in_uris():
    uri = pkcs11_kek_uri("eu token", "keys/eu%1")
    assert uri == "pkcs11://eu%20token/keys%2Feu%251"
    name = parse_pkcs11_kek_uri(uri)
    assert (name.token_label, name.key_label) == ("eu token", "keys/eu%1")


def test_module_and_pin_come_from_the_environment(softhsm, kek):
    environ = {MODULE_ENV: str(softhsm.module), PIN_ENV: EU.user_pin}
    backend = Pkcs11Kms(environ=environ)
    try:
        dek = os.urandom(32)
        assert backend.unwrap(backend.wrap(kek.uri, dek, AAD), AAD) == dek
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({PIN_ENV: "1234"}, f"pass module_path or set {MODULE_ENV}"),
        ({MODULE_ENV: "/nonexistent/libpkcs11.so", PIN_ENV: "1234"}, "is not a file"),
        ({MODULE_ENV: "MODULE"}, f"pass pin or set {PIN_ENV}"),
    ],
)
def test_missing_configuration_is_refused(softhsm, environ, message):
    environ = {k: str(softhsm.module) if v == "MODULE" else v for k, v in environ.items()}
    with pytest.raises(Pkcs11ConfigurationError, match=message):
        Pkcs11Kms(environ=environ)


def test_a_file_that_is_not_a_pkcs11_module_is_refused(tmp_path):
    bogus = tmp_path / "libbogus.so"
    bogus.write_bytes(b"not an ELF file")
    with pytest.raises(Pkcs11ConfigurationError, match="did not load"):
        Pkcs11Kms(bogus, pin="1234")


@IGNORE_DEAD_SEARCH_FINALISER
def test_no_pin_or_key_bytes_in_logs_or_repr(kms, kek, softhsm, caplog):
    caplog.set_level(logging.DEBUG)
    dek = os.urandom(32)
    wrapped = kms.wrap(kek.uri, dek, AAD)
    pkcs11.lib(str(softhsm.module)).reinitialize()  # forces a logged retry
    with pytest.raises(KmsUnwrapError) as raised:
        kms.unwrap(wrapped, b"other")
    text = caplog.text + repr(kms) + str(raised.value)
    assert "session lost" in caplog.text
    for secret in (EU.user_pin, dek.hex(), repr(dek)):
        assert secret not in text


# --- key lifecycle: rotate, destroy (keybroker.shred) ----------------------------------------


def test_rotate_makes_a_new_primary_and_retires_the_old(kms, kek, softhsm):
    dek = os.urandom(32)
    old = kms.wrap(kek.uri, dek, AAD)
    assert kms.primary_version(kek.uri) == kek.version
    new = kms.rotate(kek.uri)
    assert new.uri == kek.uri and new.version != kek.version
    assert kms.primary_version(kek.uri) == new.version
    assert kms.wrap(kek.uri, dek, AAD).kek == new
    assert kms.unwrap(old, AAD) == dek
    label = parse_pkcs11_kek_uri(kek.uri).key_label
    encrypting = {key[Attribute.ID].hex(): key[Attribute.ENCRYPT]
                  for key in _token_keys(softhsm, EU, label)}
    assert encrypting == {kek.version: False, new.version: True}


def test_destroy_version_removes_the_key_object_and_unwrap_says_destroyed(kms, kek, softhsm):
    from keybroker.kms.base import KeyDestroyedError

    dek = os.urandom(32)
    old = kms.wrap(kek.uri, dek, AAD)
    with pytest.raises(KmsPermissionError, match="may still encrypt"):
        kms.destroy_version(kek.uri, kek.version)
    new = kms.rotate(kek.uri)
    kms.destroy_version(kek.uri, kek.version)
    label = parse_pkcs11_kek_uri(kek.uri).key_label
    with pkcs11.lib(str(softhsm.module)).get_token(token_label=EU.label).open() as session:
        left = [bytes(key[Attribute.ID]).hex() for key in session.get_objects(
            {Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY, Attribute.LABEL: label})]
        tombstones = [bytes(data[Attribute.VALUE]).hex() for data in session.get_objects(
            {Attribute.CLASS: pkcs11.ObjectClass.DATA, Attribute.LABEL: label})]
    assert (left, tombstones) == ([new.version], [kek.version])
    with pytest.raises(KeyDestroyedError, match=f"version {kek.version} was destroyed"):
        kms.unwrap(old, AAD)
    with pytest.raises(KeyDestroyedError):
        kms.destroy_version(kek.uri, kek.version)
    with pytest.raises(KeyNotFoundError, match="has no version"):
        kms.destroy_version(kek.uri, "ab" * 16)
    assert kms.unwrap(kms.wrap(kek.uri, dek, AAD), AAD) == dek


def test_shred_through_the_backend(kms, kek, tmp_path):
    from keybroker.kms.base import KeyDestroyedError
    from keybroker.ledger import AuditLedger
    from keybroker.shred import KekLifecycle, shred_kek_version

    assert isinstance(kms, KekLifecycle)
    old = kms.wrap(kek.uri, os.urandom(32), AAD)
    with AuditLedger(tmp_path / "ledger.sqlite") as ledger:
        result = shred_kek_version(kms, kek.uri, kek.version, ledger=ledger, force=True)
        assert result.rotated_to == kms.primary_version(kek.uri) != kek.version
        assert [(e.event, e.decision) for e in ledger.entries()] == [
            ("kek-rotate", "granted"), ("kek-shred", "granted")
        ]
    with pytest.raises(KeyDestroyedError):
        kms.unwrap(old, AAD)
