"""Tests of Azure Secure Key Release: the policy translation, the release call through the real SDK
against the fake vault, and the worker-side unwrap of the vault's signed release token."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.keys import KeyClient
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from enclave_workers.skr import (
    ReleasedKeyMismatchError,
    ReleasedKeyUnwrapError,
    ReleaseTokenFormatError,
    ReleaseTokenSignatureError,
    RuntimeWrappingKey,
    open_release_token,
)
from keybroker.kms.azure_kv import (
    KeyDisabledError,
    KeyReleaseDeniedError,
    release_key_to_tee,
)
from keybroker.kms.base import KeyNotFoundError, KmsPermissionError
from keybroker.kms.retry import Backoff
from keybroker.kms.skr_policy import (
    ReleasePolicyTranslationError,
    encode_release_policy,
    release_policy_for_rule,
    release_policy_for_rules,
)
from tests.keybroker.kms.fake_azure_kv import (
    MAA_AUTHORITY,
    FakeKeyVault,
    FakePki,
    StaticTokenCredential,
    b64url,
    mint_maa_token,
)

GOOD_MEASUREMENT = "ab" * 48
OTHER_MEASUREMENT = "CD" * 48
RULE = {
    "name": "azure-cvm-prod",
    "tee": "azure-cvm",
    "debug": False,
    "measurements": [GOOD_MEASUREMENT, OTHER_MEASUREMENT],
    "min_tcb": {"bootloader": 3, "snp": 20},
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> FakePki:
    return FakePki.create(Path(tmp_path_factory.mktemp("skr-pki")))


@pytest.fixture(scope="module")
def maa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def runtime_key() -> RuntimeWrappingKey:
    return RuntimeWrappingKey.generate(key_size=2048)


@pytest.fixture
def vault(pki: FakePki, maa_key: rsa.RSAPrivateKey) -> Iterator[FakeKeyVault]:
    with FakeKeyVault(pki, maa_public_keys={MAA_AUTHORITY: maa_key.public_key()}) as fake:
        yield fake


@pytest.fixture
def key_client(vault: FakeKeyVault, pki: FakePki) -> KeyClient:
    return KeyClient(
        vault.url,
        StaticTokenCredential(),
        connection_verify=str(pki.ca_path),
        verify_challenge_resource=False,
        retry_total=0,
    )


def policy() -> dict[str, Any]:
    return release_policy_for_rule(RULE, authority=MAA_AUTHORITY)


def release(key_client: KeyClient, name: str, token: str, **kwargs: Any) -> str:
    return release_key_to_tee(
        key_client, name, token, backoff=Backoff(attempts=2, initial_delay=0.0), **kwargs
    )


# -- skr_policy --------------------------------------------------------------------------------


def test_policy_for_a_rule_matches_the_azure_grammar() -> None:
    tee = "x-ms-isolation-tee."
    expected = {
        "version": "1.0.0",
        "anyOf": [
            {
                "authority": MAA_AUTHORITY,
                "allOf": [
                    {"claim": tee + "x-ms-attestation-type", "equals": "sevsnpvm"},
                    {"claim": tee + "x-ms-compliance-status", "equals": "azure-compliant-cvm"},
                    {"claim": tee + "x-ms-sevsnpvm-is-debuggable", "equals": False},
                    {
                        "anyOf": [
                            {
                                "claim": tee + "x-ms-sevsnpvm-launchmeasurement",
                                "equals": GOOD_MEASUREMENT,
                            },
                            {
                                "claim": tee + "x-ms-sevsnpvm-launchmeasurement",
                                "equals": OTHER_MEASUREMENT.lower(),
                            },
                        ]
                    },
                    {"claim": tee + "x-ms-sevsnpvm-bootloader-svn", "greaterOrEquals": 3},
                    {"claim": tee + "x-ms-sevsnpvm-snpfw-svn", "greaterOrEquals": 20},
                ],
            }
        ],
    }
    assert policy() == expected
    assert json.loads(encode_release_policy(policy())) == expected


def test_minimal_rule_and_several_rules() -> None:
    single = release_policy_for_rule(
        {"tee": "sev-snp", "measurements": [GOOD_MEASUREMENT]}, authority=MAA_AUTHORITY + "/"
    )
    conditions = single["anyOf"][0]["allOf"]
    assert conditions[-1] == {
        "claim": "x-ms-isolation-tee.x-ms-sevsnpvm-launchmeasurement",
        "equals": GOOD_MEASUREMENT,
    }
    assert len(conditions) == 4
    two = release_policy_for_rules([{"tee": "sev-snp"}, RULE], authority=MAA_AUTHORITY)
    assert [len(entry["allOf"]) for entry in two["anyOf"]] == [3, 6]


@pytest.mark.parametrize(
    ("rule", "authority", "message"),
    [
        ({"tee": "tdx"}, MAA_AUTHORITY, "tee 'tdx' is not supported"),
        ({"tee": "sev-snp", "debug": True}, MAA_AUTHORITY, "debug must be false"),
        (
            {"tee": "sev-snp", "allow_simulated": True},
            MAA_AUTHORITY,
            "allow_simulated cannot be expressed",
        ),
        (
            {"tee": "sev-snp", "measurements": ["ab" * 47]},
            MAA_AUTHORITY,
            r"measurements\[0\] must be 96",
        ),
        ({"tee": "sev-snp", "measurements": []}, MAA_AUTHORITY, "1..64 values"),
        (
            {"tee": "sev-snp", "measurements": GOOD_MEASUREMENT},
            MAA_AUTHORITY,
            "list of hex strings",
        ),
        ({"tee": "sev-snp", "min_tcb": {"fmc": 1}}, MAA_AUTHORITY, "component 'fmc'"),
        ({"tee": "sev-snp", "min_tcb": {"snp": -1}}, MAA_AUTHORITY, "integer 0..255"),
        ({"tee": "sev-snp", "min_tcb": {"snp": True}}, MAA_AUTHORITY, "integer 0..255"),
        ({"tee": "sev-snp"}, "http://maa.example", "https URL"),
        ({"tee": "sev-snp"}, MAA_AUTHORITY + "/path", "no path"),
    ],
)
def test_untranslatable_rules_are_refused(
    rule: dict[str, Any], authority: str, message: str
) -> None:
    with pytest.raises(ReleasePolicyTranslationError, match=message):
        release_policy_for_rule(rule, authority=authority)


def test_rule_lists_are_bounded() -> None:
    with pytest.raises(ReleasePolicyTranslationError, match=r"need 1\.\.32 rules"):
        release_policy_for_rules([], authority=MAA_AUTHORITY)
    with pytest.raises(ReleasePolicyTranslationError, match="must be a mapping"):
        release_policy_for_rules(["sev-snp"], authority=MAA_AUTHORITY)  # type: ignore[list-item]


# -- release through the SDK and unwrap in the worker -------------------------------------------


@pytest.mark.parametrize(
    "algorithm", ["RSA_AES_KEY_WRAP_256", "RSA_AES_KEY_WRAP_384", "CKM_RSA_AES_KEY_WRAP"]
)
def test_oct_key_is_released_to_the_worker(
    vault: FakeKeyVault,
    key_client: KeyClient,
    pki: FakePki,
    maa_key: rsa.RSAPrivateKey,
    runtime_key: RuntimeWrappingKey,
    algorithm: str,
) -> None:
    version = vault.create_oct_key("skr-key", exportable=True, release_policy=policy())
    token = mint_maa_token(maa_key, runtime_key.public_jwk())
    jws = release(key_client, "skr-key", token, algorithm=algorithm)
    released = open_release_token(
        jws, runtime_key, key_id=f"{vault.url}/keys/skr-key", trust_roots=[pki.ca_cert]
    )
    assert released.secret_bytes() == vault.version_of("skr-key", version).secret
    assert (released.key_id, released.key_type) == (
        f"{vault.url}/keys/skr-key/{version}",
        "oct-HSM",
    )
    assert released.secret_bytes().hex() not in repr(released)


def test_rsa_key_is_released_as_pkcs8(
    vault: FakeKeyVault,
    key_client: KeyClient,
    pki: FakePki,
    maa_key: rsa.RSAPrivateKey,
    runtime_key: RuntimeWrappingKey,
) -> None:
    version = vault.create_rsa_key("skr-rsa", exportable=True, release_policy=policy())
    vault.create_rsa_key("skr-rsa", exportable=True, release_policy=policy())  # a newer version
    token = mint_maa_token(maa_key, runtime_key.public_jwk())
    jws = release(key_client, "skr-rsa", token, version=version)
    released = open_release_token(
        jws, runtime_key, key_id=f"{vault.url}/keys/skr-rsa/{version}", trust_roots=[pki.ca_cert]
    )
    private = vault.version_of("skr-rsa", version).rsa_key
    assert private is not None
    assert released.secret_bytes() == private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    "claims",
    [
        {"x-ms-sevsnpvm-launchmeasurement": "ee" * 48},
        {"x-ms-sevsnpvm-is-debuggable": True},
        {"x-ms-compliance-status": "azure-noncompliant"},
        {"x-ms-sevsnpvm-bootloader-svn": 2},
    ],
)
def test_token_outside_the_policy_is_denied(
    vault: FakeKeyVault,
    key_client: KeyClient,
    maa_key: rsa.RSAPrivateKey,
    runtime_key: RuntimeWrappingKey,
    claims: dict[str, Any],
) -> None:
    vault.create_oct_key("skr-key", exportable=True, release_policy=policy())
    token = mint_maa_token(maa_key, runtime_key.public_jwk(), isolation_claims=claims)
    with pytest.raises(KeyReleaseDeniedError, match="HTTP 403 Forbidden: Target environment"):
        release(key_client, "skr-key", token)
    assert vault.operations[-1][::3] == ("release", 403)


def test_token_from_an_unknown_attestation_key_is_denied(
    vault: FakeKeyVault, key_client: KeyClient, runtime_key: RuntimeWrappingKey
) -> None:
    vault.create_oct_key("skr-key", exportable=True, release_policy=policy())
    forged = mint_maa_token(
        rsa.generate_private_key(public_exponent=65537, key_size=2048), runtime_key.public_jwk()
    )
    with pytest.raises(KmsPermissionError, match="cannot be verified"):
        release(key_client, "skr-key", forged)


def test_release_errors_are_typed_and_transient_ones_retried(
    vault: FakeKeyVault,
    key_client: KeyClient,
    pki: FakePki,
    maa_key: rsa.RSAPrivateKey,
    runtime_key: RuntimeWrappingKey,
) -> None:
    token = mint_maa_token(maa_key, runtime_key.public_jwk())
    with pytest.raises(KeyNotFoundError):
        release(key_client, "absent", token)
    vault.create_oct_key("skr-key", exportable=True, release_policy=policy())
    vault.fail_next("release", 503)
    jws = release(key_client, "skr-key", token)
    assert (
        open_release_token(
            jws, runtime_key, key_id=f"{vault.url}/keys/skr-key", trust_roots=[pki.ca_cert]
        ).key_type
        == "oct-HSM"
    )
    vault.disable_key("skr-key")
    with pytest.raises(KeyDisabledError):
        release(key_client, "skr-key", token)


# -- worker-side checks on the token -----------------------------------------------------------


@pytest.fixture
def released_jws(
    vault: FakeKeyVault,
    key_client: KeyClient,
    maa_key: rsa.RSAPrivateKey,
    runtime_key: RuntimeWrappingKey,
) -> str:
    vault.create_oct_key("skr-key", exportable=True, release_policy=policy())
    return release(key_client, "skr-key", mint_maa_token(maa_key, runtime_key.public_jwk()))


def test_another_runtime_key_cannot_unwrap(
    released_jws: str, vault: FakeKeyVault, pki: FakePki
) -> None:
    with pytest.raises(ReleasedKeyUnwrapError, match="could not be unwrapped"):
        open_release_token(
            released_jws,
            RuntimeWrappingKey.generate(2048),
            key_id=f"{vault.url}/keys/skr-key",
            trust_roots=[pki.ca_cert],
        )


def test_signature_chain_and_host_are_checked(
    released_jws: str,
    vault: FakeKeyVault,
    pki: FakePki,
    runtime_key: RuntimeWrappingKey,
    tmp_path: Path,
) -> None:
    header, payload, _ = released_jws.split(".")
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signature = stranger.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    forged = f"{header}.{payload}.{b64url(signature)}"
    with pytest.raises(ReleaseTokenSignatureError, match="signature does not verify"):
        open_release_token(
            forged, runtime_key, key_id=f"{vault.url}/keys/skr-key", trust_roots=[pki.ca_cert]
        )
    other_ca = FakePki.create(tmp_path / "other").ca_cert
    with pytest.raises(ReleaseTokenSignatureError, match="does not chain"):
        open_release_token(
            released_jws, runtime_key, key_id=f"{vault.url}/keys/skr-key", trust_roots=[other_ca]
        )
    with pytest.raises(ReleaseTokenSignatureError, match="does not chain"):
        open_release_token(
            released_jws,
            runtime_key,
            key_id="https://myvault.vault.azure.net/keys/skr-key",
            trust_roots=[pki.ca_cert],
        )


def test_a_different_key_than_requested_is_refused(
    released_jws: str, vault: FakeKeyVault, pki: FakePki, runtime_key: RuntimeWrappingKey
) -> None:
    for key_id in (f"{vault.url}/keys/other-key", f"{vault.url}/keys/skr-key/{'0' * 32}"):
        with pytest.raises(ReleasedKeyMismatchError, match="is not the requested key"):
            open_release_token(released_jws, runtime_key, key_id=key_id, trust_roots=[pki.ca_cert])


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("a.b", "has 2 parts"),
        ("", "string of 1.."),
        ("x" * 300_000, "string of 1.."),
        ("!!!.e30.e30", "JWS header is not base64url"),
        (f"{b64url(b'[1]')}.e30.e30", "JWS header is not a JSON object"),
        (f"{b64url(json.dumps({'alg': 'none'}).encode())}.e30.e30", "alg 'none'"),
        (f"{b64url(json.dumps({'alg': 'RS256', 'x5c': []}).encode())}.e30.e30", "x5c must list"),
        (
            f"{b64url(json.dumps({'alg': 'RS256', 'x5c': ['AAAA']}).encode())}.e30.e30",
            r"x5c\[0\] is not a DER certificate",
        ),
    ],
)
def test_malformed_tokens_are_refused(
    token: str, message: str, runtime_key: RuntimeWrappingKey, pki: FakePki
) -> None:
    with pytest.raises(ReleaseTokenFormatError, match=message):
        open_release_token(
            token, runtime_key, key_id="https://v.vault.azure.net/keys/k", trust_roots=[pki.ca_cert]
        )


def _signed_release(vault: FakeKeyVault, enc: str, ciphertext: bytes) -> str:
    kid = f"{vault.url}/keys/skr-key/{'a' * 32}"
    key_hsm = {
        "schema_version": "1.0",
        "header": {"kid": "TpmEphemeralEncryptionKey", "alg": "dir", "enc": enc},
        "ciphertext": b64url(ciphertext),
    }
    return vault.sign_jws(
        {
            "request": {"enc": enc, "kid": kid},
            "response": {
                "key": {
                    "key": {
                        "kid": kid,
                        "kty": "oct-HSM",
                        "key_hsm": b64url(json.dumps(key_hsm).encode()),
                    }
                }
            },
        }
    )


def test_plain_rsa_oaep_256_export_is_unwrapped(
    vault: FakeKeyVault, pki: FakePki, runtime_key: RuntimeWrappingKey
) -> None:
    secret = os.urandom(32)
    ciphertext = runtime_key.public_key().encrypt(
        secret,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    released = open_release_token(
        _signed_release(vault, "RSA-OAEP-256", ciphertext),
        runtime_key,
        key_id=f"{vault.url}/keys/skr-key",
        trust_roots=[pki.ca_cert],
    )
    assert released.secret_bytes() == secret


@pytest.mark.parametrize(
    ("enc", "ciphertext", "message"),
    [
        ("A256GCM", b"x" * 300, r"\(enc\) 'A256GCM' is not one of"),
        ("RSA_AES_KEY_WRAP_256", b"x" * 256, "does not fit a 256-byte RSA block"),
        ("RSA_AES_KEY_WRAP_256", b"x" * 260, "does not fit a 256-byte RSA block"),
    ],
)
def test_bad_key_hsm_is_refused(
    vault: FakeKeyVault,
    pki: FakePki,
    runtime_key: RuntimeWrappingKey,
    enc: str,
    ciphertext: bytes,
    message: str,
) -> None:
    with pytest.raises(ReleaseTokenFormatError, match=message):
        open_release_token(
            _signed_release(vault, enc, ciphertext),
            runtime_key,
            key_id=f"{vault.url}/keys/skr-key",
            trust_roots=[pki.ca_cert],
        )


def test_runtime_key_never_leaves(runtime_key: RuntimeWrappingKey) -> None:
    import pickle

    jwk = runtime_key.public_jwk()
    assert set(jwk) == {"kty", "kid", "key_ops", "e", "n"}
    assert len(base64.urlsafe_b64decode(jwk["n"] + "==")) == 256
    assert repr(runtime_key) == "RuntimeWrappingKey(kid='TpmEphemeralEncryptionKey', bits=2048)"
    with pytest.raises(TypeError, match="never leaves the TEE"):
        pickle.dumps(runtime_key)
