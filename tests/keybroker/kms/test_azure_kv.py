"""Tests of the azure-kv backend: the real azure-keyvault-keys SDK against the local HTTPS fake."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import ClientAuthenticationError
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envelope.keys import KeyReference, WrappedKey
from keybroker.kms.azure_kv import (
    AAD_LABEL,
    AzureKeyUri,
    AzureKeyVaultKms,
    KeyDisabledError,
    KmsInputError,
)
from keybroker.kms.base import (
    KeyManagementService,
    KeyNotFoundError,
    KmsError,
    KmsPermissionError,
    KmsTransientError,
    KmsUnwrapError,
)
from keybroker.kms.retry import Backoff
from tests.keybroker.kms.fake_azure_kv import FakeKeyVault, FakePki, StaticTokenCredential

AAD = b"region=eu;producer=acme"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> FakePki:
    return FakePki.create(Path(tmp_path_factory.mktemp("azure-kv-pki")))


@pytest.fixture
def vault(pki: FakePki) -> Iterator[FakeKeyVault]:
    with FakeKeyVault(pki) as fake:
        yield fake


@pytest.fixture
def credential() -> StaticTokenCredential:
    return StaticTokenCredential()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_kms(
    pki: FakePki, vault: FakeKeyVault, credential: object, sleeps: list[float], attempts: int = 3
) -> AzureKeyVaultKms:
    return AzureKeyVaultKms(
        credential,  # type: ignore[arg-type]
        connection_verify=str(pki.ca_path),
        allowed_hosts=[vault.host],
        verify_challenge_resource=False,
        backoff=Backoff(attempts=attempts, initial_delay=0.01, max_delay=0.02),
        sleep=sleeps.append,
    )


@pytest.fixture
def kms(
    pki: FakePki, vault: FakeKeyVault, credential: StaticTokenCredential, sleeps: list[float]
) -> AzureKeyVaultKms:
    return make_kms(pki, vault, credential, sleeps)


def key_uri(vault: FakeKeyVault, name: str, version: str | None = None) -> str:
    return f"azure-kv://{vault.host}/keys/{name}" + (f"/{version}" if version else "")


def bound_payload(aad: bytes, dek: bytes) -> bytes:
    return hashlib.sha256(AAD_LABEL + aad).digest() + dek


# -- round trips ------------------------------------------------------------------------------


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(dek=st.binary(min_size=32, max_size=32), aad=st.binary(max_size=80))
def test_rsa_round_trip_of_random_deks(
    kms: AzureKeyVaultKms, vault: FakeKeyVault, dek: bytes, aad: bytes
) -> None:
    if "kek" not in vault.keys:
        vault.create_rsa_key("kek")
    version = vault.keys["kek"][-1].version
    wrapped = kms.wrap(key_uri(vault, "kek"), dek, aad)
    assert wrapped.kek == KeyReference(uri=key_uri(vault, "kek"), version=version)
    assert wrapped.ciphertext[:2] == b"\x01\x01"
    assert kms.unwrap(wrapped, aad) == dek
    assert vault.operations[-1][:3] == ("unwrapkey", "kek", version)


def test_rsa_wrap_is_oaep_256_of_aad_digest_and_dek(
    kms: AzureKeyVaultKms, vault: FakeKeyVault
) -> None:
    version = vault.create_rsa_key("kek", size=3072)
    dek = os.urandom(32)
    wrapped = kms.wrap(key_uri(vault, "kek"), dek, AAD)
    private = vault.version_of("kek", version).rsa_key
    assert private is not None
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    assert private.decrypt(wrapped.ciphertext[2:], oaep) == bound_payload(AAD, dek)


def test_oct_hsm_wraps_in_the_vault_never_locally(
    kms: AzureKeyVaultKms, vault: FakeKeyVault
) -> None:
    version = vault.create_oct_key("hsm-kek")
    dek = os.urandom(32)
    wrapped = kms.wrap(key_uri(vault, "hsm-kek"), dek, AAD)
    assert ("wrapkey", "hsm-kek", version, 200) in vault.operations
    assert wrapped.ciphertext[:2] == b"\x01\x02"
    secret = vault.version_of("hsm-kek", version).secret
    assert secret is not None
    assert aes_key_unwrap(secret, wrapped.ciphertext[2:]) == bound_payload(AAD, dek)
    assert kms.unwrap(wrapped, AAD) == dek


@pytest.mark.parametrize("create", ["create_rsa_key", "create_oct_key"])
def test_aad_mismatch_is_detected(kms: AzureKeyVaultKms, vault: FakeKeyVault, create: str) -> None:
    getattr(vault, create)("kek")
    wrapped = kms.wrap(key_uri(vault, "kek"), os.urandom(32), AAD)
    with pytest.raises(KmsUnwrapError, match="does not authenticate"):
        kms.unwrap(wrapped, AAD + b"x")
    with pytest.raises(KmsUnwrapError):
        kms.unwrap(wrapped, b"")


def test_version_is_recorded_and_old_versions_still_unwrap(
    kms: AzureKeyVaultKms, vault: FakeKeyVault
) -> None:
    first = vault.create_rsa_key("kek")
    dek_old = os.urandom(32)
    old = kms.wrap(key_uri(vault, "kek"), dek_old, AAD)
    second = vault.create_rsa_key("kek")  # rotation: a new current version
    new = kms.wrap(key_uri(vault, "kek"), os.urandom(32), AAD)
    pinned = kms.wrap(key_uri(vault, "kek", first), os.urandom(32), AAD)
    assert (old.kek.version, new.kek.version, pinned.kek.version) == (first, second, first)
    assert pinned.kek.uri == key_uri(vault, "kek")
    assert kms.unwrap(old, AAD) == dek_old
    assert vault.operations[-1][:3] == ("unwrapkey", "kek", first)


def test_backend_implements_the_kms_protocol(kms: AzureKeyVaultKms) -> None:
    assert isinstance(kms, KeyManagementService)
    assert kms.scheme == "azure-kv"


def test_key_without_wrap_permission_is_refused(kms: AzureKeyVaultKms, vault: FakeKeyVault) -> None:
    version = vault.create_rsa_key("kek")
    vault.version_of("kek", version).key_ops = ["unwrapKey"]
    with pytest.raises(KmsPermissionError, match="does not permit wrapKey"):
        kms.wrap(key_uri(vault, "kek"), os.urandom(32), AAD)


def test_challenge_scope_comes_from_the_vault(
    kms: AzureKeyVaultKms, vault: FakeKeyVault, credential: StaticTokenCredential
) -> None:
    vault.create_rsa_key("kek")
    kms.wrap(key_uri(vault, "kek"), os.urandom(32), AAD)
    assert credential.scopes and credential.scopes[0] == ("https://vault.azure.net/.default",)
    first_method, _, first_status = vault.requests[0]
    assert (first_method, first_status) == ("GET", 401)  # the challenge dance happened


# -- retries and typed errors -----------------------------------------------------------------


def test_transient_errors_are_retried(
    kms: AzureKeyVaultKms, vault: FakeKeyVault, sleeps: list[float]
) -> None:
    vault.create_oct_key("kek")
    vault.fail_next("get", 429, "Throttled", "Too many requests")
    vault.fail_next("wrapkey", 503)
    dek = os.urandom(32)
    wrapped = kms.wrap(key_uri(vault, "kek"), dek, AAD)
    vault.fail_next("unwrapkey", 500, "InternalServerError", times=2)
    assert kms.unwrap(wrapped, AAD) == dek
    assert len(sleeps) == 4
    assert all(0.0 <= delay <= 0.02 for delay in sleeps)


def test_transient_errors_give_up_after_the_schedule(
    kms: AzureKeyVaultKms, vault: FakeKeyVault, sleeps: list[float]
) -> None:
    vault.create_rsa_key("kek")
    wrapped = kms.wrap(key_uri(vault, "kek"), os.urandom(32), AAD)
    vault.fail_next("unwrapkey", 503, "ServiceUnavailable", times=3)
    with pytest.raises(KmsTransientError, match="HTTP 503 ServiceUnavailable"):
        kms.unwrap(wrapped, AAD)
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    ("status", "code", "message", "inner", "expected"),
    [
        (
            403,
            "Forbidden",
            "The user does not have keys unwrapKey permission.",
            None,
            KmsPermissionError,
        ),
        (401, "Unauthorized", "AKV10032: Invalid issuer.", None, KmsPermissionError),
        (404, "KeyNotFound", "A key with (name/id) kek was not found.", None, KeyNotFoundError),
        (
            403,
            "Forbidden",
            "Operation unwrapKey is not allowed on a disabled key.",
            "KeyDisabled",
            KeyDisabledError,
        ),
    ],
)
def test_service_errors_are_typed(
    kms: AzureKeyVaultKms,
    vault: FakeKeyVault,
    sleeps: list[float],
    status: int,
    code: str,
    message: str,
    inner: str | None,
    expected: type[KmsError],
) -> None:
    vault.create_rsa_key("kek")
    wrapped = kms.wrap(key_uri(vault, "kek"), os.urandom(32), AAD)
    vault.fail_next("unwrapkey", status, code, message, inner=inner)
    with pytest.raises(expected) as raised:
        kms.unwrap(wrapped, AAD)
    assert type(raised.value) is expected
    assert f"HTTP {status} {code}" in str(raised.value)
    assert sleeps == []


def test_other_client_errors_name_the_service_error(
    kms: AzureKeyVaultKms, vault: FakeKeyVault, sleeps: list[float]
) -> None:
    vault.create_oct_key("kek")
    vault.fail_next("wrapkey", 400, "BadParameter", "Key operation wrapKey is not allowed.")
    with pytest.raises(KmsError, match="HTTP 400 BadParameter: Key operation wrapKey") as raised:
        kms.wrap(key_uri(vault, "kek"), os.urandom(32), AAD)
    assert type(raised.value) is KmsError
    assert sleeps == []


@pytest.mark.parametrize("create", ["create_rsa_key", "create_oct_key"])
def test_tampered_ciphertext_is_an_unwrap_error(
    kms: AzureKeyVaultKms, vault: FakeKeyVault, create: str
) -> None:
    getattr(vault, create)("kek")
    wrapped = kms.wrap(key_uri(vault, "kek"), os.urandom(32), AAD)
    flipped = wrapped.ciphertext[:-1] + bytes([wrapped.ciphertext[-1] ^ 1])
    with pytest.raises(KmsUnwrapError) as raised:
        kms.unwrap(WrappedKey(kek=wrapped.kek, ciphertext=flipped), AAD)
    assert str(raised.value) == str(KmsUnwrapError())
    assert vault.operations[-1][::3] == ("unwrapkey", 400)


def test_unknown_key_and_version_are_not_found(kms: AzureKeyVaultKms, vault: FakeKeyVault) -> None:
    with pytest.raises(KeyNotFoundError, match="HTTP 404 KeyNotFound"):
        kms.wrap(key_uri(vault, "missing"), os.urandom(32), AAD)
    vault.create_rsa_key("kek")
    wrapped = kms.wrap(key_uri(vault, "kek"), os.urandom(32), AAD)
    moved = WrappedKey(kek=KeyReference(wrapped.kek.uri, "0" * 32), ciphertext=wrapped.ciphertext)
    with pytest.raises(KeyNotFoundError):
        kms.unwrap(moved, AAD)


@pytest.mark.parametrize("create", ["create_rsa_key", "create_oct_key"])
def test_disabled_key_is_refused(kms: AzureKeyVaultKms, vault: FakeKeyVault, create: str) -> None:
    getattr(vault, create)("kek")
    wrapped = kms.wrap(key_uri(vault, "kek"), os.urandom(32), AAD)
    vault.disable_key("kek")
    with pytest.raises(KeyDisabledError, match="disabled"):
        kms.wrap(key_uri(vault, "kek"), os.urandom(32), AAD)
    with pytest.raises(KmsPermissionError, match="disabled"):
        kms.unwrap(wrapped, AAD)


def test_credential_failure_is_a_permission_error(
    pki: FakePki, vault: FakeKeyVault, sleeps: list[float]
) -> None:
    class RefusingCredential:
        def get_token(self, *scopes: str, **kwargs: object) -> object:
            raise ClientAuthenticationError("managed identity unavailable")

    vault.create_rsa_key("kek")
    with pytest.raises(KmsPermissionError, match="credential could not authenticate"):
        make_kms(pki, vault, RefusingCredential(), sleeps).wrap(
            key_uri(vault, "kek"), os.urandom(32), AAD
        )


def test_untrusted_tls_certificate_fails_closed_without_retries(
    vault: FakeKeyVault, credential: StaticTokenCredential, sleeps: list[float]
) -> None:
    vault.create_rsa_key("kek")
    system_trust = AzureKeyVaultKms(
        credential, allowed_hosts=[vault.host], verify_challenge_resource=False, sleep=sleeps.append
    )
    with pytest.raises(KmsError, match="TLS verification") as raised:
        system_trust.wrap(key_uri(vault, "kek"), os.urandom(32), AAD)
    assert not isinstance(raised.value, KmsTransientError)
    assert sleeps == []


def test_challenge_resource_is_verified_by_default(
    pki: FakePki, vault: FakeKeyVault, credential: StaticTokenCredential
) -> None:
    vault.create_rsa_key("kek")
    strict = AzureKeyVaultKms(
        credential, connection_verify=str(pki.ca_path), allowed_hosts=[vault.host]
    )
    with pytest.raises(KmsError, match="does not match the requested domain"):
        strict.wrap(key_uri(vault, "kek"), os.urandom(32), AAD)


# -- input validation (no network) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("gcp-kms://projects/p/keys/k", "does not start with"),
        ("azure-kv://evil.example.com/keys/k", "neither an Azure Key Vault"),
        ("azure-kv://myvault.vault.azure.net.evil.com/keys/k", "neither an Azure Key Vault"),
        ("azure-kv://vault.azure.net/keys/k", "neither an Azure Key Vault"),
        ("azure-kv://myvault.vault.azure.net:8443/keys/k", "neither an Azure Key Vault"),
        ("azure-kv://myvault.vault.azure.net/secrets/k", "is not of the form"),
        ("azure-kv://myvault.vault.azure.net/keys/bad_name", "key name"),
        ("azure-kv://myvault.vault.azure.net/keys/k/v.1", "key version"),
        ("azure-kv://myvault.vault.azure.net/keys/k/v/extra", "is not of the form"),
        ("azure-kv://myvault.vault.azure.net/keys/" + "k" * 600, "at most 512"),
    ],
)
def test_bad_key_uris_are_refused(uri: str, message: str) -> None:
    with pytest.raises(KmsInputError, match=message):
        AzureKeyUri.parse(uri)


def test_azure_vault_and_managed_hsm_uris_parse() -> None:
    vault = AzureKeyUri.parse("azure-kv://MyVault.vault.azure.net/keys/kek-eu/0123abcd")
    assert (vault.host, vault.name, vault.version) == (
        "myvault.vault.azure.net",
        "kek-eu",
        "0123abcd",
    )
    assert vault.key_id("0123abcd") == "https://myvault.vault.azure.net/keys/kek-eu/0123abcd"
    hsm = AzureKeyUri.parse("azure-kv://contoso.managedhsm.azure.net/keys/kek")
    assert (hsm.vault_url, hsm.version) == ("https://contoso.managedhsm.azure.net", None)


@pytest.mark.parametrize(
    ("dek", "message"),
    [(b"k" * 15, "16-64 bytes"), (b"k" * 72, "16-64 bytes"), (b"k" * 33, "multiple of 8")],
)
def test_bad_dek_sizes_are_refused(
    kms: AzureKeyVaultKms, vault: FakeKeyVault, dek: bytes, message: str
) -> None:
    with pytest.raises(KmsInputError, match=message):
        kms.wrap(key_uri(vault, "kek"), dek, AAD)
    assert vault.requests == []


@pytest.mark.parametrize(
    ("ciphertext", "version", "message"),
    [
        (b"\x01\x01" + b"x" * 8, "v1", "length 10 is outside"),
        (b"\x02\x01" + b"x" * 256, "v1", "format byte 2"),
        (b"\x01\x09" + b"x" * 256, "v1", "algorithm byte 9"),
        (b"\x01\x01" + b"x" * 600, "v1", "length 602 is outside"),
        (b"\x01\x01" + b"x" * 256, "v-1", "version"),
    ],
)
def test_malformed_wrapped_keys_are_refused(
    kms: AzureKeyVaultKms, vault: FakeKeyVault, ciphertext: bytes, version: str, message: str
) -> None:
    wrapped = WrappedKey(kek=KeyReference(key_uri(vault, "kek"), version), ciphertext=ciphertext)
    with pytest.raises(KmsInputError, match=message):
        kms.unwrap(wrapped, AAD)
    assert vault.requests == []


def test_tls_verification_cannot_be_turned_off(credential: StaticTokenCredential) -> None:
    with pytest.raises(KmsInputError, match="TLS stays on"):
        AzureKeyVaultKms(credential, connection_verify=False)


def test_fake_reports_unused_prepared_responses(pki: FakePki) -> None:
    fake = FakeKeyVault(pki)
    fake.fail_next("unwrapkey", 503)
    with pytest.raises(AssertionError, match="never used"):
        fake.close()
