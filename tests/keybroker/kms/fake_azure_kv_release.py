"""Secure Key Release in the Azure Key Vault fake: the MAA target token, the policy, the JWS.

`release_token` does what Key Vault does on ``POST /keys/{name}/{version}/release``: verifies the
MAA target token with the test MAA keys, evaluates the key's release policy on its claims (the
Azure grammar: anyOf/allOf, equals/notEquals/less/lessOrEquals/greater/greaterOrEquals/exists),
wraps the key to the runtime RSA key in the token (CKM_RSA_AES_KEY_WRAP / RSA_AES_KEY_WRAP_256 /
_384: RSA-OAEP of an ephemeral AES key, then AES key wrap with padding) and answers with a JWS
signed by the test vault certificate (`sign_jws`). It serves no HTTP and keeps no key state
(``fake_azure_kv`` does); it is not Key Vault's policy engine, only the grammar sealbeam uses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from tests.keybroker.kms.fake_azure_kv_http import VaultError
from tests.keybroker.kms.fake_azure_kv_pki import FakePki, b64url, b64url_decode

if TYPE_CHECKING:
    from tests.keybroker.kms.fake_azure_kv import FakeKeyVersion

_OAEP_HASHES = {
    "CKM_RSA_AES_KEY_WRAP": hashes.SHA1,
    "RSA_AES_KEY_WRAP_256": hashes.SHA256,
    "RSA_AES_KEY_WRAP_384": hashes.SHA384,
}


def release_token(
    kid: str,
    key: FakeKeyVersion,
    request: dict[str, Any],
    *,
    pki: FakePki,
    maa_public_keys: dict[str, Any],
) -> str:
    """The JWS that Key Vault answers a release with, or the VaultError it answers instead."""
    if not key.exportable or key.release_policy is None:
        raise VaultError(400, "BadParameter", "Key is not exportable or has no release policy.")
    claims = verified_target(request.get("target"), maa_public_keys)
    if not policy_allows(key.release_policy, claims):
        raise VaultError(
            403,
            "Forbidden",
            "Target environment attestation statement does not satisfy the key release policy.",
            "AccessDenied",
        )
    runtime_key = runtime_key_of(claims)
    enc = request.get("enc") or "CKM_RSA_AES_KEY_WRAP"
    if enc not in _OAEP_HASHES:
        raise VaultError(400, "BadParameter", f"enc {enc} is not supported")
    if key.secret is not None:
        material = key.secret
    else:
        assert key.rsa_key is not None
        material = key.rsa_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    aes_key = os.urandom(32)
    oaep_hash = _OAEP_HASHES[enc]()
    ciphertext = runtime_key.encrypt(
        aes_key, padding.OAEP(mgf=padding.MGF1(oaep_hash), algorithm=oaep_hash, label=None)
    ) + aes_key_wrap_with_padding(aes_key, material)
    key_hsm = {
        "schema_version": "1.0",
        "header": {"kid": "TpmEphemeralEncryptionKey", "alg": "dir", "enc": enc},
        "ciphertext": b64url(ciphertext),
        "generator": "fake key vault",
    }
    payload = {
        "request": {"api-version": "7.4", "enc": enc, "kid": kid},
        "response": {
            "key": {
                "key": {
                    "kid": kid,
                    "kty": key.key_type,
                    "key_ops": key.key_ops,
                    "key_hsm": b64url(json.dumps(key_hsm).encode()),
                },
                "attributes": {"enabled": True, "exportable": True},
                "release_policy": encoded_policy(key.release_policy),
            }
        },
    }
    return sign_jws(pki, payload)


def sign_jws(
    pki: FakePki, payload: dict[str, Any], *, signer_key: rsa.RSAPrivateKey | None = None
) -> str:
    """A JWS over ``payload`` with the vault signer's x5c chain (``signer_key`` forges one)."""
    chain = [pki.signer_cert, pki.ca_cert]
    ders = [cert.public_bytes(serialization.Encoding.DER) for cert in chain]
    header = {
        "alg": "RS256",
        "x5c": [base64.b64encode(der).decode() for der in ders],
        "x5t#S256": b64url(hashlib.sha256(ders[0]).digest()),
    }
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = (signer_key or pki.signer_key).sign(
        signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    return f"{signing_input}.{b64url(signature)}"


def verified_target(token: Any, maa_public_keys: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(token, str) or token.count(".") != 2:
        raise VaultError(400, "BadParameter", "target must be an attestation token")
    try:
        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        public_key = maa_public_keys[issuer]
        return jwt.decode(token, public_key, algorithms=["RS256"], issuer=issuer)
    except (KeyError, jwt.PyJWTError) as exc:
        raise VaultError(
            403,
            "Forbidden",
            "Target environment attestation statement cannot be verified.",
            "AccessDenied",
        ) from exc


def encoded_policy(policy: dict[str, Any]) -> dict[str, Any]:
    return {
        "contentType": "application/json; charset=utf-8",
        "immutable": False,
        "data": b64url(json.dumps(policy).encode()),
    }


def _claim(claims: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    value: Any = claims
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            # MAA claim names contain dots only as separators of nested objects
            return False, None
        value = value[part]
    return True, value


def _condition_holds(condition: dict[str, Any], claims: dict[str, Any]) -> bool:
    lowered = {key.lower(): value for key, value in condition.items()}
    if "anyof" in lowered:
        return any(_condition_holds(item, claims) for item in lowered["anyof"])
    if "allof" in lowered:
        return all(_condition_holds(item, claims) for item in lowered["allof"])
    present, value = _claim(claims, lowered["claim"])
    if "exists" in lowered:
        return present == bool(lowered["exists"])
    if not present:
        return False
    for operator, expected in lowered.items():
        if operator == "claim":
            continue
        if type(value) is not type(expected) and not (
            isinstance(value, (int, float))
            and isinstance(expected, (int, float))
            and not isinstance(value, bool)
            and not isinstance(expected, bool)
        ):
            return False
        checks = {"equals": value == expected, "notequals": value != expected}
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            checks.update(
                {
                    "less": value < expected,
                    "lessorequals": value <= expected,
                    "greater": value > expected,
                    "greaterorequals": value >= expected,
                }
            )
        if operator not in checks:
            raise VaultError(400, "BadParameter", f"release policy operator {operator} is invalid")
        return checks[operator]
    raise VaultError(400, "BadParameter", "release policy condition has no operator")


def policy_allows(policy: dict[str, Any], claims: dict[str, Any]) -> bool:
    if policy.get("version") != "1.0.0":
        raise VaultError(400, "BadParameter", "release policy version must be 1.0.0")
    issuer = str(claims.get("iss", "")).rstrip("/")
    for entry in policy.get("anyOf", []):
        if str(entry.get("authority", "")).rstrip("/") != issuer:
            continue
        rest = {key: value for key, value in entry.items() if key != "authority"}
        if _condition_holds(rest, claims):
            return True
    return False


def runtime_key_of(claims: dict[str, Any]) -> rsa.RSAPublicKey:
    for path in ("x-ms-runtime.keys", "x-ms-isolation-tee.x-ms-runtime.keys"):
        present, keys = _claim(claims, path)
        for jwk in keys if present and isinstance(keys, list) else []:
            if jwk.get("kty") == "RSA":
                numbers = rsa.RSAPublicNumbers(
                    int.from_bytes(b64url_decode(jwk["e"]), "big"),
                    int.from_bytes(b64url_decode(jwk["n"]), "big"),
                )
                return numbers.public_key()
    raise VaultError(400, "BadParameter", "target token carries no runtime RSA key")
